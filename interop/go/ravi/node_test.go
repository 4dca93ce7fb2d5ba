package ravi_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	conformancev1 "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	examplesv1 "github.com/ravi-mesh/ravi/gen/go/ravi/examples/v1"
	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// sequence records the texts of the Echo messages one agent handled.
type sequence struct{ texts []string }

func (s *sequence) echo(_ context.Context, call *ravi.Call, req *conformancev1.Echo) (*conformancev1.Observed, error) {
	s.texts = append(s.texts, req.GetText())
	return &conformancev1.Observed{Events: append([]string(nil), s.texts...)}, nil
}

func (s *sequence) report(context.Context, *ravi.Call, *conformancev1.Report) (*conformancev1.Observed, error) {
	return &conformancev1.Observed{Events: append([]string(nil), s.texts...)}, nil
}

func sequenceType() ravi.AgentType {
	return ravi.AgentType{
		Name:          "sequence",
		NewState:      func(ravi.AgentID) any { return &sequence{} },
		Handlers:      []ravi.Handler{ravi.HandleMethod((*sequence).echo), ravi.HandleMethod((*sequence).report)},
		Subscriptions: []ravi.Filter{ravi.TopicPrefix("seq.")},
	}
}

func TestDispatchKeepsOrderPerAgent(t *testing.T) {
	ctx := testContext(t)
	n := startNode(t, ravi.Options{NodeID: "order"}, sequenceType())
	// Publications queue without waiting: they show the mailbox's order.
	var want []string
	for i := range 200 {
		text := fmt.Sprint(i)
		want = append(want, text)
		resp, err := n.Publish(ctx, ravi.TopicID{Type: "seq.numbers", Source: "k"}, &conformancev1.Echo{Text: text})
		if err != nil || resp.GetLocalDeliveries() != 1 {
			t.Fatalf("publish: %v %v", resp, err)
		}
	}
	// A send queues behind them, so its reply shows all of them.
	got, err := ravi.Ask[*conformancev1.Observed](ctx, n, ravi.AgentID{Type: "sequence", Key: "k"}, &conformancev1.Report{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got.GetEvents(), ",") != strings.Join(want, ",") {
		t.Fatalf("order: got %v", got.GetEvents())
	}
	// Each key has its own state.
	other, err := ravi.Ask[*conformancev1.Observed](ctx, n, ravi.AgentID{Type: "sequence", Key: "other"}, &conformancev1.Echo{Text: "x"})
	if err != nil || len(other.GetEvents()) != 1 {
		t.Fatalf("other key: %v %v", other, err)
	}
}

// gate is an agent type whose handler blocks until released, counting how
// many of its handlers run at once per key.
type gate struct {
	mu      sync.Mutex
	active  map[string]int
	max     map[string]int
	entered chan string
	release chan struct{}
}

func newGate() *gate {
	return &gate{active: map[string]int{}, max: map[string]int{}, entered: make(chan string, 100), release: make(chan struct{})}
}

func (g *gate) agentType(name string, reentrant bool) ravi.AgentType {
	return ravi.AgentType{Name: name, Reentrant: reentrant, Handlers: []ravi.Handler{
		ravi.Handle(func(ctx context.Context, call *ravi.Call, req *conformancev1.Sleep) (*conformancev1.Slept, error) {
			key := call.Agent().Key
			g.mu.Lock()
			g.active[key]++
			g.max[key] = max(g.max[key], g.active[key])
			g.mu.Unlock()
			defer func() {
				g.mu.Lock()
				g.active[key]--
				g.mu.Unlock()
			}()
			g.entered <- key + "/" + req.GetTag()
			select {
			case <-g.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return &conformancev1.Slept{Tag: req.GetTag()}, nil
		}),
	}}
}

func TestDistinctAgentsRunConcurrentlyOneAgentSerially(t *testing.T) {
	ctx := testContext(t)
	g := newGate()
	n := startNode(t, ravi.Options{NodeID: "conc"}, g.agentType("gate", false), g.agentType("open", true))
	var wg sync.WaitGroup
	send := func(typ, key, tag string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := n.Send(ctx, ravi.AgentID{Type: typ, Key: key}, &conformancev1.Sleep{Tag: tag}); err != nil {
				t.Error(err)
			}
		}()
	}
	send("gate", "a", "1")
	send("gate", "b", "1")
	// Both distinct agents are inside their handlers at the same time.
	seen := map[string]bool{}
	for len(seen) < 2 {
		select {
		case k := <-g.entered:
			seen[k] = true
		case <-ctx.Done():
			t.Fatal("distinct agents did not run concurrently")
		}
	}
	send("gate", "a", "2")
	send("open", "r", "1")
	send("open", "r", "2")
	// The reentrant agent runs both of its messages at once.
	for len(seen) < 4 {
		select {
		case k := <-g.entered:
			seen[k] = true
		case <-ctx.Done():
			t.Fatalf("reentrant agent did not run concurrently: %v", seen)
		}
	}
	close(g.release)
	wg.Wait()
	if g.max["a"] != 1 || g.max["r"] != 2 {
		t.Fatalf("max concurrency per key: %v", g.max)
	}
	if !seen["a/1"] || !seen["b/1"] || !seen["r/1"] || !seen["r/2"] {
		t.Fatalf("entered: %v", seen)
	}
}

func TestDeadlineAndCancelStopTheHandler(t *testing.T) {
	ctx := testContext(t)
	done := make(chan error, 2)
	started := make(chan struct{}, 2)
	waiter := ravi.AgentType{Name: "waiter", Handlers: []ravi.Handler{
		ravi.Handle(func(hctx context.Context, _ *ravi.Call, req *conformancev1.Sleep) (*conformancev1.Slept, error) {
			started <- struct{}{}
			select {
			case <-hctx.Done():
				done <- hctx.Err()
				return nil, hctx.Err()
			case <-time.After(time.Duration(req.GetMillis()) * time.Millisecond):
				return &conformancev1.Slept{Tag: req.GetTag()}, nil
			}
		}),
	}}
	n := conformanceNode(t, "deadlines", ravi.Options{}, waiter)
	c := dial(t, n.Addr())

	start := time.Now()
	_, err := c.Send(ctx, ravi.AgentID{Type: "waiter", Key: "k"}, &conformancev1.Sleep{Millis: 10000}, ravi.WithTimeout(100*time.Millisecond))
	wantError(t, err, codes.DeadlineExceeded, "")
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("deadline took %v", elapsed)
	}
	select {
	case err := <-done:
		// The server sees the deadline pass, or the client's reset for it
		// first: either way the handler's ctx is done.
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ctx: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the handler was not cancelled at the deadline")
	}

	// The caller going away cancels the handler too.
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Send(cctx, ravi.AgentID{Type: "waiter", Key: "k"}, &conformancev1.Sleep{Millis: 10000})
		errc <- err
	}()
	<-started // the first call's
	<-started
	cancel()
	wantError(t, <-errc, codes.Canceled, "")
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ctx: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the handler was not cancelled with its caller")
	}

	// The conformance agent remembers the tags of its cancelled sleeps.
	conf := ravi.AgentID{Type: "conformance", Key: "sleepy"}
	_, err = c.Send(ctx, conf, &conformancev1.Sleep{Millis: 10000, Tag: "late"}, ravi.WithTimeout(50*time.Millisecond))
	wantError(t, err, codes.DeadlineExceeded, "")
	slept, err := ravi.Ask[*conformancev1.Slept](ctx, c, conf, &conformancev1.Sleep{Millis: 1, Tag: "quick"})
	if err != nil || slept.GetTag() != "quick" {
		t.Fatalf("sleep: %v %v", slept, err)
	}
	obs, err := ravi.Ask[*conformancev1.Observed](ctx, c, conf, &conformancev1.Report{})
	if err != nil || strings.Join(obs.GetCancelled(), ",") != "late" {
		t.Fatalf("report: %v %v", obs, err)
	}
}

