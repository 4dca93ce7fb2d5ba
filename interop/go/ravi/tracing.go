package ravi

import (
	"context"
	"maps"
	"strings"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/proto"
)

// TracerName is the instrumentation scope of the spans a Node makes.
const TracerName = "github.com/ravi-mesh/ravi/interop/go/ravi"

// The attributes of ravi spans (docs/operations.md, "Tracing").
const (
	attrNodeID        = attribute.Key("ravi.node.id")
	attrLanguage      = attribute.Key("ravi.language")
	attrSystem        = attribute.Key("messaging.system")
	attrOperation     = attribute.Key("messaging.operation.type")
	attrDestination   = attribute.Key("messaging.destination.name")
	attrMessageID     = attribute.Key("messaging.message.id")
	attrAgentType     = attribute.Key("ravi.agent.type")
	attrAgentKey      = attribute.Key("ravi.agent.key")
	attrMessageType   = attribute.Key("ravi.message.type")
	attrSender        = attribute.Key("ravi.sender")
	attrTopicType     = attribute.Key("ravi.topic.type")
	attrTopicSource   = attribute.Key("ravi.topic.source")
	attrRouteHopCount = attribute.Key("ravi.route.hop_count")
	attrRouteNextNode = attribute.Key("ravi.route.next_node")
	attrErrorCode     = attribute.Key("ravi.error.code")
	attrErrorReason   = attribute.Key("ravi.error.reason")
)

// propagator is the W3C TraceContext propagator: ravi nodes of every language
// carry "traceparent" and "tracestate", whatever the global propagator is.
var propagator = propagation.TraceContext{}

// nodeTracer makes a node's spans.
type nodeTracer struct {
	tracer trace.Tracer
	common []attribute.KeyValue // on every span
}

func newNodeTracer(tp trace.TracerProvider, nodeID string) nodeTracer {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return nodeTracer{
		tracer: tp.Tracer(TracerName, trace.WithInstrumentationVersion(ContractVersion)),
		common: []attribute.KeyValue{
			attrNodeID.String(nodeID),
			attrLanguage.String(Language),
			attrSystem.String("ravi"),
		},
	}
}

// start starts a span; its attributes are computed only when it records, so
// a node without a tracer provider pays next to nothing.
func (t nodeTracer) start(ctx context.Context, name string, kind trace.SpanKind, attrs func() []attribute.KeyValue, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	ctx, span := t.tracer.Start(ctx, name, append(opts, trace.WithSpanKind(kind))...)
	if span.IsRecording() {
		span.SetAttributes(t.common...)
		if attrs != nil {
			span.SetAttributes(attrs()...)
		}
	}
	return ctx, span
}

// fail marks span failed by err: status ERROR, the exception as an event,
// ravi.error.code and, when there is one, ravi.error.reason.
func fail(span trace.Span, err error) {
	if err == nil || !span.IsRecording() {
		return
	}
	e := FromError(err)
	span.RecordError(e)
	span.SetStatus(otelcodes.Error, e.Message)
	span.SetAttributes(attrErrorCode.String(CodeName(e.code())))
	if e.Reason != "" {
		span.SetAttributes(attrErrorReason.String(e.Reason))
	}
}

// mapCarrier adapts envelope metadata to the propagator (keys are lower case
// already).
type mapCarrier map[string]string

