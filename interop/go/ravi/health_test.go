package ravi_test

import (
	"context"
	"slices"
	"testing"
	"time"

	conformancev1 "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
)

func healthCheck(ctx context.Context, c *ravi.Client, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(c.Conn()).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	return resp.GetStatus(), err
}

func TestHealthAndReflection(t *testing.T) {
	ctx := testContext(t)
	n := conformanceNode(t, "health", ravi.Options{})
	c := dial(t, n.Addr())
	for _, svc := range []string{"", "ravi.mesh.v1.AgentService"} {
		st, err := healthCheck(ctx, c, svc)
		if err != nil || st != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health %q: %v %v", svc, st, err)
		}
	}

	want := []string{"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", "ravi.mesh.v1.AgentService"}
	// v1
	stream, err := reflectionv1.NewServerReflectionClient(c.Conn()).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		got = append(got, s.GetName())
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("v1 services %v, want %v", got, want)
	}
	// The service's descriptor resolves (what grpcurl describe needs).
	if err := stream.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "ravi.mesh.v1.AgentService"}}); err != nil {
		t.Fatal(err)
	}
	if resp, err = stream.Recv(); err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Fatalf("file containing symbol: %v %v", resp, err)
	}
	_ = stream.CloseSend()
	// v1alpha
	alpha, err := reflectionv1alpha.NewServerReflectionClient(c.Conn()).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := alpha.Send(&reflectionv1alpha.ServerReflectionRequest{MessageRequest: &reflectionv1alpha.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	aresp, err := alpha.Recv()
	if err != nil || len(aresp.GetListServicesResponse().GetService()) != len(want) {
		t.Fatalf("v1alpha: %v %v", aresp, err)
	}
	_ = alpha.CloseSend()
}

func TestGracefulStop(t *testing.T) {
	ctx := testContext(t)
	n, err := ravi.NewNode(ravi.Options{NodeID: "graceful", GracePeriod: 5 * time.Second, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	g := newGate()
	if err := n.Register(g.agentType("gate", false)); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	c := dial(t, n.Addr())
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watch, err := healthpb.NewHealthClient(c.Conn()).Watch(wctx, &healthpb.HealthCheckRequest{Service: "ravi.mesh.v1.AgentService"})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := watch.Recv(); err != nil || st.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", st, err)
	}
	sub, err := c.Subscribe(ctx, "watcher", ravi.TopicType("t"))
	if err != nil {
		t.Fatal(err)
	}
	inflight := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, ravi.AgentID{Type: "gate", Key: "a"}, &conformancev1.Sleep{Tag: "drain"})
		inflight <- err
	}()
	<-g.entered
	stopped := make(chan error, 1)
	go func() { stopped <- n.Stop() }()
	// Health flips to NOT_SERVING, and Subscribe streams end.
	if st, err := watch.Recv(); err != nil || st.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch after stop: %v %v", st, err)
	}
	if _, err := sub.Next(); err == nil {
		t.Fatal("the Subscribe stream did not end")
	}
	// The in-flight call drains.
	close(g.release)
	if err := <-inflight; err != nil {
		t.Fatalf("in-flight call: %v", err)
	}
	// The health watch still open does not hold the stop once the unary
	// calls drained.
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("stop: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("stop did not return")
	}
	if err := n.Wait(); err != nil {
		t.Fatal(err)
	}
}
