package ravi

import (
	"context"
	"errors"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"io"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"
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
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(rpcTracing(n.opts.TracerProvider)...)),
	}
	dial = append(dial, n.opts.DialOptions...)
	client, err := Dial(address, WithToken(n.opts.PeerToken), WithMaxMessageBytes(n.opts.MaxMessageBytes), WithDialOptions(dial...))
	if err != nil {
		n.log.Error("cannot dial peer", "peer", name, "addr", address, "err", err)
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
	n.log.Info("learned peer", "peer", name, "addr", caller.GetAddress())
	n.addPeerLocked(name, caller.GetAddress(), true)
}

// runPeer keeps the link to p: Describe, then a Subscribe stream until it
// ends, then again after a backoff of 100 ms doubling to 2 s (reset once a
// stream was established).
func (n *Node) runPeer(ctx context.Context, p *peer) {
	defer n.peerWG.Done()
	delay := peerBackoffMin
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
		if established {
			delay = peerBackoffMin
			n.log.Info("peer stream ended", "peer", p.name, "err", err)
		} else {
			n.log.Debug("peer link failed", "peer", p.name, "addr", p.address, "err", err, "retry_in", delay)
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
				n.log.Info("peer connected", "peer", p.name, "peer_node", k.Node.GetNodeId(), "addr", p.address, "incarnation", k.Node.GetIncarnation())
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
		n.log.Warn("peer is this node itself; ignoring it", "peer", p.name, "addr", p.address)
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
		n.log.Info("peer restarted", "peer", p.name, "incarnation", info.GetIncarnation())
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
