package ravi

import (
	"container/list"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"log/slog"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// ContractVersion is the version of the ravi.mesh.v1 contract this package
// implements (recorded once, in proto/ravi/mesh/v1/contract.toml).
const ContractVersion = meshv1.ContractVersion

// Language is the language a Go node reports in its NodeInfo.
const Language = "go"

// HopLimit is the number of forwards after which a Send is refused, the same
// in every language.
const HopLimit = meshv1.HopLimit

// Defaults of Options. Those the members share come from the contract's facts
// (proto/ravi/mesh/v1/contract.toml), so Python, Go and Node agree.
const (
	DefaultListenAddr      = "127.0.0.1:0"
	DefaultMaxMessageBytes = meshv1.DefaultMaxMessageBytes
	DefaultTimeout         = meshv1.DefaultTimeout
	DefaultGracePeriod     = meshv1.DefaultGracePeriod
	DefaultMailboxCapacity = meshv1.DefaultMailboxCapacity
)

// Options configure a Node. The zero value of every field has a useful
// default.
type Options struct {
	// NodeID is unique in the mesh; default "go-" and random hex.
	NodeID string
	// ListenAddr is the address to listen on; default 127.0.0.1:0 (loopback,
	// a free port).
	ListenAddr string
	// AdvertiseAddr is the address peers dial to reach the node, reported in
	// NodeInfo.address; default the listener's address.
	AdvertiseAddr string
	// Peers maps peer names to addresses: host:port, or dns:HOST:PORT for a
	// pool of nodes whose every address HOST resolves to is a peer, resolved
	// again every PeerDNSInterval (see ResolveDNS).
	Peers map[string]string
	// PeerDNSInterval is the time between two resolutions of a dns: peer;
	// default 10 s.
	PeerDNSInterval time.Duration
	// Resolver resolves dns: peers; default ResolveDNS (the system resolver).
	Resolver Resolver
	// Token, when set, is required of every caller as "authorization: Bearer
	// <token>" and sent to peers.
	Token string
	// PeerToken is the token sent to peers; default Token.
	PeerToken string
	// HealthWithoutAuth exempts grpc.health.v1 from the token check.
	HealthWithoutAuth bool
	// MaxMessageBytes bounds received and sent messages; default 4 MiB.
	MaxMessageBytes int
	// Keepalive and KeepalivePolicy configure server keepalive; defaults: ping
	// an idle connection every 30 s, allow client pings every 5 s.
	Keepalive       *keepalive.ServerParameters
	KeepalivePolicy *keepalive.EnforcementPolicy
	// PeerKeepalive configures the keepalive of connections to peers; default
	// the contract's: a ping every 4 s, the connection closed when one goes
	// unanswered for 4 s, so a frozen peer is ejected within 8 s (its calls
	// fail UNAVAILABLE, its types leave the routing table). Every node accepts
	// pings every 2 s; more often gets connections closed.
	PeerKeepalive *keepalive.ClientParameters
	// GracePeriod bounds the drain of in-flight calls in Stop; default 5 s.
	GracePeriod time.Duration
	// DefaultTimeout is the deadline of calls that arrive without one, and of
	// the handling of published events; default 60 s.
	DefaultTimeout time.Duration
	// MailboxCapacity bounds the messages queued or running per agent;
	// default 10,000. A send to a full mailbox fails with MAILBOX_FULL.
	MailboxCapacity int
	// IdleTimeout is how long an agent instance may go without a message
	// before it is passivated (its state saved, the instance released);
	// default 10 min, negative: never.
	IdleTimeout time.Duration
	// MaxActiveAgents bounds the active agent instances: beyond it the least
	// recently used idle one is passivated; default 100,000, negative: no
	// bound.
	MaxActiveAgents int
	// Checkpoint says when agent state is saved besides passivation and
	// Shutdown: "passivation" (the default: only then) or "each_message"
	// (after every handled message, before the reply).
	Checkpoint string
	// StateStore keeps the state of passivated agents; default a SQLite file
	// in DataDir when set, else a MemoryStore. OpenStore makes one from the
	// URLs of ravi node's --state-store.
	StateStore StateStore
	// DataDir is where the node keeps its data: agent state in
	// DataDir/state.sqlite3 when StateStore is nil.
	DataDir string
	// Types resolves payload type names; default protoregistry.GlobalTypes.
	Types TypeResolver
	// ServerOptions are added to the gRPC server's (for example otelgrpc's
	// stats handler, or grpc.Creds(credentials.NewTLS(cfg)) to serve TLS:
	// AgentService, health and reflection share the one listener).
	ServerOptions []grpc.ServerOption
	// DialOptions are added to the connections to peers, configured and
	// learned (for example grpc.WithTransportCredentials(credentials.NewTLS(cfg))
	// to dial them with TLS: it replaces the default plaintext credentials).
	DialOptions []grpc.DialOption
	// Logger receives the node's logs; default slog.Default().
	Logger *slog.Logger
	// TracerProvider makes the node's OpenTelemetry spans (send, handle,
	// publish, deliver, forward; see docs/operations.md, "Tracing"); default
	// the global provider, which records nothing unless one was installed
	// with otel.SetTracerProvider. The W3C trace context travels in
	// Envelope.metadata and in the gRPC metadata of unary calls either way.
	TracerProvider trace.TracerProvider
}

// Node hosts agent types and serves ravi.mesh.v1.AgentService, health and
// reflection. Create one with NewNode, register agent types, then Start it.
type Node struct {
	opts        Options
	id          string
	incarnation string
	log         *slog.Logger
	types       TypeResolver
	tr          nodeTracer

	mu         sync.Mutex
	agentTypes map[string]*agentType
	typeOrder  []string
	subs       []*subscription
	subSeq     int
	// streamsByCaller counts the open Subscribe streams of each caller.
	streamsByCaller map[string]int
	// openStreams counts every open Subscribe stream, streamPeak its high
	// mark since memory was last handed back (see releaseAfterBurst).
	openStreams int
	streamPeak  int
	revision    uint64
	instances   map[AgentID]*instance
	peers       map[string]*peer
	streams     map[*outStream]struct{}
	promises    map[string]*promise
	started     bool
	stopping    bool
	routeWatch  chan struct{}

	server     *grpc.Server
	health     *health.Server
	listener   net.Listener
	addr       string
	baseCtx    context.Context
	cancelBase context.CancelFunc
	peerCtx    context.Context
	cancelPeer context.CancelFunc
	stopCh     chan struct{}
	serveDone  chan struct{}
	serveErr   error
	stopOnce   sync.Once
	peerWG     sync.WaitGroup
	inflight   atomic.Int64 // unary calls being served

	// Agent lifecycles (lifecycle.go), under mu.
	lru            *list.List // of *instance, most recently used first
	activating     map[AgentID]chan struct{}
	leaving        map[AgentID]chan struct{}
	active         map[string]int
	checkpointEach bool
	storeOpen      chan struct{} // closed once the state store opened (or failed to)
	storeErr       error
}

type agentType struct {
	name      string
	handlers  map[string]Handler
	reentrant bool
	resident  bool
	newState  func(AgentID) any
}

type subscription struct {
	id        string
	agentType string
	filter    Filter
}

// NewNode creates a node; it serves nothing until Start.
func NewNode(opts Options) (*Node, error) {
	if opts.NodeID == "" {
		opts.NodeID = "go-" + randomHex(4)
	}
	if opts.ListenAddr == "" {
		opts.ListenAddr = DefaultListenAddr
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if opts.GracePeriod <= 0 {
		opts.GracePeriod = DefaultGracePeriod
	}
	if opts.DefaultTimeout <= 0 {
		opts.DefaultTimeout = DefaultTimeout
	}
	if opts.MailboxCapacity <= 0 {
		opts.MailboxCapacity = DefaultMailboxCapacity
	}
	if opts.PeerToken == "" {
		opts.PeerToken = opts.Token
	}
	if opts.Types == nil {
		opts.Types = protoregistry.GlobalTypes
	}
	if opts.PeerDNSInterval <= 0 {
		opts.PeerDNSInterval = DefaultPeerDNSInterval
	}
	if opts.Resolver == nil {
		opts.Resolver = ResolveDNS
	}
	for name, address := range opts.Peers {
		if _, _, _, err := dnsTarget(address); err != nil {
			return nil, fmt.Errorf("ravi: peer %q: %w", name, err)
		}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := lifecycleOptions(&opts); err != nil {
		return nil, err
	}
	if opts.NodeID == "" || len(opts.NodeID) > meshv1.MaxKeyBytes {
		return nil, fmt.Errorf("ravi: invalid node id %q", opts.NodeID)
	}
	n := &Node{
		opts:        opts,
		id:          opts.NodeID,
		incarnation: randomHex(8),
		log:         opts.Logger.With("node", opts.NodeID),
		types:       opts.Types,
		tr:          newNodeTracer(opts.TracerProvider, opts.NodeID),
		agentTypes:  map[string]*agentType{},
		instances:   map[AgentID]*instance{},
		lru:         list.New(),
		activating:  map[AgentID]chan struct{}{},
		leaving:     map[AgentID]chan struct{}{},
		active:      map[string]int{},
		storeOpen:   make(chan struct{}),
		peers:       map[string]*peer{},
		streams:     map[*outStream]struct{}{},
		promises:    map[string]*promise{},
		routeWatch:  make(chan struct{}),
		stopCh:      make(chan struct{}),
		serveDone:   make(chan struct{}),
	}
	n.checkpointEach = opts.Checkpoint == CheckpointEachMessage
	n.baseCtx, n.cancelBase = context.WithCancel(context.Background())
	n.peerCtx, n.cancelPeer = context.WithCancel(context.Background())
	return n, nil
}

// ID is the node id.
func (n *Node) ID() string { return n.id }

// Addr is the address the node listens on (after Start), with the real port.
func (n *Node) Addr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addr
}

// Register adds an agent type (and its subscriptions); it may be called
// before or after Start.
func (n *Node) Register(t AgentType) error {
	if err := checkType("agent type", t.Name); err != nil {
		return err
	}
	at := &agentType{name: t.Name, handlers: map[string]Handler{}, reentrant: t.Reentrant, resident: t.Resident, newState: t.NewState}
	for _, h := range t.Handlers {
		if h.fn == nil {
			return fmt.Errorf("ravi: agent type %q has an empty Handler", t.Name)
		}
		if _, dup := at.handlers[string(h.msgType)]; dup {
			return fmt.Errorf("ravi: agent type %q has two handlers for %s", t.Name, h.msgType)
		}
		at.handlers[string(h.msgType)] = h
	}
	n.mu.Lock()
	if _, dup := n.agentTypes[t.Name]; dup {
		n.mu.Unlock()
		return fmt.Errorf("ravi: agent type %q is registered already", t.Name)
	}
	n.agentTypes[t.Name] = at
	n.typeOrder = append(n.typeOrder, t.Name)
	for _, f := range t.Subscriptions {
		n.addSubscriptionLocked(t.Name, f)
	}
	n.changedLocked(len(t.Subscriptions) > 0)
	n.mu.Unlock()
	return nil
}

// Subscribe routes events on topics matching f to agents of agentType (the
// topic source is the key); it returns the subscription id.
func (n *Node) Subscribe(agentType string, f Filter) (string, error) {
	if err := checkType("agent type", agentType); err != nil {
		return "", err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	id := n.addSubscriptionLocked(agentType, f)
	n.changedLocked(true)
	return id, nil
}

// Unsubscribe removes a subscription by id.
func (n *Node) Unsubscribe(id string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	i := slices.IndexFunc(n.subs, func(s *subscription) bool { return s.id == id })
	if i < 0 {
		return &Error{Code: codes.NotFound, Message: fmt.Sprintf("no subscription %q", id)}
	}
	n.subs = slices.Delete(n.subs, i, i+1)
	n.changedLocked(true)
	return nil
}

func (n *Node) addSubscriptionLocked(agentType string, f Filter) string {
	n.subSeq++
	id := fmt.Sprintf("%s:%s:%d", agentType, f, n.subSeq)
	n.subs = append(n.subs, &subscription{id: id, agentType: agentType, filter: f})
	return id
}

// changedLocked bumps the revision, tells the node's Subscribe streams, and,
// when the subscriptions changed, reopens the streams to peers with the new
// filters.
func (n *Node) changedLocked(filtersChanged bool) {
	n.revision++
	for s := range n.streams {
		s.infoChanged()
	}
	if filtersChanged {
		for _, p := range n.peers {
			if p.restartStream != nil {
				p.restartStream()
				select {
				case p.kick <- struct{}{}:
				default:
				}
			}
		}
	}
}

// Info is the node's description, as Describe returns it.
func (n *Node) Info() *meshv1.NodeInfo {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.infoLocked()
}

func (n *Node) infoLocked() *meshv1.NodeInfo {
	info := &meshv1.NodeInfo{
		NodeId:          n.id,
		ContractVersion: ContractVersion,
		Language:        Language,
		Address:         n.advertised(),
		Incarnation:     n.incarnation,
		Revision:        n.revision,
	}
	for _, name := range n.typeOrder {
		at := n.agentTypes[name]
		handled := make([]string, 0, len(at.handlers))
		for t := range at.handlers {
			handled = append(handled, t)
		}
		sort.Strings(handled)
		info.AgentTypes = append(info.AgentTypes, &meshv1.AgentTypeInfo{
			AgentType: name, HandledTypes: handled, ActiveInstances: uint64(max(n.active[name], 0)),
		})
	}
	for _, s := range n.subs {
		info.Subscriptions = append(info.Subscriptions, &meshv1.Subscription{Id: s.id, AgentType: s.agentType, Filter: s.filter.Proto()})
	}
	return info
}

func (n *Node) advertised() string {
	if n.opts.AdvertiseAddr != "" {
		return n.opts.AdvertiseAddr
	}
	return n.addr
}

func (n *Node) filters() []*meshv1.TopicFilter {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*meshv1.TopicFilter
	seen := map[Filter]bool{}
	for _, s := range n.subs {
		if !seen[s.filter] {
			seen[s.filter] = true
			out = append(out, s.filter.Proto())
		}
	}
	return out
}

// Start listens, serves and starts peering; it returns once the node serves.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	select {
	case <-n.storeOpen:
		return errors.New("ravi: a node starts once")
	default:
	}
	if n.started || n.stopping {
		return errors.New("ravi: a node starts once")
	}
	// The store knows the node by its id; activations wait until it is open.
	ctx, cancel := context.WithTimeout(context.Background(), n.opts.DefaultTimeout)
	n.storeErr = n.opts.StateStore.Open(ctx, n.id)
	cancel()
	close(n.storeOpen)
	if n.storeErr != nil {
		return n.storeErr
	}
	lis, err := net.Listen("tcp", n.opts.ListenAddr)
	if err != nil {
		_ = n.opts.StateStore.Close(context.Background())
		return fmt.Errorf("ravi: listen on %s: %w", n.opts.ListenAddr, err)
	}
	n.started = true
	if n.opts.IdleTimeout > 0 {
		n.peerWG.Add(1)
		go n.sweep()
	}
	kp := keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}
	if n.opts.Keepalive != nil {
		kp = *n.opts.Keepalive
	}
	// Peers in every language ping every DefaultKeepaliveTime; allow that.
	ep := keepalive.EnforcementPolicy{MinTime: meshv1.DefaultKeepaliveTime / 2, PermitWithoutStream: true}
	if n.opts.KeepalivePolicy != nil {
		ep = *n.opts.KeepalivePolicy
	}
	auth := authenticator{token: n.opts.Token, healthExempt: n.opts.HealthWithoutAuth}
	sopts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(n.opts.MaxMessageBytes),
		grpc.MaxSendMsgSize(n.opts.MaxMessageBytes),
		grpc.KeepaliveParams(kp),
		grpc.KeepaliveEnforcementPolicy(ep),
		grpc.InTapHandle(refuseSpentDeadlines),
		grpc.ChainUnaryInterceptor(auth.unary, n.trackUnary),
		grpc.ChainStreamInterceptor(auth.stream),
		grpc.StatsHandler(otelgrpc.NewServerHandler(rpcTracing(n.opts.TracerProvider)...)),
	}
	sopts = append(sopts, n.opts.ServerOptions...)
	n.server = grpc.NewServer(sopts...)
	meshv1.RegisterAgentServiceServer(n.server, &service{n: n})
	n.health = health.NewServer()
	healthpb.RegisterHealthServer(n.server, n.health)
	reflection.Register(n.server)
	n.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	n.health.SetServingStatus(meshv1.AgentService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)

	n.listener = lis
	n.addr = lis.Addr().String()
	go func() {
		defer close(n.serveDone)
		if err := n.server.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			n.serveErr = err
			n.log.Error("serve failed", "err", err)
		}
	}()

	names := make([]string, 0, len(n.opts.Peers))
	for name := range n.opts.Peers {
		names = append(names, name)
	}
	sort.Strings(names)
	var groups []*dnsGroup
	for _, name := range names {
		address := n.opts.Peers[name]
		if host, port, ok, _ := dnsTarget(address); ok {
			groups = append(groups, &dnsGroup{name: name, host: host, port: port, members: map[string]*peer{}})
			continue
		}
		n.addPeerLocked(name, address, false)
	}
	if len(groups) > 0 {
		n.peerWG.Add(1)
		go n.discoverPeers(n.peerCtx, groups)
	}
	n.log.Debug("serving", "addr", n.addr, "peers", len(names))
	return nil
}