func (c mapCarrier) Get(key string) string { return c[strings.ToLower(key)] }
func (c mapCarrier) Set(key, value string) { c[strings.ToLower(key)] = value }
func (c mapCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// extractParent returns ctx with the remote span context of a message: from
// the envelope metadata first, then from tc (the gRPC metadata of the call).
// Without either, ctx is returned as it is.
func extractParent(ctx context.Context, md map[string]string, tc traceContext) context.Context {
	sc := remoteSpanContext(md)
	if !sc.IsValid() && tc.traceparent != "" {
		sc = remoteSpanContext(map[string]string{"traceparent": tc.traceparent, "tracestate": tc.tracestate})
	}
	if !sc.IsValid() {
		return ctx
	}
	if cur := trace.SpanContextFromContext(ctx); cur.TraceID() == sc.TraceID() && cur.SpanID() == sc.SpanID() {
		return ctx // the span that sent it, in this process
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// remoteSpanContext is the span context md carries (invalid when none).
func remoteSpanContext(md map[string]string) trace.SpanContext {
	if md["traceparent"] == "" {
		return trace.SpanContext{}
	}
	return trace.SpanContextFromContext(propagator.Extract(context.Background(), mapCarrier(md)))
}

// injectInto returns md with the W3C context of ctx's span (a copy: md may be
// shared); md as it is when ctx has no valid span context.
func injectInto(ctx context.Context, md map[string]string) map[string]string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return md
	}
	out := make(map[string]string, len(md)+2)
	maps.Copy(out, md)
	delete(out, "tracestate")
	propagator.Inject(ctx, mapCarrier(out))
	return out
}

// traceOf is the trace context of ctx's span, as it travels.
func traceOf(ctx context.Context) traceContext {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return traceContext{}
	}
	c := mapCarrier{}
	propagator.Inject(ctx, c)
	return traceContext{traceparent: c["traceparent"], tracestate: c["tracestate"]}
}

// parentContext is the context whose span parents a send or publish: the
// traceparent of WithTraceparent, else the span in ctx, else the span of the
// handler making the call, else a traceparent given in WithMetadata.
func parentContext(ctx context.Context, from *Call, o callOptions) context.Context {
	if o.traceparent != "" {
		if sc := remoteSpanContext(map[string]string{"traceparent": o.traceparent}); sc.IsValid() {
			return trace.ContextWithRemoteSpanContext(ctx, sc)
		}
	}
	if trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	if from != nil && from.spanCtx.IsValid() {
		return trace.ContextWithSpanContext(ctx, from.spanCtx)
	}
	if sc := remoteSpanContext(o.metadata); sc.IsValid() {
		return trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	return ctx
}

// traceUnary is a client interceptor that puts the W3C context of the call's
// span into the gRPC metadata of unary calls that do not carry one already.
func traceUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if tc := traceOf(ctx); tc.traceparent != "" {
		if md, _ := metadata.FromOutgoingContext(ctx); len(md.Get("traceparent")) == 0 {
			ctx = tc.outgoing(ctx)
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// unaryRPCs are AgentService's unary methods by full name: the RPCs that get
// an RPC span. The multiplexed stream and Subscribe carry many messages each;
// those messages have ravi's own spans only.
var unaryRPCs = func() map[string]bool {
	out := map[string]bool{}
	for _, m := range meshv1.AgentService_ServiceDesc.Methods {
		out["/"+meshv1.AgentService_ServiceDesc.ServiceName+"/"+m.MethodName] = true
	}
	return out
}()

func unaryRPC(info *stats.RPCTagInfo) bool { return unaryRPCs[info.FullMethodName] }

var noopMeters = noop.NewMeterProvider()

// rpcTracing is otelgrpc's configuration for a node: the node's tracer
// provider (the global one when nil), W3C trace context, unary RPCs only, no
// metrics (a node's metrics are its own).
func rpcTracing(tp trace.TracerProvider) []otelgrpc.Option {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return []otelgrpc.Option{
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithPropagators(propagator),
		otelgrpc.WithFilter(unaryRPC),
		otelgrpc.WithMeterProvider(noopMeters),
	}
}

// rpcTraceInto returns env with the trace context of ctx's span (the RPC span
// of a unary call), so that span parents the mesh's spans, unless the
// envelope carries a context of another trace (which wins, as envelope
// metadata always does): a copy, env is the caller's.
func rpcTraceInto(ctx context.Context, env *meshv1.Envelope) *meshv1.Envelope {
	rpc := trace.SpanContextFromContext(ctx)
	if env == nil || !rpc.IsValid() {
		return env
	}
	if own := remoteSpanContext(env.GetMetadata()); own.IsValid() && own.TraceID() != rpc.TraceID() {
		return env
	}
	out := proto.CloneOf(env)
	out.Metadata = injectInto(ctx, env.GetMetadata())
	return out
}
