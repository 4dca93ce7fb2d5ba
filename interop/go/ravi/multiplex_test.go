package ravi_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	conformancev1 "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// rpcCounter counts the AgentService calls a node serves, by method.
type rpcCounter struct {
	mu    sync.Mutex
	calls map[string]int
}

func (c *rpcCounter) count(method string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[method]++
}

func (c *rpcCounter) get(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[method]
}

func (c *rpcCounter) options() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			c.count(info.FullMethod)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			c.count(info.FullMethod)
			return h(srv, ss)
		}),
	}
}

const (
	sendMethod      = "/ravi.mesh.v1.AgentService/Send"
	multiplexMethod = "/ravi.mesh.v1.AgentService/Multiplex"
)

func TestSendsToAPeerShareOneMultiplexStream(t *testing.T) {
	ctx := testContext(t)
	var served rpcCounter
	b := conformanceNode(t, "node-b", ravi.Options{ServerOptions: served.options()})
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"b": b.Addr()}})
	waitFor(t, ctx, a, "a to reach b", hostsType(a, "node-b", "conformance"))
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range 64 {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", i%8)
			echoed, err := echoVia(ctx, a, ravi.AgentID{Type: "conformance", Key: key}, key)
			if err != nil || echoed.GetText() != key || echoed.GetNodeId() != "node-b" {
				t.Errorf("%s: %v %v", key, echoed, err)
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		return
	}
	if got := served.get(multiplexMethod); got != 1 {
		t.Fatalf("%d Multiplex streams, want 1", got)
	}
	if got := served.get(sendMethod); got != 0 {
		t.Fatalf("%d unary Sends, want none", got)
	}
}

func TestADeadlineOnTheStreamCancelsThePeersHandler(t *testing.T) {
	ctx := testContext(t)
	b := conformanceNode(t, "node-b", ravi.Options{})
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"b": b.Addr()}})
	waitFor(t, ctx, a, "a to reach b", hostsType(a, "node-b", "conformance"))
	sleeper := ravi.AgentID{Type: "conformance", Key: "sleeper"}
	start := time.Now()
	_, err := a.Send(ctx, sleeper, &conformancev1.Sleep{Millis: 10_000, Tag: "short"}, ravi.WithTimeout(200*time.Millisecond))
	wantError(t, err, codes.DeadlineExceeded, "")
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("the call ended after %v", took)
	}
	// A caller that gives up: its context ends, a cancel frame follows.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = a.Send(cctx, sleeper, &conformancev1.Sleep{Millis: 10_000, Tag: "gave up"})
	wantError(t, err, codes.Canceled, "")
	eventually(t, ctx, "b to cancel both handlers", func() (bool, error) {
		obs, err := report(ctx, b, sleeper)
		return err == nil && slices.Equal(obs.GetCancelled(), []string{"short", "gave up"}), err
	})
}

func TestCallsInFlightFailPeerUnavailableWhenTheStreamBreaks(t *testing.T) {
	ctx := testContext(t)
	b := conformanceNode(t, "node-b", ravi.Options{})
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"b": b.Addr()}})
	waitFor(t, ctx, a, "a to reach b", hostsType(a, "node-b", "conformance"))
	failed := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := a.Send(ctx, ravi.AgentID{Type: "conformance", Key: "k"}, &conformancev1.Sleep{Millis: 10_000}, ravi.WithTimeout(10*time.Second))
		failed <- err
	}()
	eventually(t, ctx, "the sleep to start on b", func() (bool, error) { return b.Busy("conformance", "k"), nil })
	// A stop whose grace is over at once cuts the stream with the call on it.
	stopped, cancel := context.WithCancel(ctx)
	cancel()
	_ = b.Shutdown(stopped)
	e := wantError(t, <-failed, codes.Unavailable, ravi.ReasonPeerUnavailable)
	if e.Metadata["node_id"] != "node-a" || e.Metadata["peer_address"] != b.Addr() || time.Since(start) > 5*time.Second {
		t.Fatalf("%#v after %v", e, time.Since(start))
	}
}

// legacyNode is a member of contract 1.1.0: it serves Describe, Subscribe and
// Send, and no Multiplex.
type legacyNode struct {
	meshv1.UnimplementedAgentServiceServer
	info *meshv1.NodeInfo
}

func (l *legacyNode) Describe(context.Context, *meshv1.DescribeRequest) (*meshv1.DescribeResponse, error) {
	return &meshv1.DescribeResponse{Node: l.info}, nil
}

func (l *legacyNode) Subscribe(_ *meshv1.SubscribeRequest, stream meshv1.AgentService_SubscribeServer) error {
	if err := stream.Send(&meshv1.SubscribeResponse{Kind: &meshv1.SubscribeResponse_Node{Node: l.info}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (l *legacyNode) Send(_ context.Context, req *meshv1.SendRequest) (*meshv1.SendResponse, error) {
	echoed, err := ravi.EncodePayload(&conformancev1.Echoed{Text: "legacy " + req.GetRecipient().GetKey(), NodeId: l.info.GetNodeId()})
	if err != nil {
		return nil, err
	}
	return &meshv1.SendResponse{NodeId: l.info.GetNodeId(), Result: echoed}, nil
}

func TestAPeerWithoutMultiplexIsCalledWithUnarySend(t *testing.T) {
	ctx := testContext(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served rpcCounter
	server := grpc.NewServer(served.options()...)
	meshv1.RegisterAgentServiceServer(server, &legacyNode{info: &meshv1.NodeInfo{
		NodeId: "legacy", ContractVersion: "1.1.0", AgentTypes: []*meshv1.AgentTypeInfo{{AgentType: "old"}},
	}})
	go func() { _ = server.Serve(lis) }()
	t.Cleanup(server.Stop)
	a := startNode(t, ravi.Options{NodeID: "node-a", Peers: map[string]string{"legacy": lis.Addr().String()}})
	waitFor(t, ctx, a, "a to reach the legacy node", hostsType(a, "legacy", "old"))
	for i := range 5 {
		key := fmt.Sprintf("k%d", i)
		echoed, err := echoVia(ctx, a, ravi.AgentID{Type: "old", Key: key}, "x")
		if err != nil || echoed.GetText() != "legacy "+key {
			t.Fatalf("%s: %v %v", key, echoed, err)
		}
	}
	if got := served.get(multiplexMethod); got != 1 {
		t.Fatalf("Multiplex tried %d times, want once", got)
	}
	if got := served.get(sendMethod); got != 5 {
		t.Fatalf("%d unary Sends, want 5", got)
	}
}
