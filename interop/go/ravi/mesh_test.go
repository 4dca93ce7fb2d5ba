package ravi_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	conformancev1 "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"github.com/ravi-mesh/ravi/interop/go/agents"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

func hostsType(n *ravi.Node, nodeID, agentType string) func() bool {
	return func() bool {
		for _, p := range n.Peers() {
			if p.NodeID == nodeID && slices.Contains(p.AgentTypes, agentType) {
				return true
			}
		}
		return false
	}
}

func echoVia(ctx context.Context, c ravi.Sender, to ravi.AgentID, text string) (*conformancev1.Echoed, error) {
	return ravi.Ask[*conformancev1.Echoed](ctx, c, to, &conformancev1.Echo{Text: text})
}

func TestRoutingToAPeer(t *testing.T) {
	ctx := testContext(t)
	b := conformanceNode(t, "node-b", ravi.Options{})
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"b": b.Addr()}})
	if err := a.WaitForAgentType(ctx, "conformance"); err != nil {
		t.Fatal(err)
	}
	c := dial(t, a.Addr())
	reply, err := c.Send(ctx, ravi.AgentID{Type: "conformance", Key: "k"}, &conformancev1.Echo{Text: "hi"}, ravi.WithMetadata(map[string]string{"x": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	echoed := reply.Message.(*conformancev1.Echoed)
	if reply.NodeID != "node-b" || echoed.GetNodeId() != "node-b" || echoed.GetLanguage() != "go" || echoed.GetText() != "hi" ||
		echoed.GetMetadata()["x"] != "1" || echoed.GetSender() != nil || echoed.GetAgent().GetKey() != "k" {
		t.Fatalf("reply %v %v", reply.NodeID, echoed)
	}
	// b learned a from its Describe call, and a's own agents reach b too.
	waitFor(t, ctx, b, "b to learn a", streamingTo(b, "node-a"))
	if got := b.Peers(); len(got) != 1 || !got[0].Learned || got[0].Address != a.Addr() {
		t.Fatalf("b's peers: %+v", got)
	}
	if _, err := c.Send(ctx, ravi.AgentID{Type: "elsewhere", Key: "k"}, &conformancev1.Echo{}); !isCode(err, codes.NotFound) {
		t.Fatalf("unknown type: %v", err)
	}
}

func TestRendezvousPicksOneNodePerAgent(t *testing.T) {
	ctx := testContext(t)
	b := conformanceNode(t, "node-b", ravi.Options{})
	c := conformanceNode(t, "node-c", ravi.Options{})
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"b": b.Addr(), "c": c.Addr()}})
	waitFor(t, ctx, a, "both peers", func() bool {
		return hostsType(a, "node-b", "conformance")() && hostsType(a, "node-c", "conformance")()
	})
	client := dial(t, a.Addr())
	landed := map[string]int{}
	for i := range 24 {
		key := fmt.Sprintf("key-%d", i)
		want := "node-b"
		if ravi.RendezvousScore("node-c", "conformance", key) > ravi.RendezvousScore("node-b", "conformance", key) {
			want = "node-c"
		}
		for range 3 {
			echoed, err := echoVia(ctx, client, ravi.AgentID{Type: "conformance", Key: key}, key)
			if err != nil {
				t.Fatal(err)
			}
			if echoed.GetNodeId() != want {
				t.Fatalf("%s landed on %s, want %s", key, echoed.GetNodeId(), want)
			}
		}
		landed[want]++
	}
	if landed["node-b"] == 0 || landed["node-c"] == 0 {
		t.Fatalf("all keys on one node: %v", landed)
	}
}

func TestRendezvousScoreVector(t *testing.T) {
	// The first 8 bytes of sha256("node-a\x00writer\x00default"), big-endian.
	if got := ravi.RendezvousScore("node-a", "writer", "default"); got != 0x3299650a033e7f1d {
		t.Fatalf("score %x", got)
	}
	for _, k := range []string{"", "k", "conv-1", "ключ"} {
		if got, want := ravi.RendezvousScore("n", "t", k), referenceScore("n", "t", k); got != want {
			t.Fatalf("score(%q) %x, want %x", k, got, want)
		}
	}
}

