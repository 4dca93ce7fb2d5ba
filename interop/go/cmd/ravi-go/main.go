// Command ravi-go runs a Go ravi node (hosting the reviewer and the
// conformance agent) and calls any ravi node: send, publish, subscribe,
// describe.
//
//	ravi-go node --listen 127.0.0.1:50061 --node-id go-1 [--peer name=addr]... [--token T] [--otlp-endpoint URL]
//	    [--tls-cert F --tls-key F [--tls-client-ca F]] [--peer-tls-ca F [--peer-tls-cert F --peer-tls-key F] [--peer-tls-server-name N]]
//	ravi-go send --addr A [--tls-ca F [--tls-cert F --tls-key F]] --to type/key --type FULL.PROTO.NAME --json '{...}'
//	ravi-go publish --addr A --topic type/source --type FULL.PROTO.NAME --json '{...}'
//	ravi-go subscribe --addr A --topic-type T [--prefix P] [--count N] [--timeout D]
//	ravi-go describe --addr A
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"github.com/ravi-mesh/ravi/interop/go/agents"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// The message types a node and the CLI know by name.
	_ "github.com/ravi-mesh/ravi/gen/go/ravi/a2a/v1"
	_ "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	_ "github.com/ravi-mesh/ravi/gen/go/ravi/examples/v1"
)

const usage = `usage: ravi-go <command> [flags]

commands:
  node       run a node hosting the reviewer and the conformance agent
  send       send a message to an agent and print the reply
  publish    publish a message on a topic
  subscribe  print the events of a node's topics as JSON lines
  describe   print a node's description

Run "ravi-go <command> -h" for the flags of a command.
`

// exitError carries the exit status of a failed command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	commands := map[string]func([]string, io.Writer, io.Writer) error{
		"node":      runNode,
		"send":      runSend,
		"publish":   runPublish,
		"subscribe": runSubscribe,
		"describe":  runDescribe,
	}
	cmd, ok := commands[args[0]]
	if !ok {
		if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "ravi-go: unknown command %q\n%s", args[0], usage)
		return 2
	}
	err := cmd(args[1:], stdout, stderr)
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ee):
		return ee.code
	}
	var se startupError
	if errors.As(err, &se) {
		fmt.Fprintf(stderr, "ravi-go %s: %s\n", args[0], se.msg)
		return 2
	}
	var re *ravi.Error
	if errors.As(err, &re) {
		// One line, as the Python and Node command lines print a service error.
		reason := ""
		if re.Reason != "" {
			reason = " (" + re.Reason + ")"
		}
		fmt.Fprintf(stderr, "ravi-go %s: %s%s: %s\n", args[0], ravi.CodeName(ravi.CodeOf(re)), reason, re.Message)
		return 1
	}
	fmt.Fprintf(stderr, "ravi-go %s: %v\n", args[0], err)
	if isUsage(err) {
		return 2
	}
	return 1
}

// startupError is a node that could not start (its port is taken, a file is
// unreadable): one line, exit 2, as the Python and Node nodes report it.
type startupError struct{ msg string }

func (e startupError) Error() string { return e.msg }

// startupFailed explains why the node could not start, in the words a user
// can act on.
func startupFailed(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "listen" {
		cause := oe.Err
		var se *os.SyscallError
		if errors.As(cause, &se) {
			cause = se.Err
		}
		return startupError{fmt.Sprintf("cannot listen on %s: %v", oe.Addr, cause)}
	}
	if isUsage(err) {
		return err
	}
	return startupError{err.Error()}
}

// hostPortPattern is HOST:PORT or [IPV6]:PORT.
var hostPortPattern = regexp.MustCompile(`^(?:\[[^\]]+\]|[^:\[\]/]+):\d{1,5}$`)