// Wait blocks until the node stopped serving and returns the serve error, if
// any.
func (n *Node) Wait() error {
	<-n.serveDone
	return n.serveErr
}

// Stop stops the node gracefully within Options.GracePeriod (see Shutdown).
func (n *Node) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), n.opts.GracePeriod)
	defer cancel()
	return n.Shutdown(ctx)
}

// Shutdown stops the node: health turns NOT_SERVING, Subscribe streams end,
// in-flight calls drain until ctx is done, then the server stops hard
// (cancelling what still runs), peering stops and connections close.
func (n *Node) Shutdown(ctx context.Context) error {
	var err error
	n.stopOnce.Do(func() {
		n.mu.Lock()
		started := n.started
		n.stopping = true
		n.mu.Unlock()
		if started && n.server != nil {
			n.health.Shutdown()
			close(n.stopCh)
			// GracefulStop refuses new calls and waits for every call, streams
			// included (health watches, reflection); the node waits for its
			// unary calls only, then cuts what remains.
			drained := make(chan struct{})
			go func() {
				n.server.GracefulStop()
				close(drained)
			}()
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
		wait:
			for {
				select {
				case <-drained:
					break wait
				case <-ctx.Done():
					n.log.Warn("grace period over, stopping in-flight calls", "inflight", n.inflight.Load())
					n.server.Stop()
					<-drained
					err = ctx.Err()
					break wait
				case <-tick.C:
					if n.inflight.Load() == 0 {
						n.server.Stop()
						<-drained
						break wait
					}
				}
			}
		} else {
			close(n.stopCh)
		}
		n.cancelPeer()
		n.peerWG.Wait()
		n.mu.Lock()
		peers := n.peers
		n.peers = map[string]*peer{}
		n.mu.Unlock()
		for _, p := range peers {
			_ = p.client.Close()
		}
		if started {
			// A stop saves every agent: the calls had their grace period.
			saveCtx, cancel := context.WithTimeout(context.Background(), n.opts.DefaultTimeout)
			n.saveAll(saveCtx)
			cancel()
		}
		n.cancelBase()
		if !started {
			close(n.serveDone)
		}
		n.log.Debug("stopped")
	})
	return err
}