func payloadOf(t *testing.T, m proto.Message) *meshv1.Payload {
	t.Helper()
	p, err := ravi.EncodePayload(m)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSendErrorsFollowTheOrderedChecks(t *testing.T) {
	ctx := testContext(t)
	failing := ravi.AgentType{Name: "failing", Handlers: []ravi.Handler{
		ravi.Handle(func(_ context.Context, _ *ravi.Call, req *conformancev1.Fail) (*conformancev1.Echoed, error) {
			switch req.GetMessage() {
			case "panic":
				panic("oh no")
			case "reason":
				return nil, &ravi.Error{Code: codes.FailedPrecondition, Reason: "MY_REASON", Message: "custom", Metadata: map[string]string{"k": "v"}}
			case "wrapped":
				return nil, fmt.Errorf("wrapped: %w", &ravi.Error{Code: codes.NotFound, Message: "inner"})
			}
			return nil, nil
		}),
	}}
	reentrant := ravi.AgentType{Name: "reentrant", Reentrant: true, Handlers: []ravi.Handler{
		ravi.Handle(func(_ context.Context, call *ravi.Call, req *conformancev1.Echo) (*conformancev1.Echoed, error) {
			return &conformancev1.Echoed{Text: req.GetText()}, nil
		}),
	}}
	n := conformanceNode(t, "checks", ravi.Options{}, failing, reentrant)
	c := dial(t, n.Addr())
	svc := c.Service()
	conf := &meshv1.AgentId{Type: "conformance", Key: "k"}
	echo := payloadOf(t, &conformancev1.Echo{Text: "hi"})
	send := func(req *meshv1.SendRequest) error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := svc.Send(cctx, req)
		return err
	}
	env := func(p *meshv1.Payload, chain ...*meshv1.AgentId) *meshv1.Envelope {
		return &meshv1.Envelope{MessageId: "m", Payload: p, CallChain: chain}
	}
	garbage := &meshv1.Payload{Type: "ravi.conformance.v1.Echo", ContentType: ravi.ContentTypeProtobuf, Data: []byte{0xff, 0xff, 0xff}}
	cases := []struct {
		name   string
		req    *meshv1.SendRequest
		code   codes.Code
		reason string
	}{
		{"no recipient", &meshv1.SendRequest{Envelope: env(echo)}, codes.InvalidArgument, ravi.ReasonBadID},
		{"empty key", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "conformance"}, Envelope: env(echo)}, codes.InvalidArgument, ravi.ReasonBadID},
		{"malformed type", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "no spaces", Key: "k"}, Envelope: env(echo)}, codes.InvalidArgument, ravi.ReasonBadID},
		{"control char key", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "conformance", Key: "a\nb"}, Envelope: env(echo)}, codes.InvalidArgument, ravi.ReasonBadID},
		{"bad id before not found", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "nowhere"}, Envelope: env(nil)}, codes.InvalidArgument, ravi.ReasonBadID},
		{"type not hosted", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "nowhere", Key: "k"}, Envelope: env(echo)}, codes.NotFound, ravi.ReasonAgentTypeNotFound},
		{"not found before bad payload", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "nowhere", Key: "k"}, Envelope: env(garbage)}, codes.NotFound, ravi.ReasonAgentTypeNotFound},
		{"no envelope", &meshv1.SendRequest{Recipient: conf}, codes.InvalidArgument, ravi.ReasonBadPayload},
		{"no payload", &meshv1.SendRequest{Recipient: conf, Envelope: env(nil)}, codes.InvalidArgument, ravi.ReasonBadPayload},
		{"unknown type", &meshv1.SendRequest{Recipient: conf, Envelope: env(&meshv1.Payload{Type: "demo.Ping", ContentType: ravi.ContentTypeJSON, Data: []byte(`{}`)})}, codes.InvalidArgument, ravi.ReasonBadPayload},
		{"bad content type", &meshv1.SendRequest{Recipient: conf, Envelope: env(&meshv1.Payload{Type: echo.Type, ContentType: "text/plain", Data: echo.Data})}, codes.InvalidArgument, ravi.ReasonBadPayload},
		{"undecodable protobuf", &meshv1.SendRequest{Recipient: conf, Envelope: env(garbage)}, codes.InvalidArgument, ravi.ReasonBadPayload},
		{"undecodable json", &meshv1.SendRequest{Recipient: conf, Envelope: env(&meshv1.Payload{Type: echo.Type, ContentType: ravi.ContentTypeJSON, Data: []byte(`{"text": 3`)})}, codes.InvalidArgument, ravi.ReasonBadPayload},
		{"bad payload before reentrant", &meshv1.SendRequest{Recipient: conf, Envelope: env(garbage, conf)}, codes.InvalidArgument, ravi.ReasonBadPayload},
		{"reentrant call", &meshv1.SendRequest{Recipient: conf, Envelope: env(echo, &meshv1.AgentId{Type: "x", Key: "y"}, conf)}, codes.FailedPrecondition, ravi.ReasonReentrantCall},
		{"reentrant before no handler", &meshv1.SendRequest{Recipient: conf, Envelope: env(payloadOf(t, &conformancev1.Unhandled{}), conf)}, codes.FailedPrecondition, ravi.ReasonReentrantCall},
		{"no handler", &meshv1.SendRequest{Recipient: conf, Envelope: env(payloadOf(t, &conformancev1.Unhandled{}))}, codes.Unimplemented, ravi.ReasonNoHandler},
		{"ordinary error", &meshv1.SendRequest{Recipient: conf, Envelope: env(payloadOf(t, &conformancev1.Fail{Message: "boom"}))}, codes.Unknown, ravi.ReasonHandlerFailed},
		{"ravi error code", &meshv1.SendRequest{Recipient: conf, Envelope: env(payloadOf(t, &conformancev1.Fail{Code: int32(codes.PermissionDenied), Message: "no"}))}, codes.PermissionDenied, ""},
		{"ravi error with reason", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "failing", Key: "k"}, Envelope: env(payloadOf(t, &conformancev1.Fail{Message: "reason"}))}, codes.FailedPrecondition, "MY_REASON"},
		{"panic", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "failing", Key: "k"}, Envelope: env(payloadOf(t, &conformancev1.Fail{Message: "panic"}))}, codes.Unknown, ravi.ReasonHandlerFailed},
		{"forwarding loop", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "nowhere", Key: "k"}, Envelope: env(echo), Route: &meshv1.Route{HopCount: 1, VisitedNodeIds: []string{"checks"}}}, codes.FailedPrecondition, ravi.ReasonForwardingLoop},
		{"loop before hop limit", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "nowhere", Key: "k"}, Envelope: env(echo), Route: &meshv1.Route{HopCount: ravi.HopLimit, VisitedNodeIds: []string{"checks"}}}, codes.FailedPrecondition, ravi.ReasonForwardingLoop},
		{"hop limit", &meshv1.SendRequest{Recipient: &meshv1.AgentId{Type: "nowhere", Key: "k"}, Envelope: env(echo), Route: &meshv1.Route{HopCount: ravi.HopLimit}}, codes.FailedPrecondition, ravi.ReasonHopLimitExceeded},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantStatus(t, send(tc.req), tc.code, tc.reason)
		})
	}

	// The metadata of handler failures.
	_, err := c.Send(ctx, ravi.AgentIDOf(conf), &conformancev1.Fail{Message: "boom"})
	e := wantError(t, err, codes.Unknown, ravi.ReasonHandlerFailed)
	if e.Metadata["exception_type"] != "*errors.errorString" || e.Metadata["exception_message"] != "boom" {
		t.Fatalf("metadata %v", e.Metadata)
	}
	_, err = c.Send(ctx, ravi.AgentID{Type: "failing", Key: "k"}, &conformancev1.Fail{Message: "panic"})
	e = wantError(t, err, codes.Unknown, ravi.ReasonHandlerFailed)
	if e.Metadata["exception_type"] != "panic" || e.Metadata["exception_message"] != "oh no" {
		t.Fatalf("metadata %v", e.Metadata)
	}
	_, err = c.Send(ctx, ravi.AgentID{Type: "failing", Key: "k"}, &conformancev1.Fail{Message: "reason"})
	if e = wantError(t, err, codes.FailedPrecondition, "MY_REASON"); e.Metadata["k"] != "v" || e.Message != "custom" {
		t.Fatalf("error %#v", e)
	}
	_, err = c.Send(ctx, ravi.AgentID{Type: "failing", Key: "k"}, &conformancev1.Fail{Message: "wrapped"})
	wantError(t, err, codes.NotFound, "")
	// Route checks apply to forwarding: a hosted type is delivered whatever
	// the route says.
	if err := send(&meshv1.SendRequest{Recipient: conf, Envelope: env(echo), Route: &meshv1.Route{HopCount: ravi.HopLimit, VisitedNodeIds: []string{"checks"}}}); err != nil {
		t.Fatalf("hosted type with a route: %v", err)
	}
	// A handler returning nothing returns no result.
	reply, err := c.Send(ctx, ravi.AgentID{Type: "failing", Key: "k"}, &conformancev1.Fail{Message: "fine"})
	if err != nil || reply.Message != nil || reply.Payload != nil || reply.NodeID != "checks" {
		t.Fatalf("empty reply: %+v %v", reply, err)
	}
	// A reentrant agent accepts a call whose chain holds it.
	r := &meshv1.AgentId{Type: "reentrant", Key: "k"}
	if err := send(&meshv1.SendRequest{Recipient: r, Envelope: env(echo, r)}); err != nil {
		t.Fatal(err)
	}
	// Protobuf JSON payloads decode too.
	jsonEcho, _ := ravi.EncodePayloadJSON(&conformancev1.Echo{Text: "json"})
	resp, err := c.SendPayload(ctx, ravi.AgentIDOf(conf), jsonEcho)
	if err != nil {
		t.Fatal(err)
	}
	echoed := &conformancev1.Echoed{}
	if err := proto.Unmarshal(resp.GetResult().GetData(), echoed); err != nil || echoed.GetText() != "json" || resp.GetResult().GetContentType() != ravi.ContentTypeProtobuf {
		t.Fatalf("json echo: %v %v", resp, err)
	}
	// Deadline and cancellation carry no ravi ErrorInfo.
	_, err = svc.Send(func() context.Context {
		c, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}(),
		&meshv1.SendRequest{Recipient: conf, Envelope: env(payloadOf(t, &conformancev1.Sleep{Millis: 5000}))})
	wantStatus(t, err, codes.DeadlineExceeded, "")
}