// checkHostPort checks an address flag the way the Python and Node command
// lines do: no scheme, and always a port (gRPC would dial 443 for a bare
// host). name is the NAME= a --peer value starts with.
func checkHostPort(text, flag, name string) error {
	given := flag + " " + name
	if _, rest, ok := strings.Cut(text, "://"); ok {
		rest = strings.TrimRight(rest, "/")
		hint := ""
		if hostPortPattern.MatchString(rest) {
			hint = ": try " + given + rest
		}
		return usageError{fmt.Sprintf("%s takes HOST:PORT, not a URL (%s%s)%s", flag, given, text, hint)}
	}
	if !hostPortPattern.MatchString(text) {
		if text != "" && !strings.Contains(text, ":") {
			return usageError{fmt.Sprintf("%s%s has no port: give HOST:PORT, such as %s:50051", given, text, text)}
		}
		return usageError{fmt.Sprintf("%s must be HOST:PORT, got %s%s", flag, given, text)}
	}
	return nil
}

// summaries say what each command does, at the top of its --help.
var summaries = map[string]string{
	"node":      "Run a node hosting the reviewer and the conformance agent, until SIGTERM or SIGINT.",
	"send":      `Send a message to an agent through a node and print the reply: {"nodeId": ..., "result": {"type": ..., "value": ...}}.`,
	"publish":   `Publish a message on a topic through a node and print {"localDeliveries": N, "streamDeliveries": N}.`,
	"subscribe": `Print a node's description, then the events published through it, as JSON lines ({"node": ...} and {"event": ...}). Events published through its peers reach its agents but not this stream: subscribe to each node to follow a mesh.`,
	"describe":  "Print a node's description (its NodeInfo as protobuf JSON).",
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("ravi-go "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { printUsage(fs.Output(), fs, summaries[name]) }
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return exitError{2}
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %v\n", fs.Args())
		return exitError{2}
	}
	return nil
}

type peerFlags map[string]string

func (p peerFlags) String() string { return fmt.Sprint(map[string]string(p)) }

func (p peerFlags) Set(v string) error {
	name, addr, ok := strings.Cut(v, "=")
	if !ok || name == "" || addr == "" {
		return fmt.Errorf("want name=host:port, got %q", v)
	}
	p[name] = addr
	return nil
}

