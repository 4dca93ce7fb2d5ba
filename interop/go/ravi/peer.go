package ravi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
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
	learned bool   // added because it called Describe, not configured
	group   string // the dns: peer name the peer was resolved from, if any
	client  *Client
	mux     *multiplexer // the node's Sends to the peer
	cancel  context.CancelFunc
	kick    chan struct{}

	// Guarded by Node.mu.
	info          *meshv1.NodeInfo // the routing entry; nil while disconnected
	lastInfo      *meshv1.NodeInfo // the last routing entry, kept while disconnected
	nodeID        string
	streaming     bool
	restartStream context.CancelFunc
}

// PeerStatus describes a peer link, for diagnostics.
type PeerStatus struct {
	Name, Address, NodeID string
	// Group is the dns: peer name the peer was resolved from, if any.
	Group              string
	Learned, Streaming bool
	AgentTypes         []string
}

// Peers lists the node's peers.
func (n *Node) Peers() []PeerStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []PeerStatus
	for _, p := range n.sortedPeersLocked() {
		s := PeerStatus{Name: p.name, Address: p.address, NodeID: p.nodeID, Group: p.group, Learned: p.learned, Streaming: p.streaming}
		for _, t := range p.info.GetAgentTypes() {
			s.AgentTypes = append(s.AgentTypes, t.GetAgentType())
		}
		out = append(out, s)
	}
	return out
}

// addPeerLocked adds a peer and starts its link; nil when the node stops or
// the address cannot be dialled.
func (n *Node) addPeerLocked(name, address string, learned bool) *peer {
	if n.stopping {
		return nil
	}
	// grpc-go pings a connection at most every 10 s, whatever kp.Time says;
	// watchPeer checks the peer every kp.Time on top of that.
	kp := n.peerKeepalive()
	kp.Time = max(kp.Time, grpcMinPingTime)
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
		n.log.Error(fmt.Sprintf("peer %s at %s cannot be dialled: %v", name, address, err))
		return nil
	}
	ctx, cancel := context.WithCancel(n.peerCtx)
	// The Multiplex stream outlives the link loop: a dropped peer's calls in
	// flight may finish (removePeerLocked).
	p := &peer{name: name, address: address, learned: learned, client: client, mux: newMultiplexer(n.peerCtx, client.svc), cancel: cancel, kick: make(chan struct{}, 1)}
	n.peers[name] = p
	n.peerWG.Add(1)
	go n.runPeer(ctx, p)
	return p
}

// learnPeer adds a node that called Describe with its address, unless it is
// a peer already (then a peer link waiting to reconnect retries at once).
func (n *Node) learnPeer(caller *meshv1.NodeInfo) {
	if caller.GetAddress() == "" || caller.GetNodeId() == "" || caller.GetNodeId() == n.id {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if caller.GetAddress() == n.advertised() {
		return // a caller naming this node's own address is not a peer
	}
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

// grpcMinPingTime is the shortest keepalive interval grpc-go uses (it raises
// shorter ones, with a warning).
const grpcMinPingTime = 10 * time.Second

// peerKeepalive is how often peers are checked and how long they may take to
// answer; a frozen peer is ejected within the sum (contract.toml: 4 s + 4 s).
func (n *Node) peerKeepalive() keepalive.ClientParameters {
	if n.opts.PeerKeepalive != nil {
		return *n.opts.PeerKeepalive
	}
	return keepalive.ClientParameters{Time: meshv1.DefaultKeepaliveTime, Timeout: meshv1.DefaultKeepaliveTimeout, PermitWithoutStream: true}
}

// errPeerFrozen is why a peer's link ends when it stops answering.
var errPeerFrozen = errors.New("the peer did not answer a health check in time")

// watchPeer asks p's health every keepalive Time while its stream is up and
// ends the link (stop) when an answer takes longer than the keepalive
// Timeout: a frozen peer's calls in flight then fail UNAVAILABLE and its types
// leave the routing table, as Python and Node nodes do with HTTP/2 pings
// (grpc-go will not ping more often than every 10 s). Only silence counts: a
// peer answering with an error, or NOT_SERVING, is up.
func (n *Node) watchPeer(ctx context.Context, p *peer, stop context.CancelCauseFunc) {
	kp := n.peerKeepalive()
	health := healthpb.NewHealthClient(p.client.conn)
	tick := time.NewTicker(kp.Time)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cctx, cancel := context.WithTimeout(ctx, kp.Timeout)
		_, err := health.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if ctx.Err() == nil && CodeOf(err) == codes.DeadlineExceeded {
			n.log.Warn("peer does not answer; ejecting it", "peer", p.name, "addr", p.address, "within", kp.Timeout)
			stop(errPeerFrozen)
			n.clearPeer(p) // no new call goes to p from now on
			p.mux.abort(errPeerFrozen)
			return
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
	sctx, stopCause := context.WithCancelCause(ctx)
	stop := func() { stopCause(context.Canceled) }
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
			if cause := context.Cause(sctx); errors.Is(cause, errPeerFrozen) {
				err = cause
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
				go n.watchPeer(sctx, p, stopCause)
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
		// Dropped for good (logged once): dialling it again would only find
		// this node again. A node of the pool a dns: peer names finds itself
		// there as a matter of course.
		level := slog.LevelWarn
		if p.group != "" {
			level = slog.LevelDebug
		}
		n.log.Log(context.Background(), level, fmt.Sprintf("peer %s at %s is this node itself: ignored", p.name, p.address))
		n.removePeerLocked(p)
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
	p.lastInfo = info
	n.notifyRoutesLocked()
	return true
}

// removePeerLocked drops p: it gets no new call at once, and its connection
// closes once the calls in flight on it are done (peerDrainTimeout at most).
func (n *Node) removePeerLocked(p *peer) {
	if n.peers[p.name] != p {
		return
	}
	delete(n.peers, p.name)
	p.cancel()
	p.info = nil
	go func() {
		p.mux.drain(peerDrainTimeout)
		p.mux.close()
		_ = p.client.Close()
	}()
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