func TestMailboxFullAndMessageSize(t *testing.T) {
	ctx := testContext(t)
	g := newGate()
	n := startNode(t, ravi.Options{NodeID: "limits", MailboxCapacity: 1, MaxMessageBytes: 4096}, g.agentType("gate", false))
	c := dial(t, n.Addr())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, ravi.AgentID{Type: "gate", Key: "a"}, &conformancev1.Sleep{Tag: "1"})
		errc <- err
	}()
	<-g.entered
	_, err := c.Send(ctx, ravi.AgentID{Type: "gate", Key: "a"}, &conformancev1.Sleep{Tag: "2"})
	wantError(t, err, codes.ResourceExhausted, ravi.ReasonMailboxFull)
	close(g.release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	_, err = c.Send(ctx, ravi.AgentID{Type: "gate", Key: "a"}, &conformancev1.Sleep{Tag: strings.Repeat("x", 8000)})
	wantError(t, err, codes.ResourceExhausted, "")
}

func TestBearerToken(t *testing.T) {
	ctx := testContext(t)
	for _, exempt := range []bool{false, true} {
		n := conformanceNode(t, fmt.Sprintf("auth-%v", exempt), ravi.Options{Token: "s3cret", HealthWithoutAuth: exempt})
		to := ravi.AgentID{Type: "conformance", Key: "k"}
		for _, opts := range [][]ravi.ClientOption{nil, {ravi.WithToken("wrong")}} {
			c := dial(t, n.Addr(), opts...)
			_, err := c.Send(ctx, to, &conformancev1.Echo{})
			wantError(t, err, codes.Unauthenticated, "")
			_, err = c.Describe(ctx)
			wantError(t, err, codes.Unauthenticated, "")
			_, err = c.Subscribe(ctx, "x", ravi.TopicType("t"))
			wantError(t, err, codes.Unauthenticated, "")
			_, err = healthCheck(ctx, c, "")
			if exempt != (err == nil) {
				t.Fatalf("health without token (exempt=%v): %v", exempt, err)
			}
		}
		c := dial(t, n.Addr(), ravi.WithToken("s3cret"))
		if _, err := c.Send(ctx, to, &conformancev1.Echo{}); err != nil {
			t.Fatal(err)
		}
		if _, err := healthCheck(ctx, c, ""); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReviewerStyleHandlerThroughNodeSend(t *testing.T) {
	// Node.Send from outside any agent: no sender, the reply decoded.
	ctx := testContext(t)
	var calls atomic.Int32
	at := ravi.AgentType{Name: "upper", Handlers: []ravi.Handler{
		ravi.Handle(func(_ context.Context, call *ravi.Call, req *examplesv1.FormatRequest) (*examplesv1.FormattedText, error) {
			calls.Add(1)
			if _, ok := call.Sender(); ok {
				return nil, errors.New("unexpected sender")
			}
			return &examplesv1.FormattedText{Text: strings.ToUpper(req.GetText()), Formatter: call.Agent().String() + " (go)"}, nil
		}),
	}}
	n := startNode(t, ravi.Options{}, at)
	got, err := ravi.Ask[*examplesv1.FormattedText](ctx, n, ravi.AgentID{Type: "upper", Key: "k"}, &examplesv1.FormatRequest{Text: "abc"}, ravi.WithJSON())
	if err != nil || got.GetText() != "ABC" || got.GetFormatter() != "upper/k (go)" || calls.Load() != 1 {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := ravi.Ask[*examplesv1.Draft](ctx, n, ravi.AgentID{Type: "upper", Key: "k"}, &examplesv1.FormatRequest{}); !isCode(err, codes.Internal) {
		t.Fatalf("wrong reply type: %v", err)
	}
	if !strings.HasPrefix(n.ID(), "go-") || n.Info().GetLanguage() != "go" || n.Info().GetContractVersion() != ravi.ContractVersion {
		t.Fatalf("info %v", n.Info())
	}
}