func runNode(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("node", stderr)
	listen := fs.String("listen", ravi.DefaultListenAddr, "`HOST:PORT` to listen on (port 0: any free port)")
	advertise := fs.String("advertise", "", "`HOST:PORT` peers dial to reach this node (default: the listen address)")
	nodeID := fs.String("node-id", "", "node `ID`, unique in the mesh (default: go-<random>)")
	peers := peerFlags{}
	fs.Var(peers, "peer", "a peer, `NAME=HOST:PORT` (repeatable); with NAME=dns:HOST:PORT every address HOST resolves to is a peer, resolved again every --peer-dns-interval seconds")
	dnsInterval := fs.Float64("peer-dns-interval", ravi.DefaultPeerDNSInterval.Seconds(), "seconds between two resolutions of dns: peers")
	token := fs.String("token", os.Getenv("RAVI_TOKEN"), "bearer `TOKEN` required of callers and sent to peers (default $RAVI_TOKEN)")
	healthWithoutAuth := fs.Bool("health-without-auth", false, "serve health checks without the token")
	maxBytes := fs.Int("max-message-bytes", ravi.DefaultMaxMessageBytes, "largest message accepted or sent")
	confType := fs.String("conformance-type", agents.ConformanceType, "agent `TYPE` of the conformance agent")
	counterType := fs.String("counter-type", agents.CounterType, "agent `TYPE` of the counter agent (its state goes to the state store)")
	idleTimeout := newSecondsFlag(ravi.DefaultIdleTimeout)
	fs.Var(idleTimeout, "idle-timeout", "seconds (or a duration such as 10m) an agent instance may go without a message before it is passivated (its state saved, the instance released); 0: never")
	maxActive := fs.Int("max-active-agents", ravi.DefaultMaxActiveAgents, "active agent instances at most: beyond it the least recently used idle one is passivated; 0: no bound")
	checkpoint := fs.String("checkpoint", ravi.DefaultCheckpoint, "when agent state is saved besides passivation and stop: passivation, or each_message (after every handled message, before the reply)")
	stateStore := fs.String("state-store", "", "where agent state goes: memory, sqlite:PATH or postgresql://USER@HOST/DB (default: sqlite in --data-dir, else memory)")
	dataDir := fs.String("data-dir", "", "keep the node's data here: agent state in `DIR`/"+ravi.StateFile)
	formatWith := fs.String("format-with", "", "agent `TYPE` of a formatter the reviewer sends approved drafts to")
	grace := fs.Duration("grace", ravi.DefaultGracePeriod, "how long in-flight calls may drain on shutdown")
	keepaliveTime := fs.Float64("keepalive-time", meshv1.DefaultKeepaliveTime.Seconds(), "seconds between two pings (HTTP/2 PING) of each peer's connection")
	keepaliveTimeout := fs.Float64("keepalive-timeout", meshv1.DefaultKeepaliveTimeout.Seconds(), "seconds a ping may go unanswered before the peer's connection is closed: its calls fail UNAVAILABLE and its agent types with them")
	verbose := fs.Bool("v", false, "log debug lines too (each retry to reach a peer)")
	verboseLong := fs.Bool("verbose", false, "the same as -v")
	otlpEndpoint := fs.String("otlp-endpoint", "", "export traces over OTLP gRPC to this `URL`, such as http://127.0.0.1:4317 (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or $OTEL_EXPORTER_OTLP_ENDPOINT; neither: no tracing)")
	serveTLS := addServerTLSFlags(fs)
	peerTLS := addPeerTLSFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dnsInterval <= 0 {
		return usageError{fmt.Sprintf("--peer-dns-interval must be positive, got %v", *dnsInterval)}
	}
	// Every node accepts pings every DefaultKeepaliveTime / 2 (contract.toml).
	if minimum := meshv1.DefaultKeepaliveTime.Seconds() / 2; *keepaliveTime < minimum {
		return usageError{fmt.Sprintf("--keepalive-time must be at least %v s, got %v", minimum, *keepaliveTime)}
	}
	if *keepaliveTimeout <= 0 {
		return usageError{fmt.Sprintf("--keepalive-timeout must be positive, got %v", *keepaliveTimeout)}
	}
	if *maxActive < 0 {
		return usageError{fmt.Sprintf("--max-active-agents must not be negative (0: no bound), got %d", *maxActive)}
	}
	if *checkpoint != ravi.DefaultCheckpoint && *checkpoint != ravi.CheckpointEachMessage {
		return usageError{fmt.Sprintf("--checkpoint must be one of %s, %s; got %q", ravi.DefaultCheckpoint, ravi.CheckpointEachMessage, *checkpoint)}
	}
	if err := checkHostPort(*listen, "--listen", ""); err != nil {
		return err
	}
	for name, address := range peers {
		if strings.HasPrefix(address, "dns:") {
			if err := checkHostPort(strings.TrimPrefix(address, "dns:"), "--peer", name+"=dns:"); err != nil {
				return err
			}
			continue
		}
		if err := checkHostPort(address, "--peer", name+"="); err != nil {
			return err
		}
	}
	// TLS files are read now: a bad one fails before anything is served.
	serverCreds, err := serveTLS.serverOption()
	if err != nil {
		return startupFailed(err)
	}
	peerCreds, err := peerTLS.dialOption()
	if err != nil {
		return startupFailed(err)
	}
	level := slog.LevelInfo
	if *verbose || *verboseLong {
		level = slog.LevelDebug
	}
	if *nodeID == "" {
		*nodeID = "go-" + randomHex(4) // known before the node, for service.name
	}
	logger := slog.New(newLineHandler(stderr, "ravi-go "+*nodeID, level))
	opts := ravi.Options{
		NodeID:            *nodeID,
		ListenAddr:        *listen,
		AdvertiseAddr:     *advertise,
		Peers:             peers,
		PeerDNSInterval:   seconds(*dnsInterval),
		PeerKeepalive:     &keepalive.ClientParameters{Time: seconds(*keepaliveTime), Timeout: seconds(*keepaliveTimeout), PermitWithoutStream: true},
		Token:             *token,
		HealthWithoutAuth: *healthWithoutAuth,
		MaxMessageBytes:   *maxBytes,
		GracePeriod:       *grace,
		Logger:            logger,
		// The flags mean what ravi node's mean: 0 turns the bound off, where
		// the zero value of an Options field means its default.
		IdleTimeout:     neverIfZero(time.Duration(*idleTimeout)),
		MaxActiveAgents: neverIfZero(*maxActive),
		Checkpoint:      *checkpoint,
		DataDir:         *dataDir,
	}
	if *stateStore != "" {
		if opts.StateStore, err = ravi.OpenStore(*stateStore); err != nil {
			return usageError{err.Error()}
		}
	}
	if serverCreds != nil {
		// One listener: AgentService, grpc.health.v1 and reflection all over TLS.
		opts.ServerOptions = append(opts.ServerOptions, serverCreds)
	}
	if peerCreds != nil {
		opts.DialOptions = append(opts.DialOptions, peerCreds)
	}
	tp, err := newTracerProvider(context.Background(), *nodeID, *otlpEndpoint, logger)
	if err != nil {
		return startupFailed(err)
	}
	if tp != nil {
		opts.TracerProvider = tp
		// After the node stopped: flush the spans still batched, then exit.
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := tp.Shutdown(ctx); err != nil {
				logger.Warn("flushing traces failed", "err", err)
			}
		}()
	}
	node, err := ravi.NewNode(opts)
	if err != nil {
		return startupFailed(err)
	}
	reviewer := &agents.ReviewAgent{FormatWith: *formatWith}
	if err := node.Register(reviewer.AgentType()); err != nil {
		return startupFailed(err)
	}
	if err := node.Register(agents.ConformanceAgentType(*confType)); err != nil {
		return startupFailed(err)
	}
	if err := node.Register(agents.CounterAgentType(*counterType)); err != nil {
		return err
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	if err := node.Start(); err != nil {
		return startupFailed(err)
	}
	// The lines every node's command line prints, in Python and Node too.
	fmt.Fprintf(stdout, "ravi-go node %s serving on %s\n", node.ID(), node.Addr())
	fmt.Fprintf(stdout, "  agents: %s\n", describeAgents(node.Info()))
	fmt.Fprintf(stdout, "  peers: %s\n", describePeers(peers))
	if f, ok := stdout.(interface{ Sync() error }); ok {
		_ = f.Sync()
	}
	served := make(chan error, 1)
	go func() { served <- node.Wait() }()
	select {
	case sig := <-signals:
		fmt.Fprintf(stdout, "ravi-go node %s stopping (%s): calls in flight get up to %g s\n", node.ID(), signalName(sig), grace.Seconds())
		if err := node.Stop(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		fmt.Fprintf(stdout, "ravi-go node %s stopped\n", node.ID())
		return nil
	case err := <-served:
		if err == nil {
			err = errors.New("the server stopped")
		}
		return err
	}
}

// secondsFlag is a duration written in seconds ("600", "0.5"), as ravi
// node's flags take them, or as a Go duration ("10m").
type secondsFlag time.Duration

func newSecondsFlag(d time.Duration) *secondsFlag { s := secondsFlag(d); return &s }

func (s *secondsFlag) String() string { return time.Duration(*s).String() }

func (s *secondsFlag) Set(v string) error {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if f < 0 {
			return fmt.Errorf("must not be negative, got %s", v)
		}
		*s = secondsFlag(f * float64(time.Second))
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("want seconds or a duration such as 10m, got %q", v)
	}
	*s = secondsFlag(d)
	return nil
}