func TestForwardingThroughAMiddleNode(t *testing.T) {
	ctx := testContext(t)
	c := conformanceNode(t, "node-c", ravi.Options{})
	b := startNode(t, ravi.Options{NodeID: "node-b", Peers: map[string]string{"c": c.Addr()}})
	waitFor(t, ctx, b, "b to reach c", hostsType(b, "node-c", "conformance"))
	client := dial(t, b.Addr())
	svc := client.Service()
	payload := payloadOf(t, &conformancev1.Echo{Text: "via b"})
	send := func(route *meshv1.Route) (*meshv1.SendResponse, error) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return svc.Send(cctx, &meshv1.SendRequest{
			Recipient: &meshv1.AgentId{Type: "conformance", Key: "k"},
			Envelope:  &meshv1.Envelope{MessageId: "m1", Payload: payload},
			Route:     route,
		})
	}
	// A request that already passed through x is forwarded by b to c.
	resp, err := send(&meshv1.Route{HopCount: 1, VisitedNodeIds: []string{"node-x"}})
	if err != nil || resp.GetNodeId() != "node-c" {
		t.Fatalf("forward: %v %v", resp, err)
	}
	// One that passed through c is not sent back there.
	_, err = send(&meshv1.Route{HopCount: 1, VisitedNodeIds: []string{"node-c"}})
	wantStatus(t, err, codes.NotFound, ravi.ReasonAgentTypeNotFound)
	// One that passed through b is a loop.
	_, err = send(&meshv1.Route{HopCount: 2, VisitedNodeIds: []string{"node-x", "node-b"}})
	wantStatus(t, err, codes.FailedPrecondition, ravi.ReasonForwardingLoop)
	// b forwards a request forwarded 7 times (c handles it), not one
	// forwarded 8 times.
	if resp, err = send(&meshv1.Route{HopCount: ravi.HopLimit - 1}); err != nil || resp.GetNodeId() != "node-c" {
		t.Fatalf("7 hops: %v %v", resp, err)
	}
	_, err = send(&meshv1.Route{HopCount: ravi.HopLimit})
	wantStatus(t, err, codes.FailedPrecondition, ravi.ReasonHopLimitExceeded)
	// c's errors come back through b unchanged.
	_, err = client.Send(ctx, ravi.AgentID{Type: "conformance", Key: "k"}, &conformancev1.Fail{Code: int32(codes.AlreadyExists), Message: "dup"})
	if e := wantError(t, err, codes.AlreadyExists, ravi.ReasonHandlerFailed); e.Message != "dup" || e.Metadata["node_id"] != "node-c" {
		t.Fatalf("forwarded error %#v", e)
	}
	_, err = client.Send(ctx, ravi.AgentID{Type: "conformance", Key: "k"}, &conformancev1.Fail{Message: "boom"})
	if e := wantError(t, err, codes.Unknown, ravi.ReasonHandlerFailed); e.Metadata["exception_type"] != "*errors.errorString" {
		t.Fatalf("forwarded error %#v", e)
	}
	_, err = client.Send(ctx, ravi.AgentID{Type: "conformance", Key: "k"}, &conformancev1.Unhandled{})
	wantError(t, err, codes.Unimplemented, ravi.ReasonNoHandler)
	// The remaining deadline travels with the forward.
	start := time.Now()
	_, err = client.Send(ctx, ravi.AgentID{Type: "conformance", Key: "slow"}, &conformancev1.Sleep{Millis: 10000, Tag: "fwd"}, ravi.WithTimeout(200*time.Millisecond))
	wantError(t, err, codes.DeadlineExceeded, "")
	if time.Since(start) > 3*time.Second {
		t.Fatal("the deadline did not travel")
	}
	eventually(t, ctx, "c's handler to be cancelled", func() (bool, error) {
		obs, err := ravi.Ask[*conformancev1.Observed](ctx, client, ravi.AgentID{Type: "conformance", Key: "slow"}, &conformancev1.Report{})
		return err == nil && slices.Contains(obs.GetCancelled(), "fwd"), err
	})
}