func (n *Node) trackUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	n.inflight.Add(1)
	defer n.inflight.Add(-1)
	return handler(ctx, req)
}

// Send sends msg to an agent from outside any agent (no sender, no call
// chain) and waits for the reply.
func (n *Node) Send(ctx context.Context, to AgentID, msg proto.Message, opts ...CallOption) (*Reply, error) {
	return n.send(ctx, nil, to, msg, opts)
}

// Publish publishes msg on topic from outside any agent, with the scope of
// WithScope (mesh by default).
func (n *Node) Publish(ctx context.Context, topic TopicID, msg proto.Message, opts ...CallOption) (*meshv1.PublishResponse, error) {
	return n.publishFrom(ctx, nil, topic, msg, opts)
}

var (
	idPrefix = randomHex(6)
	idSeq    atomic.Uint64
)

func newMessageID() string {
	return fmt.Sprintf("%s-%d", idPrefix, idSeq.Add(1))
}

func randomHex(nbytes int) string {
	b := make([]byte, nbytes)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// routesChanged returns a channel closed at the next change of the routing
// table.
func (n *Node) routesChanged() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.routeWatch
}

func (n *Node) notifyRoutesLocked() {
	close(n.routeWatch)
	n.routeWatch = make(chan struct{})
}

// WaitForAgentType blocks until agentType is hosted here or by a peer the
// node is connected to, or ctx is done.
func (n *Node) WaitForAgentType(ctx context.Context, agentType string) error {
	for {
		ch := n.routesChanged()
		if n.hosts(agentType) || n.peerHosting(agentType) {
			return nil
		}
		select {
		case <-ctx.Done():
			return FromError(ctx.Err())
		case <-ch:
		}
	}
}

func (n *Node) hosts(agentType string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.agentTypes[agentType] != nil
}