func neverIfZero[T time.Duration | int](v T) T {
	if v == 0 {
		return -1
	}
	return v
}

type clientFlags struct {
	addr    *string
	token   *string
	timeout *time.Duration
	tls     dialTLSFlags
}

func addClientFlags(fs *flag.FlagSet) clientFlags {
	return clientFlags{
		addr:    fs.String("addr", "127.0.0.1:50051", "the node to talk to, `HOST:PORT`"),
		token:   fs.String("token", os.Getenv("RAVI_TOKEN"), "bearer `TOKEN` (default $RAVI_TOKEN)"),
		timeout: fs.Duration("timeout", 5*time.Second, "deadline of the call"),
		tls:     addClientTLSFlags(fs),
	}
}

func (c clientFlags) dial() (*ravi.Client, error) {
	if err := checkHostPort(*c.addr, "--addr", ""); err != nil {
		return nil, err
	}
	var opts []ravi.ClientOption
	if *c.token != "" {
		opts = append(opts, ravi.WithToken(*c.token))
	}
	creds, err := c.tls.dialOption()
	if err != nil {
		if isUsage(err) {
			return nil, err
		}
		return nil, usageError{err.Error()}
	}
	if creds != nil {
		opts = append(opts, ravi.WithDialOptions(creds))
	}
	return ravi.Dial(*c.addr, opts...)
}

