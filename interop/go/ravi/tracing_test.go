package ravi_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	conformancev1 "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"github.com/ravi-mesh/ravi/interop/go/agents"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// recorder collects the spans of every node of a test (each node has its own
// tracer provider, as separate processes would) and of the test itself.
type recorder struct {
	rec  *tracetest.SpanRecorder
	root trace.Tracer
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{rec: tracetest.NewSpanRecorder()}
	r.root = r.provider(t).Tracer("test")
	return r
}

func (r *recorder) provider(t *testing.T) *sdktrace.TracerProvider {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

// node starts a traced node.
func (r *recorder) node(t *testing.T, id string, opts ravi.Options, types ...ravi.AgentType) *ravi.Node {
	t.Helper()
	opts.NodeID = id
	opts.TracerProvider = r.provider(t)
	return startNode(t, opts, types...)
}

// span returns the one ended span named name made by node nodeID.
func (r *recorder) span(t *testing.T, name, nodeID string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	for _, s := range r.rec.Ended() {
		if s.Name() == name && attr(s, "ravi.node.id") == nodeID {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d spans %q on %s, want 1; spans:\n%s", len(found), name, nodeID, r.dump())
	}
	return found[0]
}

func (r *recorder) has(name, nodeID string) bool {
	for _, s := range r.rec.Ended() {
		if s.Name() == name && attr(s, "ravi.node.id") == nodeID {
			return true
		}
	}
	return false
}

func (r *recorder) dump() string {
	var b strings.Builder
	for _, s := range r.rec.Ended() {
		fmt.Fprintf(&b, "  %s %s [%s] span %s parent %s %v\n", s.Name(), s.SpanKind(), attr(s, "ravi.node.id"), s.SpanContext().SpanID(), s.Parent().SpanID(), s.Status())
	}
	return b.String()
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

func hasAttr(s sdktrace.ReadOnlySpan, key string) bool {
	return slices.ContainsFunc(s.Attributes(), func(kv attribute.KeyValue) bool { return string(kv.Key) == key })
}

// wantSpan checks a span's kind, parent and attributes (common ones
// included).
func wantSpan(t *testing.T, s sdktrace.ReadOnlySpan, kind trace.SpanKind, parent trace.SpanContext, attrs map[string]string) {
	t.Helper()
	if s.SpanKind() != kind {
		t.Errorf("%s: kind %s, want %s", s.Name(), s.SpanKind(), kind)
	}
	if s.Parent().TraceID() != parent.TraceID() || s.Parent().SpanID() != parent.SpanID() {
		t.Errorf("%s: parent %s/%s, want %s/%s", s.Name(), s.Parent().TraceID(), s.Parent().SpanID(), parent.TraceID(), parent.SpanID())
	}
	if s.SpanContext().TraceID() != parent.TraceID() {
		t.Errorf("%s: trace %s, want %s", s.Name(), s.SpanContext().TraceID(), parent.TraceID())
	}
	if attr(s, "ravi.language") != "go" || attr(s, "ravi.node.id") == "" || attr(s, "messaging.system") != "ravi" {
		t.Errorf("%s: common attributes %v", s.Name(), s.Attributes())
	}
	for k, v := range attrs {
		if got := attr(s, k); got != v || !hasAttr(s, k) {
			t.Errorf("%s: %s = %q, want %q", s.Name(), k, got, v)
		}
	}
}

// viaRPC checks that child's parent is the RPC span of a unary AgentService
// call (otelgrpc's server span), which descends from want either directly (a
// client without RPC spans) or through the caller's RPC client span, and
// returns that server span's context: what a ravi span on a unary call from a
// client has as its parent (peers call each other over Multiplex, without).
func viaRPC(t *testing.T, r *recorder, child sdktrace.ReadOnlySpan, want trace.SpanContext) trace.SpanContext {
	t.Helper()
	server, ok := r.byID(child.Parent())
	if !ok || server.SpanKind() != trace.SpanKindServer || !strings.HasPrefix(server.Name(), "ravi.mesh.v1.AgentService/") {
		t.Fatalf("%s: parent %v is no RPC server span; spans:\n%s", child.Name(), child.Parent(), r.dump())
	}
	parent := server.Parent()
	if client, ok := r.byID(parent); ok && client.SpanKind() == trace.SpanKindClient && client.Name() == server.Name() {
		parent = client.Parent()
	}
	if parent.TraceID() != want.TraceID() || parent.SpanID() != want.SpanID() {
		t.Errorf("%s: the RPC span descends from %s/%s, want %s/%s", child.Name(), parent.TraceID(), parent.SpanID(), want.TraceID(), want.SpanID())
	}
	return server.SpanContext()
}

// byID returns the ended span with sc's ids.
func (r *recorder) byID(sc trace.SpanContext) (sdktrace.ReadOnlySpan, bool) {
	for _, s := range r.rec.Ended() {
		if s.SpanContext().SpanID() == sc.SpanID() && s.SpanContext().TraceID() == sc.TraceID() {
			return s, true
		}
	}
	return nil, false
}

func wantOK(t *testing.T, spans ...sdktrace.ReadOnlySpan) {
	t.Helper()
	for _, s := range spans {
		if s.Status().Code == otelcodes.Error || hasAttr(s, "ravi.error.code") {
			t.Errorf("%s: status %v, attributes %v", s.Name(), s.Status(), s.Attributes())
		}
	}
}

// wantFailed checks the error rules: status ERROR, an exception event,
// ravi.error.code, and ravi.error.reason when there is one.
func wantFailed(t *testing.T, s sdktrace.ReadOnlySpan, code, reason string) {
	t.Helper()
	if s.Status().Code != otelcodes.Error {
		t.Errorf("%s: status %v, want ERROR", s.Name(), s.Status())
	}
	if !slices.ContainsFunc(s.Events(), func(e sdktrace.Event) bool { return e.Name == "exception" }) {
		t.Errorf("%s: no exception event in %v", s.Name(), s.Events())
	}
	if got := attr(s, "ravi.error.code"); got != code {
		t.Errorf("%s: ravi.error.code %q, want %q", s.Name(), got, code)
	}
	if got := attr(s, "ravi.error.reason"); got != reason || hasAttr(s, "ravi.error.reason") != (reason != "") {
		t.Errorf("%s: ravi.error.reason %q, want %q", s.Name(), got, reason)
	}
}

func TestTracingNestedSendAcrossNodes(t *testing.T) {
	ctx := testContext(t)
	r := newRecorder(t)
	b := r.node(t, "node-b", ravi.Options{}, agents.ConformanceAgentType("conformance-b"))
	a := r.node(t, "node-a", ravi.Options{Peers: map[string]string{"b": b.Addr()}}, agents.ConformanceAgentType("conformance-a"))
	waitFor(t, ctx, a, "a to reach b", hostsType(a, "node-b", "conformance-b"))

	ctx, root := r.root.Start(ctx, "test")
	echoed, err := ravi.Ask[*conformancev1.Echoed](ctx, a, ravi.AgentID{Type: "conformance-a", Key: "x"},
		&conformancev1.Forward{Target: &meshv1.AgentId{Type: "conformance-b", Key: "y"}, Text: "nested"}, ravi.WithMessageID("m-1"))
	root.End()
	if err != nil || echoed.GetNodeId() != "node-b" {
		t.Fatalf("%v %v", echoed, err)
	}
	sendA := r.span(t, "send conformance-a", "node-a")
	handleA := r.span(t, "handle conformance-a", "node-a")
	sendB := r.span(t, "send conformance-b", "node-a")
	handleB := r.span(t, "handle conformance-b", "node-b")
	wantSpan(t, sendA, trace.SpanKindClient, root.SpanContext(), map[string]string{
		"messaging.operation.type":   "send",
		"messaging.destination.name": "conformance-a",
		"ravi.agent.type":            "conformance-a",
		"ravi.agent.key":             "x",
		"ravi.message.type":          "ravi.conformance.v1.Forward",
		"messaging.message.id":       "m-1",
	})
	wantSpan(t, handleA, trace.SpanKindServer, sendA.SpanContext(), map[string]string{
		"messaging.operation.type": "process",
		"ravi.agent.type":          "conformance-a",
		"ravi.agent.key":           "x",
		"ravi.message.type":        "ravi.conformance.v1.Forward",
		"messaging.message.id":     "m-1",
	})
	if hasAttr(handleA, "ravi.sender") {
		t.Errorf("a send from outside any agent has no sender: %v", handleA.Attributes())
	}
	wantSpan(t, sendB, trace.SpanKindClient, handleA.SpanContext(), map[string]string{
		"messaging.operation.type":   "send",
		"messaging.destination.name": "conformance-b",
		"ravi.agent.type":            "conformance-b",
		"ravi.agent.key":             "y",
		"ravi.message.type":          "ravi.conformance.v1.Echo",
	})
	// Peers call each other over their Multiplex stream, which has no span per
	// call: the handle span is the send span's child, across the nodes.
	wantSpan(t, handleB, trace.SpanKindServer, sendB.SpanContext(), map[string]string{
		"messaging.operation.type": "process",
		"ravi.agent.type":          "conformance-b",
		"ravi.agent.key":           "y",
		"ravi.message.type":        "ravi.conformance.v1.Echo",
		"ravi.sender":              "conformance-a/x",
		"messaging.message.id":     attr(sendB, "messaging.message.id"),
	})
	if !handleB.Parent().IsRemote() {
		t.Errorf("handle span on b: the parent came from another node: %v", handleB.Parent())
	}
	wantOK(t, sendA, handleA, sendB, handleB)
	// The handler saw its send span's context.
	want := fmt.Sprintf("00-%s-%s-01", sendB.SpanContext().TraceID(), sendB.SpanContext().SpanID())
	if got := echoed.GetMetadata()["traceparent"]; got != want {
		t.Errorf("traceparent on b %q, want %q", got, want)
	}
	// A send a node routes to a peer is no forward.
	for _, s := range r.rec.Ended() {
		if strings.HasPrefix(s.Name(), "forward ") {
			t.Errorf("unexpected %s on %s", s.Name(), attr(s, "ravi.node.id"))
		}
	}
}

func TestTracingPropagatesOverUnaryCallsAndMultiplex(t *testing.T) {
	ctx := testContext(t)
	r := newRecorder(t)
	n := r.node(t, "node-a", ravi.Options{}, agents.ConformanceAgentType(""))
	c := dial(t, n.Addr())
	to := ravi.AgentID{Type: "conformance", Key: "k"}

	// A client's call carries ctx's span, in the envelope and the gRPC metadata.
	cctx, clientSpan := r.root.Start(ctx, "client")
	if _, err := echoVia(cctx, c, to, "client"); err != nil {
		t.Fatal(err)
	}
	clientSpan.End()
	handle := r.span(t, "handle conformance", "node-a")
	wantSpan(t, handle, trace.SpanKindServer, viaRPC(t, r, handle, clientSpan.SpanContext()), nil)
	r.rec.Reset()

	traceparent := func(sc trace.SpanContext) string {
		return fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID())
	}
	_, s1 := r.root.Start(ctx, "grpc-metadata")
	_, s2 := r.root.Start(ctx, "envelope")
	s1.End()
	s2.End()
	req := func(md map[string]string) *meshv1.SendRequest {
		return &meshv1.SendRequest{Recipient: to.Proto(), Envelope: &meshv1.Envelope{Payload: payloadOf(t, &conformancev1.Echo{Text: "x"}), Metadata: md}}
	}
	// A unary Send with the context in the gRPC metadata only.
	mdCtx := metadata.AppendToOutgoingContext(ctx, "traceparent", traceparent(s1.SpanContext()))
	if _, err := c.Service().Send(mdCtx, req(nil)); err != nil {
		t.Fatal(err)
	}
	handle = r.span(t, "handle conformance", "node-a")
	wantSpan(t, handle, trace.SpanKindServer, viaRPC(t, r, handle, s1.SpanContext()), nil)
	r.rec.Reset()
	// The envelope's context of another trace wins over the gRPC metadata's.
	if _, err := c.Service().Send(mdCtx, req(map[string]string{"traceparent": traceparent(s2.SpanContext())})); err != nil {
		t.Fatal(err)
	}
	wantSpan(t, r.span(t, "handle conformance", "node-a"), trace.SpanKindServer, s2.SpanContext(), nil)
	r.rec.Reset()

	// A Multiplex frame carries its context in its envelope.
	stream, err := c.Service().Multiplex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&meshv1.MultiplexRequest{Calls: []*meshv1.CallFrame{{CallId: 7, Kind: &meshv1.CallFrame_Send{
		Send: req(map[string]string{"traceparent": traceparent(s2.SpanContext())})}}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetCalls()[0].GetResult() == nil {
		t.Fatalf("connect %v %v", resp, err)
	}
	_ = stream.CloseSend()
	wantSpan(t, r.span(t, "handle conformance", "node-a"), trace.SpanKindServer, s2.SpanContext(), nil)
}

func TestTracingPublishOverSubscribeStream(t *testing.T) {
	ctx := testContext(t)
	r := newRecorder(t)
	failing := ravi.AgentType{
		Name: "failing-sub",
		Handlers: []ravi.Handler{ravi.HandleNoReply(func(context.Context, *ravi.Call, *conformancev1.Echo) error {
			return errors.New("cannot take it")
		})},
		Subscriptions: []ravi.Filter{ravi.TopicType(agents.ConformanceTopic)},
	}
	a := r.node(t, "node-a", ravi.Options{})
	b := r.node(t, "node-b", ravi.Options{Peers: map[string]string{"a": a.Addr()}}, agents.ConformanceAgentType(""), failing)
	waitFor(t, ctx, b, "b's stream to a", streamingTo(b, "node-a"))

	ctx, root := r.root.Start(ctx, "test")
	topic := ravi.TopicID{Type: agents.ConformanceTopic, Source: "src"}
	resp, err := a.Publish(ctx, topic, &conformancev1.Echo{Text: "hello"}, ravi.WithMessageID("pub-1"))
	root.End()
	if err != nil || resp.GetStreamDeliveries() != 1 || resp.GetLocalDeliveries() != 0 {
		t.Fatalf("publish %v %v", resp, err)
	}
	eventually(t, ctx, "both deliveries on b", func() (bool, error) {
		return r.has("deliver conformance", "node-b") && r.has("deliver failing-sub", "node-b"), nil
	})
	publish := r.span(t, "publish conformance.events", "node-a")
	wantSpan(t, publish, trace.SpanKindProducer, root.SpanContext(), map[string]string{
		"messaging.operation.type":   "publish",
		"messaging.destination.name": agents.ConformanceTopic,
		"ravi.topic.source":          "src",
		"ravi.message.type":          "ravi.conformance.v1.Echo",
		"messaging.message.id":       "pub-1",
	})
	wantOK(t, publish)
	for _, agentType := range []string{"conformance", "failing-sub"} {
		deliver := r.span(t, "deliver "+agentType, "node-b")
		wantSpan(t, deliver, trace.SpanKindConsumer, publish.SpanContext(), map[string]string{
			"messaging.operation.type": "process",
			"ravi.agent.type":          agentType,
			"ravi.agent.key":           "src",
			"ravi.topic.type":          agents.ConformanceTopic,
			"ravi.topic.source":        "src",
			"ravi.message.type":        "ravi.conformance.v1.Echo",
			"messaging.message.id":     "pub-1",
		})
		links := deliver.Links()
		if len(links) != 1 || links[0].SpanContext.SpanID() != publish.SpanContext().SpanID() || links[0].SpanContext.TraceID() != publish.SpanContext().TraceID() {
			t.Errorf("deliver %s: links %v, want the publish span", agentType, links)
		}
		if agentType == "conformance" {
			wantOK(t, deliver)
		} else {
			wantFailed(t, deliver, "UNKNOWN", ravi.ReasonHandlerFailed)
		}
	}
}

func TestTracingForwardThroughMiddleNode(t *testing.T) {
	ctx := testContext(t)
	r := newRecorder(t)
	b := r.node(t, "node-b", ravi.Options{}, agents.ConformanceAgentType("conformance-b"))
	m := r.node(t, "node-m", ravi.Options{Peers: map[string]string{"b": b.Addr()}})
	waitFor(t, ctx, m, "m to reach b", hostsType(m, "node-b", "conformance-b"))
	c := dial(t, m.Addr())

	ctx, root := r.root.Start(ctx, "test")
	_, err := echoVia(ctx, c, ravi.AgentID{Type: "conformance-b", Key: "k"}, "via m")
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	forward := r.span(t, "forward conformance-b", "node-m")
	wantSpan(t, forward, trace.SpanKindInternal, viaRPC(t, r, forward, root.SpanContext()), map[string]string{
		"ravi.route.hop_count": "1",
		"ravi.route.next_node": "node-b",
		"ravi.node.id":         "node-m",
	})
	handle := r.span(t, "handle conformance-b", "node-b")
	wantSpan(t, handle, trace.SpanKindServer, forward.SpanContext(), nil)
	wantOK(t, forward, handle)

	// A forward that finds no node fails.
	r.rec.Reset()
	_, err = echoVia(ctx, c, ravi.AgentID{Type: "nowhere", Key: "k"}, "lost")
	wantError(t, err, 5, ravi.ReasonAgentTypeNotFound)
	wantFailed(t, r.span(t, "forward nowhere", "node-m"), "NOT_FOUND", ravi.ReasonAgentTypeNotFound)
}

func TestTracingFailedHandler(t *testing.T) {
	ctx := testContext(t)
	r := newRecorder(t)
	b := r.node(t, "node-b", ravi.Options{}, agents.ConformanceAgentType("conformance-b"))
	a := r.node(t, "node-a", ravi.Options{Peers: map[string]string{"b": b.Addr()}}, agents.ConformanceAgentType("conformance-a"))
	waitFor(t, ctx, a, "a to reach b", hostsType(a, "node-b", "conformance-b"))

	// An ordinary error: UNKNOWN / HANDLER_FAILED, on the handle span and on
	// the send spans it fails on its way back.
	_, err := a.Send(ctx, ravi.AgentID{Type: "conformance-a", Key: "x"},
		&conformancev1.Forward{Target: &meshv1.AgentId{Type: "conformance-b", Key: "y"}, Text: "x"})
	if err != nil {
		t.Fatal(err)
	}
	r.rec.Reset()
	_, err = a.Send(ctx, ravi.AgentID{Type: "conformance-b", Key: "y"}, &conformancev1.Fail{Message: "boom"})
	wantError(t, err, 2, ravi.ReasonHandlerFailed)
	handle := r.span(t, "handle conformance-b", "node-b")
	send := r.span(t, "send conformance-b", "node-a")
	wantSpan(t, handle, trace.SpanKindServer, send.SpanContext(), nil)
	wantFailed(t, handle, "UNKNOWN", ravi.ReasonHandlerFailed)
	wantFailed(t, send, "UNKNOWN", ravi.ReasonHandlerFailed)
	for _, e := range handle.Events() {
		if e.Name == "exception" && !slices.ContainsFunc(e.Attributes, func(kv attribute.KeyValue) bool {
			return kv.Key == "exception.message" && strings.Contains(kv.Value.AsString(), "boom")
		}) {
			t.Errorf("exception event %v", e.Attributes)
		}
	}

	// A ravi error without a reason: its code, and HANDLER_FAILED.
	r.rec.Reset()
	_, err = a.Send(ctx, ravi.AgentID{Type: "conformance-a", Key: "x"}, &conformancev1.Fail{Code: 9, Message: "not now"})
	wantError(t, err, 9, ravi.ReasonHandlerFailed)
	wantFailed(t, r.span(t, "handle conformance-a", "node-a"), "FAILED_PRECONDITION", ravi.ReasonHandlerFailed)
	wantFailed(t, r.span(t, "send conformance-a", "node-a"), "FAILED_PRECONDITION", ravi.ReasonHandlerFailed)

	// A check that fails before the handler runs fails the handle span too.
	r.rec.Reset()
	_, err = a.Send(ctx, ravi.AgentID{Type: "conformance-b", Key: "y"}, &conformancev1.Unhandled{})
	wantError(t, err, 12, ravi.ReasonNoHandler)
	wantFailed(t, r.span(t, "handle conformance-b", "node-b"), "UNIMPLEMENTED", ravi.ReasonNoHandler)
}

// Without a tracer provider (the global one is a no-op unless set), nothing
// is recorded, and a given traceparent still travels as it is.
func TestTracingWithoutProvider(t *testing.T) {
	ctx := testContext(t)
	b := conformanceNode(t, "node-b", ravi.Options{})
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"b": b.Addr()}}, agents.ConformanceAgentType("conformance-a"))
	waitFor(t, ctx, a, "a to reach b", hostsType(a, "node-b", "conformance"))
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	echoed, err := ravi.Ask[*conformancev1.Echoed](ctx, a, ravi.AgentID{Type: "conformance-a", Key: "x"},
		&conformancev1.Forward{Target: &meshv1.AgentId{Type: "conformance", Key: "y"}, Text: "hi"}, ravi.WithTraceparent(tp))
	if err != nil || echoed.GetText() != "hi" || echoed.GetMetadata()["traceparent"] != tp {
		t.Fatalf("%v %v", echoed, err)
	}
	// No trace context anywhere: none is made up.
	echoed, err = ravi.Ask[*conformancev1.Echoed](ctx, a, ravi.AgentID{Type: "conformance-a", Key: "x"},
		&conformancev1.Forward{Target: &meshv1.AgentId{Type: "conformance", Key: "y"}, Text: "hi"})
	if err != nil || echoed.GetMetadata()["traceparent"] != "" {
		t.Fatalf("%v %v", echoed, err)
	}
	// A client's span context travels, with its tracestate.
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled})
	ts, _ := trace.ParseTraceState("ravi=1")
	sc = sc.WithTraceState(ts)
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(ctx, sc), carrier)
	c := dial(t, a.Addr())
	echoed, err = ravi.Ask[*conformancev1.Echoed](trace.ContextWithSpanContext(ctx, sc), c, ravi.AgentID{Type: "conformance", Key: "z"}, &conformancev1.Echo{Text: "fwd"})
	if err != nil || echoed.GetMetadata()["traceparent"] != carrier["traceparent"] || echoed.GetMetadata()["tracestate"] != "ravi=1" {
		t.Fatalf("%v %v", echoed, err)
	}
	if !proto.Equal(echoed.GetAgent(), &meshv1.AgentId{Type: "conformance", Key: "z"}) {
		t.Fatalf("%v", echoed)
	}
}
