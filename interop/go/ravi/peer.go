package ravi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

type agentTypeInfo = meshv1.AgentTypeInfo

// Reconnection backoff of peer links.
const (
	peerBackoffMin  = 100 * time.Millisecond
	peerBackoffMax  = 2 * time.Second
	describeTimeout = 5 * time.Second
)

// peer is one node this node peers with: a connection, and a loop that
// describes it and keeps a Subscribe stream open to it.
type peer struct {
	name    string
	address string
	learned bool // added because it called Describe, not configured
	client  *Client
	cancel  context.CancelFunc
	kick    chan struct{}

	// Guarded by Node.mu.
	info          *meshv1.NodeInfo // the routing entry; nil while disconnected
	nodeID        string
	streaming     bool
	restartStream context.CancelFunc
}

// PeerStatus describes a peer link, for diagnostics.
type PeerStatus struct {
	Name, Address, NodeID string
	Learned, Streaming    bool
	AgentTypes            []string
}

// Peers lists the node's peers.
func (n *Node) Peers() []PeerStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []PeerStatus
	for _, p := range n.sortedPeersLocked() {
		s := PeerStatus{Name: p.name, Address: p.address, NodeID: p.nodeID, Learned: p.learned, Streaming: p.streaming}
		for _, t := range p.info.GetAgentTypes() {
			s.AgentTypes = append(s.AgentTypes, t.GetAgentType())
		}
		out = append(out, s)
	}
	return out
}

func (n *Node) addPeerLocked(name, address string, learned bool) {
	if n.stopping {
		return
	}
	kp := keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}
	if n.opts.PeerKeepalive != nil {
		kp = *n.opts.PeerKeepalive
	}
	dial := []grpc.DialOption{
		grpc.WithKeepaliveParams(kp),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: peerBackoffMin, Multiplier: 2, Jitter: 0.2, MaxDelay: peerBackoffMax},
			MinConnectTimeout: 2 * time.Second,
		}),
	}
	dial = append(dial, n.opts.DialOptions...)
	client, err := Dial(address, WithToken(n.opts.PeerToken), WithMaxMessageBytes(n.opts.MaxMessageBytes), WithDialOptions(dial...))
	if err != nil {
		n.log.Error(fmt.Sprintf("peer %s at %s cannot be dialled: %v", name, address, err))
		return
	}
	ctx, cancel := context.WithCancel(n.peerCtx)
	p := &peer{name: name, address: address, learned: learned, client: client, cancel: cancel, kick: make(chan struct{}, 1)}
	n.peers[name] = p
	n.peerWG.Add(1)
	go n.runPeer(ctx, p)
}