// payloadFlags build a payload from --type and --json: a protobuf type this
// program knows is validated and sent as binary protobuf; any other type name
// is sent as the JSON given (application/json), for the node to decode.
type payloadFlags struct {
	typeName *string
	json     *string
	asJSON   *bool
}

func addPayloadFlags(fs *flag.FlagSet) payloadFlags {
	return payloadFlags{
		typeName: fs.String("type", "", "full `NAME` of the message type (for example ravi.examples.v1.ReviewRequest)"),
		json:     fs.String("json", "{}", "the message, as protobuf `JSON`"),
		asJSON:   fs.Bool("send-json", false, "send the payload as application/json even for a known protobuf type"),
	}
}

func (p payloadFlags) payload() (*meshv1.Payload, error) {
	if *p.typeName == "" {
		return nil, errors.New("--type is required")
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(*p.typeName))
	if err != nil {
		if !json.Valid([]byte(*p.json)) {
			return nil, fmt.Errorf("--json is not valid JSON: %s", *p.json)
		}
		return &meshv1.Payload{Type: *p.typeName, ContentType: ravi.ContentTypeJSON, Data: []byte(*p.json)}, nil
	}
	msg := mt.New().Interface()
	if err := protojson.Unmarshal([]byte(*p.json), msg); err != nil {
		return nil, fmt.Errorf("--json is not a %s: %v", *p.typeName, err)
	}
	if *p.asJSON {
		return ravi.EncodePayloadJSON(msg)
	}
	return ravi.EncodePayload(msg)
}

func runSend(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("send", stderr)
	cf := addClientFlags(fs)
	to := fs.String("to", "", "the recipient, `TYPE/KEY`")
	pf := addPayloadFlags(fs)
	metadata := fs.String("metadata", "", "envelope metadata, `K=V,K=V`")
	if err := parse(fs, args); err != nil {
		return err
	}
	recipient, err := ravi.ParseAgentID(*to)
	if err != nil {
		return err
	}
	payload, err := pf.payload()
	if err != nil {
		return err
	}
	client, err := cf.dial()
	if err != nil {
		return err
	}
	defer client.Close()
	opts := []ravi.CallOption{ravi.WithTimeout(*cf.timeout)}
	if md := parseMetadata(*metadata); md != nil {
		opts = append(opts, ravi.WithMetadata(md))
	}
	resp, err := client.SendPayload(context.Background(), recipient, payload, opts...)
	if err != nil {
		return reachError(err, *cf.addr)
	}
	out := map[string]any{"nodeId": resp.GetNodeId()}
	if r := resp.GetResult(); r != nil {
		out["result"] = payloadJSON(r)
	}
	return printJSON(stdout, out)
}