func TestNestedSendsCarryChainAndTrace(t *testing.T) {
	ctx := testContext(t)
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	seen := make(chan string, 8)
	// A tracer notes the traceparent it sees and, given "type/key", calls on.
	tracer := func(name string) ravi.AgentType {
		return ravi.AgentType{Name: name, Handlers: []ravi.Handler{
			ravi.Handle(func(ctx context.Context, call *ravi.Call, req *conformancev1.Echo) (*conformancev1.Echoed, error) {
				seen <- call.Agent().String() + " " + call.Traceparent()
				if req.GetText() == "" {
					return &conformancev1.Echoed{Text: "end"}, nil
				}
				next, err := ravi.ParseAgentID(req.GetText())
				if err != nil {
					return nil, err
				}
				return ravi.Ask[*conformancev1.Echoed](ctx, call, next, &conformancev1.Echo{})
			}),
		}}
	}
	b := startNode(t, ravi.Options{NodeID: "node-b"}, agents.ConformanceAgentType("conformance-b"), tracer("tracer-b"))
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"b": b.Addr()}}, agents.ConformanceAgentType("conformance-a"), tracer("tracer-a"))
	waitFor(t, ctx, a, "a to reach b", hostsType(a, "node-b", "conformance-b"))
	waitFor(t, ctx, b, "b to learn a", hostsType(b, "node-a", "conformance-a"))
	client := dial(t, a.Addr())

	// Forward on a -> Echo on b: the nested send names its sender.
	echoed, err := ravi.Ask[*conformancev1.Echoed](ctx, client, ravi.AgentID{Type: "conformance-a", Key: "x"},
		&conformancev1.Forward{Target: &meshv1.AgentId{Type: "conformance-b", Key: "y"}, Text: "nested"})
	if err != nil {
		t.Fatal(err)
	}
	if echoed.GetNodeId() != "node-b" || echoed.GetText() != "nested" || !proto.Equal(echoed.GetSender(), &meshv1.AgentId{Type: "conformance-a", Key: "x"}) {
		t.Fatalf("nested echo %v", echoed)
	}
	// An agent calling itself would deadlock.
	_, err = client.Send(ctx, ravi.AgentID{Type: "conformance-a", Key: "x"}, &conformancev1.Forward{Target: &meshv1.AgentId{Type: "conformance-a", Key: "x"}})
	wantError(t, err, codes.FailedPrecondition, ravi.ReasonReentrantCall)
	// So would conformance-a/x -> tracer-b/t (node b) -> conformance-a/x: the
	// chain travels with the hop and a refuses it; the error comes back.
	_, err = client.Send(ctx, ravi.AgentID{Type: "conformance-a", Key: "x"},
		&conformancev1.Forward{Target: &meshv1.AgentId{Type: "tracer-b", Key: "t"}, Text: "conformance-a/x"})
	wantError(t, err, codes.FailedPrecondition, ravi.ReasonReentrantCall)
	<-seen
	// The traceparent travels: caller -> a (forward) -> tracer-b on b ->
	// tracer-a on a.
	echoed, err = ravi.Ask[*conformancev1.Echoed](ctx, client, ravi.AgentID{Type: "tracer-b", Key: "t"}, &conformancev1.Echo{Text: "tracer-a/u"}, ravi.WithTraceparent(traceparent))
	if err != nil || echoed.GetText() != "end" {
		t.Fatalf("%v %v", echoed, err)
	}
	for _, want := range []string{"tracer-b/t " + traceparent, "tracer-a/u " + traceparent} {
		if got := <-seen; got != want {
			t.Fatalf("seen %q, want %q", got, want)
		}
	}
}

