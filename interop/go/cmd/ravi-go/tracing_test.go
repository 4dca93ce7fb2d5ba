package main

import (
	"context"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// envWithout is this process's environment without the OTEL_* variables,
// plus extra.
func envWithout(extra ...string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "OTEL_") })
	return append(env, extra...)
}

func TestNodeWithoutOTLPEndpointStarts(t *testing.T) {
	n := startNodeProcessEnv(t, envWithout(), "cli-plain", "--conformance-type", "conformance-go")
	r := cli(t, "send", "--addr", n.addr, "--to", "conformance-go/k", "--type", "ravi.conformance.v1.Echo", "--json", `{"text": "hi"}`)
	if r.code != 0 {
		t.Fatalf("send: %+v", r)
	}
	n.stop(t)
	if strings.Contains(n.stderr.String(), "OTLP") || strings.Contains(n.stderr.String(), "opentelemetry") {
		t.Fatalf("tracing was set up without an endpoint; stderr:\n%s", n.stderr)
	}
}

// collector is a fake OTLP gRPC trace collector on loopback.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	addr string
	mu   sync.Mutex
	// spans maps "service.name span-name" to its count.
	spans map[string]int
}

func startCollector(t *testing.T) *collector {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{addr: lis.Addr().String(), spans: map[string]int{}}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, c)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return c
}

func (c *collector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.spans[service+" "+s.GetName()]++
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (c *collector) count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.spans[key]
}

// A node with an endpoint exports its spans over OTLP gRPC and flushes them
// when it stops (the batch processor would wait 5 s otherwise).
func TestNodeExportsTracesOverOTLP(t *testing.T) {
	for _, tc := range []struct {
		name, service string
		env, args     []string
	}{
		{name: "flag", service: "cli-traced-flag", args: []string{"--otlp-endpoint", "http://%s"}},
		{name: "env", service: "cli-traced-env", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://%s"}},
		{name: "service name", service: "svc", env: []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://%s", "OTEL_SERVICE_NAME=svc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCollector(t)
			fill := func(in []string) []string {
				out := make([]string, len(in))
				for i, s := range in {
					out[i] = strings.ReplaceAll(s, "%s", c.addr)
				}
				return out
			}
			nodeID := "cli-traced-" + strings.ReplaceAll(tc.name, " ", "-")
			args := append([]string{"--conformance-type", "conformance-go", "--grace", "2s"}, fill(tc.args)...)
			n := startNodeProcessEnv(t, envWithout(append(fill(tc.env), "OTEL_BSP_SCHEDULE_DELAY=60000")...), nodeID, args...)
			r := cli(t, "send", "--addr", n.addr, "--to", "conformance-go/k", "--type", "ravi.conformance.v1.Echo", "--json", `{"text": "hi"}`)
			if r.code != 0 {
				t.Fatalf("send: %+v", r)
			}
			if got := c.count(tc.service + " handle conformance-go"); got != 0 {
				t.Fatalf("spans exported before the node stopped (schedule delay 60 s): %d", got)
			}
			start := time.Now()
			n.stop(t)
			if got := c.count(tc.service + " handle conformance-go"); got != 1 {
				t.Fatalf("after stop: %d handle spans for service %q, want 1 (%v); stderr:\n%s", got, tc.service, c.spans, n.stderr)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("stopping took %s", time.Since(start))
			}
		})
	}
}
