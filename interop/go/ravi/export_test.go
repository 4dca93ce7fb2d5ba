package ravi

import (
	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
)

// RoutesChanged returns a channel closed at the next change of the node's
// routing table.
func (n *Node) RoutesChanged() <-chan struct{} { return n.routesChanged() }

// InjectPeer adds a peer with a routing entry and no link, as if it had
// described itself as info and then become unreachable without its stream
// noticing yet.
func (n *Node) InjectPeer(name, addr string, info *meshv1.NodeInfo) error {
	client, err := Dial(addr)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.peers[name] = &peer{name: name, address: addr, client: client, mux: newMultiplexer(n.peerCtx, client.svc), cancel: func() {}, kick: make(chan struct{}, 1), info: info, nodeID: info.GetNodeId()}
	n.notifyRoutesLocked()
	return nil
}

// PromiseWaiters is the number of handlers waiting for the named promise.
func (n *Node) PromiseWaiters(name string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.promises[name]; p != nil {
		return p.waiters
	}
	return 0
}

// Busy reports whether the agent (agentType, key) has a message queued or
// running.
func (n *Node) Busy(agentType, key string) bool {
	n.mu.Lock()
	inst := n.instances[AgentID{Type: agentType, Key: key}]
	n.mu.Unlock()
	if inst == nil {
		return false
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	return inst.pending > 0
}

// DNSTarget is dnsTarget, for the tests of the dns: peer syntax.
var DNSTarget = dnsTarget