func runPublish(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("publish", stderr)
	cf := addClientFlags(fs)
	topicFlag := fs.String("topic", "", "the topic, `TYPE/SOURCE`")
	pf := addPayloadFlags(fs)
	nodeScope := fs.Bool("node-scope", false, "publish with PUBLISH_SCOPE_NODE (the node's own subscribers only)")
	if err := parse(fs, args); err != nil {
		return err
	}
	topic, err := ravi.ParseTopicID(*topicFlag)
	if err != nil {
		return err
	}
	payload, err := pf.payload()
	if err != nil {
		return err
	}
	client, err := cf.dial()
	if err != nil {
		return err
	}
	defer client.Close()
	opts := []ravi.CallOption{ravi.WithTimeout(*cf.timeout)}
	if *nodeScope {
		opts = append(opts, ravi.WithScope(meshv1.PublishScope_PUBLISH_SCOPE_NODE))
	}
	resp, err := client.PublishPayload(context.Background(), topic, payload, opts...)
	if err != nil {
		return reachError(err, *cf.addr)
	}
	return printJSON(stdout, protoJSON(resp))
}

func runSubscribe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("subscribe", stderr)
	cf := addClientFlags(fs)
	*cf.timeout = 0
	fs.Lookup("timeout").Usage = "stop after this long (0: never); with --count, fewer events is an error"
	fs.Lookup("timeout").DefValue = "0s"
	topicType := fs.String("topic-type", "", "topic `TYPE` to match exactly")
	prefix := fs.String("prefix", "", "topic type `PREFIX` to match")
	count := fs.Int("count", 0, "stop after `N` events (0: never)")
	subscriberID := fs.String("subscriber-id", "ravi-go-cli", "subscriber `ID` sent to the node")
	if err := parse(fs, args); err != nil {
		return err
	}
	var filters []ravi.Filter
	if *topicType != "" {
		filters = append(filters, ravi.TopicType(*topicType))
	}
	if *prefix != "" {
		filters = append(filters, ravi.TopicPrefix(*prefix))
	}
	if len(filters) == 0 {
		fmt.Fprintln(stderr, "warning: no --topic-type or --prefix: no event matches, only the node's description and its changes are printed")
	}
	client, err := cf.dial()
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if *cf.timeout > 0 {
		var cancelT context.CancelFunc
		ctx, cancelT = context.WithTimeout(ctx, *cf.timeout)
		defer cancelT()
	}
	sub, err := client.Subscribe(ctx, *subscriberID, filters...)
	if err != nil {
		return reachError(err, *cf.addr)
	}
	defer sub.Close()
	fmt.Fprintf(stderr, "subscribed to %s (node %s): the events published through this node\n", *cf.addr, sub.Node.GetNodeId())
	if err := printJSON(stdout, map[string]any{"node": protoJSON(sub.Node)}); err != nil {
		return err
	}
	for seen := 0; *count == 0 || seen < *count; {
		msg, err := sub.Recv()
		if err != nil {
			if ctx.Err() != nil {
				if *count > 0 {
					return &ravi.Error{Code: ravi.CodeOf(ctx.Err()), Message: fmt.Sprintf("got %d of %d events", seen, *count)}
				}
				return nil
			}
			if errors.Is(err, io.EOF) {
				if *count > 0 {
					return fmt.Errorf("the stream ended after %d of %d events", seen, *count)
				}
				return nil
			}
			return err
		}
		var line map[string]any
		switch {
		case msg.GetNode() != nil:
			line = map[string]any{"node": protoJSON(msg.GetNode())}
		case msg.GetEvent() != nil:
			line = map[string]any{"event": eventJSON(msg.GetEvent())}
			seen++
		default:
			continue
		}
		if err := printJSON(stdout, line); err != nil {
			return err
		}
	}
	return nil
}

