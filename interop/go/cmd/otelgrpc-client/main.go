// Command otelgrpc-client is a gRPC client of a ravi node instrumented the
// standard Go way, and nothing else: the generated AgentService stub, a
// connection with otelgrpc's client stats handler, an OpenTelemetry SDK
// exporting over OTLP. It sends one examples.v1.Task under a span of its own
// and prints {"trace_id": ..., "reply_type": ...}: the trace in which the
// client's span is the root of every span the mesh makes for the request
// (tests/e2e/test_tracing.py checks it in Jaeger).
//
//	otelgrpc-client --addr 127.0.0.1:50051 --agent orchestrator/t1 \
//	    --content "How are deadlines propagated?" --otlp-endpoint http://127.0.0.1:4317
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	examplesv1 "github.com/ravi-mesh/ravi/gen/go/ravi/examples/v1"
	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "otelgrpc-client:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "", "the ravi node to call (host:port)")
	agent := flag.String("agent", "orchestrator/default", "the agent to send the task to (type/key)")
	content := flag.String("content", "How are deadlines propagated?", "the task's content")
	endpoint := flag.String("otlp-endpoint", "", "OTLP gRPC endpoint (http://host:port); OTEL_EXPORTER_OTLP_* when empty")
	service := flag.String("service-name", "otelgrpc-client", "the service.name of the client's spans")
	timeout := flag.Duration("timeout", 30*time.Second, "the deadline of the call")
	flag.Parse()
	agentType, key, ok := strings.Cut(*agent, "/")
	if *addr == "" || !ok || agentType == "" || key == "" {
		return fmt.Errorf("want --addr HOST:PORT and --agent TYPE/KEY")
	}
	ctx := context.Background()

	var opts []otlptracegrpc.Option
	if *endpoint != "" {
		opts = append(opts, otlptracegrpc.WithEndpointURL(*endpoint))
	}
	exporter, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return err
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exporter),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(*service))),
	)
	defer func() { _ = tp.Shutdown(context.Background()) }()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})

	conn, err := grpc.NewClient(*addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()))
	if err != nil {
		return err
	}
	defer conn.Close()

	data, err := proto.Marshal(&examplesv1.Task{ThreadId: key, Content: *content})
	if err != nil {
		return err
	}
	ctx, span := tp.Tracer("otelgrpc-client").Start(ctx, "client request")
	callCtx, cancel := context.WithTimeout(ctx, *timeout)
	resp, err := meshv1.NewAgentServiceClient(conn).Send(callCtx, &meshv1.SendRequest{
		Recipient: &meshv1.AgentId{Type: agentType, Key: key},
		Envelope: &meshv1.Envelope{
			MessageId: "otelgrpc-client-1",
			Payload:   &meshv1.Payload{Type: "ravi.examples.v1.Task", ContentType: "application/x-protobuf", Data: data},
		},
	})
	cancel()
	span.End()
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]string{
		"trace_id":   span.SpanContext().TraceID().String(),
		"reply_type": resp.GetResult().GetType(),
	})
}
