package ravi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	conformancev1 "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"github.com/ravi-mesh/ravi/interop/go/agents"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

func report(ctx context.Context, s ravi.Sender, id ravi.AgentID) (*conformancev1.Observed, error) {
	return ravi.Ask[*conformancev1.Observed](ctx, s, id, &conformancev1.Report{})
}

func TestSendWithTopicIsAPublication(t *testing.T) {
	ctx := testContext(t)
	b := conformanceNode(t, "node-b", ravi.Options{}, agents.ConformanceAgentType("remote"))
	// a subscribes "remote", which only b hosts: a hands matching messages
	// to b as a Send with the topic set.
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"b": b.Addr()}})
	if _, err := a.Subscribe("remote", ravi.TopicType("fan")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, a, "a to reach b", hostsType(a, "node-b", "remote"))

	c := dial(t, b.Addr())
	resp, err := c.Service().Send(ctx, &meshv1.SendRequest{
		Recipient: &meshv1.AgentId{Type: "conformance", Key: "k"},
		Envelope:  &meshv1.Envelope{MessageId: "t1", Payload: payloadOf(t, &conformancev1.Echo{Text: "handed over"})},
		Topic:     &meshv1.TopicId{Type: "anything", Source: "k"},
	})
	if err != nil || resp.GetResult() != nil || resp.GetNodeId() != "node-b" {
		t.Fatalf("topic send: %v %v", resp, err)
	}
	// The handler saw a topic, so it recorded an event (queued before Report).
	if obs, err := report(ctx, c, ravi.AgentID{Type: "conformance", Key: "k"}); err != nil || !slices.Equal(obs.GetEvents(), []string{"handed over"}) {
		t.Fatalf("report %v %v", obs, err)
	}
	_, err = c.Service().Send(ctx, &meshv1.SendRequest{
		Recipient: &meshv1.AgentId{Type: "conformance", Key: "k"},
		Envelope:  &meshv1.Envelope{Payload: payloadOf(t, &conformancev1.Echo{})},
		Topic:     &meshv1.TopicId{Type: "bad topic", Source: "k"},
	})
	wantStatus(t, err, codes.InvalidArgument, ravi.ReasonBadID)

	presp, err := a.Publish(ctx, ravi.TopicID{Type: "fan", Source: "k2"}, &conformancev1.Echo{Text: "fanned"})
	if err != nil || presp.GetLocalDeliveries() != 0 {
		t.Fatalf("publish %v %v", presp, err)
	}
	eventually(t, ctx, "the publication to reach b's remote/k2", func() (bool, error) {
		obs, err := report(ctx, c, ravi.AgentID{Type: "remote", Key: "k2"})
		return err == nil && slices.Equal(obs.GetEvents(), []string{"fanned"}), err
	})
}