// eventJSON is an event as protobuf JSON, its payload decoded (payloadJSON).
func eventJSON(ev *meshv1.Event) any {
	var out map[string]any
	if err := json.Unmarshal(protoJSON(ev), &out); err != nil {
		return protoJSON(ev)
	}
	if env, ok := out["envelope"].(map[string]any); ok {
		env["payload"] = payloadJSON(ev.GetEnvelope().GetPayload())
	}
	return out
}

func runDescribe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("describe", stderr)
	cf := addClientFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	client, err := cf.dial()
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *cf.timeout)
	defer cancel()
	info, err := client.Describe(ctx)
	if err != nil {
		return reachError(err, *cf.addr)
	}
	return printJSON(stdout, protoJSON(info))
}

func parseMetadata(s string) map[string]string {
	if s == "" {
		return nil
	}
	md := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		md[strings.ToLower(strings.TrimSpace(k))] = v
	}
	return md
}

// payloadJSON renders a payload as the three command lines do: {"type",
// "value"} when the type is known here or the payload is JSON, else the
// Payload itself as protobuf JSON (its data in base64).
func payloadJSON(p *meshv1.Payload) any {
	if m, err := ravi.DecodePayload(p); err == nil {
		return map[string]any{"type": p.GetType(), "value": protoJSON(m)}
	}
	if p.GetContentType() == ravi.ContentTypeJSON && json.Valid(p.GetData()) {
		return map[string]any{"type": p.GetType(), "value": json.RawMessage(p.GetData())}
	}
	return protoJSON(p)
}

// printOptions print every field, defaults included, as Python's
// MessageToDict(always_print_fields_with_no_presence=True) and Node's
// toJson({alwaysEmitImplicit: true}) do.
var printOptions = protojson.MarshalOptions{EmitDefaultValues: true}

func protoJSON(m proto.Message) json.RawMessage {
	b, err := printOptions.Marshal(m)
	if err != nil {
		return json.RawMessage(`null`)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return json.RawMessage(b)
	}
	return buf.Bytes()
}

// reachError says plainly that no node answered at addr (the dial failed),
// as the Python and Node command lines do; other errors pass unchanged.
func reachError(err error, addr string) error {
	var re *ravi.Error
	if errors.As(err, &re) && ravi.CodeOf(re) == codes.Unavailable {
		if i := strings.LastIndex(re.Message, "connect: "); i >= 0 {
			cause := strings.TrimRight(re.Message[i+len("connect: "):], `"`)
			return &ravi.Error{Code: codes.Unavailable, Message: fmt.Sprintf("cannot reach a node at %s: %s", addr, cause)}
		}
	}
	return err
}

// describeAgents is the "agents:" line of a node's startup: each agent type
// with the message types it handles.
func describeAgents(info *meshv1.NodeInfo) string {
	var parts []string
	for _, t := range info.GetAgentTypes() {
		handled := strings.Join(slices.Sorted(slices.Values(t.GetHandledTypes())), ", ")
		if handled == "" {
			handled = "no handlers"
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", t.GetAgentType(), handled))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// describePeers is the "peers:" line of a node's startup.
func describePeers(peers map[string]string) string {
	var parts []string
	for name, addr := range peers {
		parts = append(parts, name+" at "+addr)
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func signalName(sig os.Signal) string {
	if s, ok := sig.(syscall.Signal); ok {
		switch s {
		case syscall.SIGTERM:
			return "SIGTERM"
		case syscall.SIGINT:
			return "SIGINT"
		}
	}
	return sig.String()
}

func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func randomHex(nbytes int) string {
	b := make([]byte, nbytes)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// seconds converts a flag given in seconds, as `ravi node` takes them.
func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second))
}
