package ravi

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sort"
)

// RendezvousScore is the rendezvous-hashing score of a node for an agent: the
// first 8 bytes, big-endian, of SHA-256(nodeID + "\x00" + agentType + "\x00" +
// key). The node with the highest score hosts the agent.
func RendezvousScore(nodeID, agentType, key string) uint64 {
	h := sha256.New()
	h.Write([]byte(nodeID))
	h.Write([]byte{0})
	h.Write([]byte(agentType))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return binary.BigEndian.Uint64(h.Sum(nil)[:8])
}

// choosePeer picks the peer for an agent whose type the node does not host:
// among the connected peers hosting the type, and not in exclude, the one
// with the highest rendezvous score (ties: the smaller node id). It counts a
// call in flight on the peer's multiplexer, under the same lock as the choice,
// so a peer dropped meanwhile waits for it; the caller calls p.mux.finished.
func (n *Node) choosePeer(to AgentID, exclude []string) (*peer, string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var best *peer
	var bestID string
	var bestScore uint64
	for _, p := range n.sortedPeersLocked() {
		info := p.info
		if info == nil || info.GetNodeId() == n.id || slices.Contains(exclude, info.GetNodeId()) {
			continue
		}
		if !slices.ContainsFunc(info.GetAgentTypes(), func(t *agentTypeInfo) bool { return t.GetAgentType() == to.Type }) {
			continue
		}
		id := info.GetNodeId()
		score := RendezvousScore(id, to.Type, to.Key)
		if best == nil || score > bestScore || (score == bestScore && id < bestID) {
			best, bestID, bestScore = p, id, score
		}
	}
	if best != nil {
		best.mux.begin()
	}
	return best, bestID
}

// unreachableHosting lists the addresses of the peers that hosted agentType
// when they were last connected and are unreachable now (not in exclude).
func (n *Node) unreachableHosting(agentType string, exclude []string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, p := range n.sortedPeersLocked() {
		last := p.lastInfo
		if p.info != nil || last == nil || slices.Contains(exclude, last.GetNodeId()) {
			continue
		}
		if slices.ContainsFunc(last.GetAgentTypes(), func(t *agentTypeInfo) bool { return t.GetAgentType() == agentType }) {
			out = append(out, p.address)
		}
	}
	return out
}

func (n *Node) peerHosting(agentType string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.peers {
		if p.info != nil && slices.ContainsFunc(p.info.GetAgentTypes(), func(t *agentTypeInfo) bool { return t.GetAgentType() == agentType }) {
			return true
		}
	}
	return false
}

func (n *Node) sortedPeersLocked() []*peer {
	out := make([]*peer, 0, len(n.peers))
	for _, p := range n.peers {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}