func TestMultiplexCarriesSends(t *testing.T) {
	ctx := testContext(t)
	n := conformanceNode(t, "connect", ravi.Options{Token: "tok"})
	c := dial(t, n.Addr(), ravi.WithToken("tok"))
	stream, err := c.Service().Multiplex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conf := &meshv1.AgentId{Type: "conformance", Key: "k"}
	sendFrame := func(id uint64, m proto.Message, timeoutMillis uint32) {
		t.Helper()
		err := stream.Send(&meshv1.MultiplexRequest{Calls: []*meshv1.CallFrame{{CallId: id, TimeoutMillis: timeoutMillis, Kind: &meshv1.CallFrame_Send{Send: &meshv1.SendRequest{
			Recipient: conf, Envelope: &meshv1.Envelope{MessageId: "m", Payload: payloadOf(t, m)},
		}}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	// A long sleep on its own key, cancelled by a cancel frame.
	sleeper := &meshv1.AgentId{Type: "conformance", Key: "sleeper"}
	if err := stream.Send(&meshv1.MultiplexRequest{Calls: []*meshv1.CallFrame{{CallId: 1, Kind: &meshv1.CallFrame_Send{Send: &meshv1.SendRequest{
		Recipient: sleeper, Envelope: &meshv1.Envelope{Payload: payloadOf(t, &conformancev1.Sleep{Millis: 10000, Tag: "cancelled"})},
	}}}}}); err != nil {
		t.Fatal(err)
	}
	sendFrame(2, &conformancev1.Echo{Text: "one"}, 0)
	sendFrame(3, &conformancev1.Fail{Message: "boom"}, 0)
	sendFrame(4, &conformancev1.Sleep{Millis: 10000, Tag: "timed out"}, 50)
	sendFrame(5, &conformancev1.Unhandled{}, 0)
	got := map[uint64]*meshv1.CallOutcome{}
	for len(got) < 4 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, outcome := range resp.GetCalls() {
			got[outcome.GetCallId()] = outcome
		}
	}
	if err := stream.Send(&meshv1.MultiplexRequest{Calls: []*meshv1.CallFrame{{CallId: 1, Kind: &meshv1.CallFrame_Cancel{Cancel: &meshv1.CancelCall{}}}}}); err != nil {
		t.Fatal(err)
	}
	echoed := &conformancev1.Echoed{}
	if err := proto.Unmarshal(got[2].GetResult().GetResult().GetData(), echoed); err != nil || echoed.GetText() != "one" || got[2].GetResult().GetNodeId() != "connect" {
		t.Fatalf("echo %v", got[2])
	}
	if f := got[3].GetFailure(); f.GetCode() != int32(codes.Unknown) || f.GetReason() != ravi.ReasonHandlerFailed || f.GetMetadata()["exception_message"] != "boom" {
		t.Fatalf("fail %v", got[3])
	}
	if f := got[4].GetFailure(); f.GetCode() != int32(codes.DeadlineExceeded) {
		t.Fatalf("timeout %v", got[4])
	}
	if f := got[5].GetFailure(); f.GetCode() != int32(codes.Unimplemented) || f.GetReason() != ravi.ReasonNoHandler {
		t.Fatalf("unhandled %v", got[5])
	}
	// The cancelled call gets no answer; the stream ends once the caller is
	// done.
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after close: %v %v", resp, err)
	}
	eventually(t, ctx, "both sleeps to be cancelled", func() (bool, error) {
		a, err := report(ctx, c, ravi.AgentIDOf(sleeper))
		if err != nil {
			return false, err
		}
		b, err := report(ctx, c, ravi.AgentIDOf(conf))
		return err == nil && slices.Equal(a.GetCancelled(), []string{"cancelled"}) && slices.Equal(b.GetCancelled(), []string{"timed out"}), err
	})
}

// counter is agent state that saves and loads itself.
type counter struct {
	Count int    `json:"count"`
	Name  string `json:"name"`
}

func (c *counter) SaveState() (any, error)     { return c, nil }
func (c *counter) LoadState(data []byte) error { return json.Unmarshal(data, c) }

func (c *counter) add(_ context.Context, call *ravi.Call, _ *conformancev1.Echo) (*conformancev1.Echoed, error) {
	c.Count++
	return &conformancev1.Echoed{Text: strings.Repeat("+", c.Count) + c.Name}, nil
}

func TestStateAndPromises(t *testing.T) {
	ctx := testContext(t)
	counters := ravi.AgentType{
		Name:     "counter",
		NewState: func(ravi.AgentID) any { return &counter{} },
		Handlers: []ravi.Handler{ravi.HandleMethod((*counter).add)},
	}
	waiter := ravi.AgentType{Name: "waiter", Reentrant: true, Handlers: []ravi.Handler{
		ravi.Handle(func(ctx context.Context, call *ravi.Call, req *conformancev1.Echo) (*conformancev1.Echoed, error) {
			v, err := call.WaitFor(ctx, req.GetText())
			if err != nil {
				return nil, err
			}
			b, _ := json.Marshal(v)
			return &conformancev1.Echoed{Text: string(b)}, nil
		}),
	}}
	b := startNode(t, ravi.Options{NodeID: "node-b"}, waiter)
	n := conformanceNode(t, "node-a", ravi.Options{Peers: map[string]string{"b": b.Addr()}}, counters)
	waitFor(t, ctx, n, "a to reach b", hostsType(n, "node-b", "waiter"))
	c := dial(t, n.Addr())
	svc := c.Service()
	for range 2 {
		if _, err := c.Send(ctx, ravi.AgentID{Type: "counter", Key: "x"}, &conformancev1.Echo{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Send(ctx, ravi.AgentID{Type: "conformance", Key: "y"}, &conformancev1.Echo{}); err != nil {
		t.Fatal(err)
	}
	all, err := svc.SaveState(ctx, &meshv1.SaveStateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(all.GetStates()["counter/x"].GetData()); got != `{"count":2,"name":""}` || string(all.GetStates()["conformance/y"].GetData()) != "{}" ||
		all.GetStates()["counter/x"].GetType() != ravi.StateTypeName || all.GetStates()["counter/x"].GetContentType() != ravi.ContentTypeJSON {
		t.Fatalf("save all: %v", all)
	}
	_, err = svc.LoadState(ctx, &meshv1.LoadStateRequest{States: map[string]*meshv1.Payload{
		"counter/z": {Type: ravi.StateTypeName, ContentType: ravi.ContentTypeJSON, Data: []byte(`{"count": 10, "name": "z"}`)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	echoed, err := ravi.Ask[*conformancev1.Echoed](ctx, c, ravi.AgentID{Type: "counter", Key: "z"}, &conformancev1.Echo{})
	if err != nil || echoed.GetText() != strings.Repeat("+", 11)+"z" {
		t.Fatalf("after load: %v %v", echoed, err)
	}
	one, err := svc.SaveState(ctx, &meshv1.SaveStateRequest{Agent: &meshv1.AgentId{Type: "counter", Key: "z"}})
	if err != nil || len(one.GetStates()) != 1 || string(one.GetStates()["counter/z"].GetData()) != `{"count":11,"name":"z"}` {
		t.Fatalf("save one: %v %v", one, err)
	}
	_, err = svc.SaveState(ctx, &meshv1.SaveStateRequest{Agent: &meshv1.AgentId{Type: "waiter", Key: "z"}})
	wantStatus(t, err, codes.NotFound, ravi.ReasonAgentTypeNotFound)
	_, err = svc.LoadState(ctx, &meshv1.LoadStateRequest{States: map[string]*meshv1.Payload{"counter/z": {Type: ravi.StateTypeName, ContentType: ravi.ContentTypeJSON, Data: []byte(`[1]`)}}})
	wantStatus(t, err, codes.InvalidArgument, ravi.ReasonBadPayload)
	_, err = svc.LoadState(ctx, &meshv1.LoadStateRequest{States: map[string]*meshv1.Payload{"no-slash": {}}})
	wantStatus(t, err, codes.InvalidArgument, ravi.ReasonBadID)

	// A handler on b waits for a promise; a resolves it on itself and b.
	done := make(chan *conformancev1.Echoed, 1)
	go func() {
		e, err := ravi.Ask[*conformancev1.Echoed](ctx, c, ravi.AgentID{Type: "waiter", Key: "w"}, &conformancev1.Echo{Text: "approval"})
		if err != nil {
			t.Error(err)
		}
		done <- e
	}()
	value, _ := structpb.NewValue(map[string]any{"ok": true})
	// Resolved before or after the handler waits, the value reaches it.
	if err := n.ResolvePromise(ctx, "approval", value); err != nil {
		t.Fatal(err)
	}
	if e := <-done; e.GetText() != `{"ok":true}` {
		t.Fatalf("waiter got %v", e)
	}
	err = n.ResolvePromise(ctx, "approval", value)
	wantError(t, err, codes.AlreadyExists, "")
	// Through the RPC, with a JSON value, on the node holding the waiter.
	cb := dial(t, b.Addr())
	jsonValue := &meshv1.Payload{Type: "google.protobuf.Value", ContentType: ravi.ContentTypeJSON, Data: []byte(`42`)}
	resolved := make(chan error, 1)
	go func() {
		e, err := ravi.Ask[*conformancev1.Echoed](ctx, cb, ravi.AgentID{Type: "waiter", Key: "w2"}, &conformancev1.Echo{Text: "answer"})
		if err == nil && e.GetText() != "42" {
			err = errors.New(e.GetText())
		}
		resolved <- err
	}()
	eventually(t, ctx, "the waiter to wait", func() (bool, error) { return b.PromiseWaiters("answer") == 1, nil })
	resp, err := cb.Service().ResolvePromise(ctx, &meshv1.ResolvePromiseRequest{Name: "answer", Value: jsonValue})
	if err != nil || !resp.GetWaiting() {
		t.Fatalf("resolve: %v %v", resp, err)
	}
	if err := <-resolved; err != nil {
		t.Fatal(err)
	}
	_, err = cb.Service().ResolvePromise(ctx, &meshv1.ResolvePromiseRequest{Name: "x", Value: &meshv1.Payload{Type: "google.protobuf.Value", ContentType: ravi.ContentTypeJSON, Data: []byte(`{`)}})
	wantStatus(t, err, codes.InvalidArgument, ravi.ReasonBadPayload)
}

// A loop of publishes queues events faster than the stream's writer sends
// them, one per message: the publisher waits for the writer, so a subscriber
// that keeps up gets every event however long the loop.
func TestAPublishLoopDoesNotEndAStreamThatKeepsUp(t *testing.T) {
	ctx := testContext(t)
	n := startNode(t, ravi.Options{NodeID: "loop"})
	c := dial(t, n.Addr())
	sub, err := c.Subscribe(ctx, "reader", ravi.TopicType("burst"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	const count = 30000
	received := make(chan int, 1)
	go func() {
		got := 0
		for ; got < count; got++ {
			if _, err := sub.Next(); err != nil {
				t.Errorf("the stream ended after %d events: %v", got, err)
				break
			}
		}
		received <- got
	}()
	for i := range count {
		if _, err := n.Publish(ctx, ravi.TopicID{Type: "burst", Source: "s"}, &conformancev1.Echo{Text: "x"}); err != nil {
			t.Fatal(i, err)
		}
	}
	if got := <-received; got != count {
		t.Fatalf("received %d of %d events", got, count)
	}
}

func TestSlowSubscriberStreamEnds(t *testing.T) {
	ctx := testContext(t)
	n := startNode(t, ravi.Options{NodeID: "slow"})
	c := dial(t, n.Addr())
	sub, err := c.Subscribe(ctx, "slowpoke", ravi.TopicType("flood"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	big := strings.Repeat("x", 8<<10)
	for range 3000 {
		if _, err := n.Publish(ctx, ravi.TopicID{Type: "flood", Source: "s"}, &conformancev1.Echo{Text: big}); err != nil {
			t.Fatal(err)
		}
	}
	count := 0
	for {
		_, err := sub.Next()
		if err != nil {
			if ravi.CodeOf(err) != codes.ResourceExhausted || count == 0 || count >= 3000 {
				t.Fatalf("after %d events: %v", count, err)
			}
			return
		}
		count++
	}
}