func TestPublishReachesSubscribersOnOtherNodes(t *testing.T) {
	ctx := testContext(t)
	b := startNode(t, ravi.Options{NodeID: "node-b"})
	a := conformanceNode(t, "node-a", ravi.Options{Peers: map[string]string{"b": b.Addr()}})
	waitFor(t, ctx, a, "a's stream to b", streamingTo(a, "node-b"))
	cb := dial(t, b.Addr())
	ca := dial(t, a.Addr())
	// A client subscribed on a must not see b's events: a never pushes them on.
	sub, err := ca.Subscribe(ctx, "watcher", ravi.TopicType(agents.ConformanceTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	topic := ravi.TopicID{Type: agents.ConformanceTopic, Source: "k"}
	resp, err := cb.Publish(ctx, topic, &conformancev1.Echo{Text: "from b"})
	if err != nil || resp.GetStreamDeliveries() != 1 || resp.GetLocalDeliveries() != 0 {
		t.Fatalf("publish on b: %v %v", resp, err)
	}
	// Node scope stays on b.
	resp, err = cb.Publish(ctx, topic, &conformancev1.Echo{Text: "b only"}, ravi.WithScope(meshv1.PublishScope_PUBLISH_SCOPE_NODE))
	if err != nil || resp.GetStreamDeliveries() != 0 {
		t.Fatalf("node scope: %v %v", resp, err)
	}
	report := func() (*conformancev1.Observed, error) {
		return ravi.Ask[*conformancev1.Observed](ctx, ca, ravi.AgentID{Type: "conformance", Key: "k"}, &conformancev1.Report{})
	}
	eventually(t, ctx, "the event to reach a's subscriber", func() (bool, error) {
		obs, err := report()
		return err == nil && slices.Equal(obs.GetEvents(), []string{"from b"}), err
	})
	// Published on a: delivered locally and pushed to the client's stream.
	resp, err = ca.Publish(ctx, topic, &conformancev1.Echo{Text: "from a"}, ravi.WithTraceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
	if err != nil || resp.GetLocalDeliveries() != 1 || resp.GetStreamDeliveries() != 1 {
		t.Fatalf("publish on a: %v %v", resp, err)
	}
	ev, err := sub.Next()
	if err != nil {
		t.Fatal(err)
	}
	msg, err := ravi.DecodePayload(ev.GetEnvelope().GetPayload())
	if err != nil || msg.(*conformancev1.Echo).GetText() != "from a" || ev.GetOriginNodeId() != "node-a" ||
		!strings.HasPrefix(ev.GetEnvelope().GetMetadata()["traceparent"], "00-0af7") {
		t.Fatalf("event %v %v", ev, err)
	}
	obs, err := report()
	if err != nil || !slices.Equal(obs.GetEvents(), []string{"from b", "from a"}) {
		t.Fatalf("report %v %v", obs, err)
	}
	// Other keys saw nothing: agents share nothing across keys.
	other, err := ravi.Ask[*conformancev1.Observed](ctx, ca, ravi.AgentID{Type: "conformance", Key: "other"}, &conformancev1.Report{})
	if err != nil || len(other.GetEvents()) != 0 {
		t.Fatalf("other key %v %v", other, err)
	}
}

func TestAgentPublishSkipsSender(t *testing.T) {
	ctx := testContext(t)
	publisher := ravi.AgentType{
		Name:     "conformance-pub",
		NewState: func(ravi.AgentID) any { return &agents.Conformance{} },
		Handlers: []ravi.Handler{
			ravi.HandleMethod((*agents.Conformance).Echo),
			ravi.HandleMethod((*agents.Conformance).Report),
			ravi.Handle(func(ctx context.Context, call *ravi.Call, req *conformancev1.Forward) (*conformancev1.Echoed, error) {
				return nil, call.Publish(ctx, ravi.TopicID{Type: agents.ConformanceTopic, Source: call.Agent().Key}, &conformancev1.Echo{Text: req.GetText()})
			}),
		},
		Subscriptions: []ravi.Filter{ravi.TopicPrefix("conformance.")},
	}
	n := conformanceNode(t, "pub", ravi.Options{}, publisher)
	c := dial(t, n.Addr())
	sub, err := c.Subscribe(ctx, "watcher", ravi.TopicPrefix("conformance."))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := c.Send(ctx, ravi.AgentID{Type: "conformance-pub", Key: "k"}, &conformancev1.Forward{Text: "hello"}); err != nil {
		t.Fatal(err)
	}
	ev, err := sub.Next()
	if err != nil || ravi.AgentIDOf(ev.GetEnvelope().GetSender()) != (ravi.AgentID{Type: "conformance-pub", Key: "k"}) {
		t.Fatalf("event %v %v", ev, err)
	}
	// The stream event was queued after the local deliveries.
	obs, err := ravi.Ask[*conformancev1.Observed](ctx, c, ravi.AgentID{Type: "conformance", Key: "k"}, &conformancev1.Report{})
	if err != nil || !slices.Equal(obs.GetEvents(), []string{"hello"}) {
		t.Fatalf("subscriber %v %v", obs, err)
	}
	self, err := ravi.Ask[*conformancev1.Observed](ctx, c, ravi.AgentID{Type: "conformance-pub", Key: "k"}, &conformancev1.Report{})
	if err != nil || len(self.GetEvents()) != 0 {
		t.Fatalf("the sender got its own event: %v %v", self, err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestPeerRestartReconnects(t *testing.T) {
	ctx := testContext(t)
	addr := freeAddr(t)
	b1, err := ravi.NewNode(ravi.Options{NodeID: "node-b", ListenAddr: addr, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Register(agents.ConformanceAgentType("")); err != nil {
		t.Fatal(err)
	}
	if err := b1.Start(); err != nil {
		t.Fatal(err)
	}
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"b": addr}})
	waitFor(t, ctx, a, "a's stream to b", streamingTo(a, "node-b"))
	client := dial(t, a.Addr())
	to := ravi.AgentID{Type: "conformance", Key: "k"}
	if _, err := echoVia(ctx, client, to, "before"); err != nil {
		t.Fatal(err)
	}
	inc1 := b1.Info().GetIncarnation()
	if err := b1.Stop(); err != nil {
		t.Fatal(err)
	}
	// b's types leave a's routing table as soon as the stream ends; calls
	// for them fail UNAVAILABLE while b is unreachable (docs/protocol.md,
	// "Edges"), and a type nobody hosted stays NOT_FOUND.
	waitFor(t, ctx, a, "b's types to leave", func() bool { return !hostsType(a, "node-b", "conformance")() })
	_, err = echoVia(ctx, client, to, "while down")
	if e := wantError(t, err, codes.Unavailable, ravi.ReasonPeerUnavailable); e.Metadata["peer_address"] != addr || e.Metadata["node_id"] != "node-a" {
		t.Fatalf("while down: %#v", e)
	}
	_, err = echoVia(ctx, client, ravi.AgentID{Type: "never-hosted", Key: "k"}, "x")
	wantError(t, err, codes.NotFound, ravi.ReasonAgentTypeNotFound)

	b2 := conformanceNode(t, "node-b", ravi.Options{ListenAddr: addr})
	if b2.Info().GetIncarnation() == inc1 {
		t.Fatal("same incarnation after a restart")
	}
	waitFor(t, ctx, a, "a to reconnect", streamingTo(a, "node-b"))
	echoed, err := echoVia(ctx, client, to, "after")
	if err != nil || echoed.GetNodeId() != "node-b" {
		t.Fatalf("after restart: %v %v", echoed, err)
	}
}

func TestUnreachablePeerIsPeerUnavailable(t *testing.T) {
	ctx := testContext(t)
	a := startNode(t, ravi.Options{NodeID: "node-a"})
	dead := freeAddr(t)
	if err := a.InjectPeer("ghost", dead, &meshv1.NodeInfo{NodeId: "ghost", AgentTypes: []*meshv1.AgentTypeInfo{{AgentType: "spooky"}}}); err != nil {
		t.Fatal(err)
	}
	client := dial(t, a.Addr())
	start := time.Now()
	_, err := client.Send(ctx, ravi.AgentID{Type: "spooky", Key: "k"}, &conformancev1.Echo{}, ravi.WithTimeout(3*time.Second))
	e := wantError(t, err, codes.Unavailable, ravi.ReasonPeerUnavailable)
	if e.Metadata["node_id"] != "node-a" || e.Metadata["peer_address"] != dead || time.Since(start) > 3*time.Second {
		t.Fatalf("%#v after %v", e, time.Since(start))
	}
}

func TestThreeNodeMeshLearnsAndRoutes(t *testing.T) {
	ctx := testContext(t)
	// c lists b, b lists a (and a learns b). Routing is not transitive: c
	// only knows the types of its own peers, so a type only a hosts is not
	// found from c; an agent on b can still call a.
	a := startNode(t, ravi.Options{NodeID: "node-a"}, agents.ConformanceAgentType("only-a"))
	b := startNode(t, ravi.Options{NodeID: "node-b", Peers: map[string]string{"a": a.Addr()}}, agents.ConformanceAgentType("only-b"))
	c := startNode(t, ravi.Options{NodeID: "node-c", Peers: map[string]string{"b": b.Addr()}})
	waitFor(t, ctx, c, "c to reach b", hostsType(c, "node-b", "only-b"))
	waitFor(t, ctx, a, "a to learn b", streamingTo(a, "node-b"))
	waitFor(t, ctx, b, "b to reach a", hostsType(b, "node-a", "only-a"))
	cc := dial(t, c.Addr())
	if echoed, err := echoVia(ctx, cc, ravi.AgentID{Type: "only-b", Key: "k"}, "x"); err != nil || echoed.GetNodeId() != "node-b" {
		t.Fatalf("%v %v", echoed, err)
	}
	_, err := echoVia(ctx, cc, ravi.AgentID{Type: "only-a", Key: "k"}, "x")
	wantError(t, err, codes.NotFound, ravi.ReasonAgentTypeNotFound)
	// An agent on b forwards to a: c -> b (agent) -> a.
	echoed, err := ravi.Ask[*conformancev1.Echoed](ctx, cc, ravi.AgentID{Type: "only-b", Key: "k"},
		&conformancev1.Forward{Target: &meshv1.AgentId{Type: "only-a", Key: "z"}, Text: "two hops"})
	if err != nil || echoed.GetNodeId() != "node-a" || echoed.GetSender().GetType() != "only-b" {
		t.Fatalf("%v %v", echoed, err)
	}
}

func TestRegistrationChangesReachPeers(t *testing.T) {
	ctx := testContext(t)
	b := startNode(t, ravi.Options{NodeID: "node-b"})
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"b": b.Addr()}})
	waitFor(t, ctx, a, "a's stream to b", streamingTo(a, "node-b"))
	client := dial(t, b.Addr())
	sub, err := client.Subscribe(ctx, "watcher")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	rev := sub.Node.GetRevision()

	// A type registered on b later reaches a through b's NodeInfo updates.
	if err := b.Register(agents.ConformanceAgentType("late")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, a, "a to see b's new type", hostsType(a, "node-b", "late"))
	if echoed, err := echoVia(ctx, dial(t, a.Addr()), ravi.AgentID{Type: "late", Key: "k"}, "x"); err != nil || echoed.GetNodeId() != "node-b" {
		t.Fatalf("%v %v", echoed, err)
	}
	// The stream without filters carried the new description too.
	msg, err := sub.Recv()
	if err != nil || msg.GetNode().GetRevision() <= rev || len(msg.GetNode().GetAgentTypes()) != 1 {
		t.Fatalf("update %v %v", msg, err)
	}

	// A subscription added on a later reopens a's stream to b with it.
	if err := a.Register(agents.ConformanceAgentType("listener")); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, "b's event to reach a's new subscriber", func() (bool, error) {
		if _, err := b.Publish(ctx, ravi.TopicID{Type: agents.ConformanceTopic, Source: "k"}, &conformancev1.Echo{Text: "e"}); err != nil {
			return false, err
		}
		obs, err := ravi.Ask[*conformancev1.Observed](ctx, a, ravi.AgentID{Type: "listener", Key: "k"}, &conformancev1.Report{})
		return err == nil && len(obs.GetEvents()) > 0, err
	})
}