// learnPeer adds a node that called Describe with its address, unless it is
// a peer already (then a peer link waiting to reconnect retries at once).
func (n *Node) learnPeer(caller *meshv1.NodeInfo) {
	if caller.GetAddress() == "" || caller.GetNodeId() == "" || caller.GetNodeId() == n.id {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.started || n.stopping {
		return
	}
	for _, p := range n.peers {
		if p.nodeID == caller.GetNodeId() || p.address == caller.GetAddress() {
			if !p.streaming {
				select {
				case p.kick <- struct{}{}:
				default:
				}
			}
			return
		}
	}
	name := caller.GetNodeId()
	if _, taken := n.peers[name]; taken {
		name += "@" + caller.GetAddress()
	}
	n.log.Info(fmt.Sprintf("learned peer %s at %s (it described this node)", name, caller.GetAddress()))
	n.addPeerLocked(name, caller.GetAddress(), true)
}

// runPeer keeps the link to p: Describe, then a Subscribe stream until it
// ends, then again after a backoff of 100 ms doubling to 2 s (reset once a
// stream was established).
func (n *Node) runPeer(ctx context.Context, p *peer) {
	defer n.peerWG.Done()
	delay := peerBackoffMin
	unreachable := false // logged once per outage
	for ctx.Err() == nil {
		select {
		case <-p.kick:
		default:
		}
		established, err := n.linkPeer(ctx, p)
		n.clearPeer(p)
		if ctx.Err() != nil {
			return
		}
		switch {
		case established:
			delay = peerBackoffMin
			unreachable = false
			n.log.Info(fmt.Sprintf("peer %s at %s dropped: %s; reconnecting", p.name, p.address, peerFailure(err, "its stream ended")))
		case !unreachable:
			unreachable = true
			n.log.Info(fmt.Sprintf("peer %s at %s unreachable: %s; retrying every %g s at most", p.name, p.address, peerFailure(err, "no answer"), peerBackoffMax.Seconds()))
		default:
			n.log.Debug(fmt.Sprintf("peer %s at %s still unreachable: %s", p.name, p.address, peerFailure(err, "no answer")), "retry_in", delay)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.kick:
			t.Stop()
		case <-t.C:
		}
		if !established {
			delay = min(delay*2, peerBackoffMax)
		}
	}
}

// linkPeer describes p and follows its Subscribe stream until it ends;
// established says the stream was active.
func (n *Node) linkPeer(ctx context.Context, p *peer) (established bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, describeTimeout)
	resp, err := p.client.svc.Describe(dctx, &meshv1.DescribeRequest{Caller: n.Info()})
	cancel()
	if err != nil {
		return false, err
	}
	if !n.setPeerInfo(p, resp.GetNode()) {
		return false, errors.New("peer link dropped")
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	n.mu.Lock()
	p.restartStream = stop
	n.mu.Unlock()
	stream, err := p.client.svc.Subscribe(sctx, &meshv1.SubscribeRequest{Filters: n.filters(), SubscriberId: n.id})
	if err != nil {
		return false, err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return established, err
		}
		switch k := msg.GetKind().(type) {
		case *meshv1.SubscribeResponse_Node:
			if !n.setPeerInfo(p, k.Node) {
				return established, errors.New("peer link dropped")
			}
			if !established {
				established = true
				n.mu.Lock()
				p.streaming = true
				n.notifyRoutesLocked()
				n.mu.Unlock()
				n.log.Info(fmt.Sprintf("peer %s connected at %s (node %s, hosts %s)", p.name, p.address, k.Node.GetNodeId(), hostedTypes(k.Node)))
			}
		case *meshv1.SubscribeResponse_Event:
			n.deliverPeerEvent(k.Event)
		}
	}
}

// setPeerInfo replaces p's routing entry with info. It reports false when the
// link should stop: the peer is this node itself, or a learned duplicate of
// another peer.
func (n *Node) setPeerInfo(p *peer, info *meshv1.NodeInfo) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if info.GetNodeId() == n.id {
		n.log.Warn(fmt.Sprintf("peer %s at %s is this node itself: ignored", p.name, p.address))
		return false
	}
	for _, q := range n.peers {
		if q == p || q.nodeID != info.GetNodeId() {
			continue
		}
		switch {
		case p.learned:
			n.removePeerLocked(p)
			return false
		case q.learned:
			n.removePeerLocked(q)
		}
	}
	if p.nodeID != "" && p.info != nil && p.info.GetIncarnation() != info.GetIncarnation() {
		n.log.Info(fmt.Sprintf("peer %s restarted (incarnation %s)", p.name, info.GetIncarnation()))
	}
	p.nodeID = info.GetNodeId()
	p.info = info
	n.notifyRoutesLocked()
	return true
}

func (n *Node) removePeerLocked(p *peer) {
	if n.peers[p.name] != p {
		return
	}
	delete(n.peers, p.name)
	p.cancel()
	p.info = nil
	go func() { _ = p.client.Close() }()
	n.notifyRoutesLocked()
}

// clearPeer takes p's agent types out of the routing table.
func (n *Node) clearPeer(p *peer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	p.streaming = false
	p.restartStream = nil
	if p.info != nil {
		p.info = nil
		n.notifyRoutesLocked()
	}
}

// hostedTypes lists the agent types a NodeInfo says its node hosts, for logs.
func hostedTypes(info *meshv1.NodeInfo) string {
	var names []string
	for _, t := range info.GetAgentTypes() {
		names = append(names, t.GetAgentType())
	}
	if len(names) == 0 {
		return "no agent types"
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// peerFailure is the gist of why a peer link failed, for logs: the
// operating system's words when the connection failed ("connection
// refused"), else the status; ifNone when the link simply ended.
func peerFailure(err error, ifNone string) string {
	if err == nil {
		return ifNone
	}
	text := err.Error()
	if i := strings.LastIndex(text, "connect: "); i >= 0 {
		return strings.TrimRight(text[i+len("connect: "):], `"`)
	}
	if st, ok := status.FromError(err); ok {
		msg := st.Message()
		if _, desc, found := strings.Cut(msg, `desc = "`); found {
			return strings.TrimSuffix(desc, `"`)
		}
		return fmt.Sprintf("%s: %s", CodeName(st.Code()), msg)
	}
	return text
}
