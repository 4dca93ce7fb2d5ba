// OpenTelemetry tracing of a node: the spans of docs/operations.md, "Tracing",
// and W3C trace context in Envelope.metadata and gRPC metadata.
//
// The node traces with the TracerProvider it is given, or the global one (a
// no-op until something registers a provider). With the no-op provider the
// spans cost next to nothing, and a message's trace context still passes
// through unchanged: a no-op span carries its parent's context.
import {
  context as otelContext,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  isSpanContextValid,
  trace,
  type Attributes,
  type Context,
  type Link,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
  type Tracer,
  type TracerProvider,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { AgentService } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import type { Envelope } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import { asRaviError, codeName, RaviError } from "./errors.js";
import type { TraceContext } from "./host.js";
import { formatAgentId, type AgentAddress, type TopicAddress } from "./ids.js";

/** The instrumentation scope of the node's spans (the same as Python's). */
export const TRACER_NAME = "ravi";
/** The version of this instrumentation. */
export const TRACER_VERSION = "0.1.0";

const propagator = new W3CTraceContextPropagator();

type Carrier = Readonly<Record<string, string | undefined>>;

const getter: TextMapGetter<Carrier> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => carrier[key] ?? carrier[key.toLowerCase()],
};

const setter: TextMapSetter<Record<string, string>> = {
  set: (carrier, key, value) => {
    carrier[key] = value;
  },
};

/**
 * The context of the first carrier holding a valid W3C traceparent (envelope
 * metadata first, then gRPC metadata), on top of the root context; the root
 * context when none does.
 */
export function extractContext(...carriers: (Carrier | TraceContext | undefined)[]): Context {
  for (const given of carriers) {
    const carrier = given as Carrier | undefined;
    if (carrier === undefined || carrier["traceparent"] === undefined) {
      continue;
    }
    const extracted = propagator.extract(ROOT_CONTEXT, carrier, getter);
    const found = trace.getSpanContext(extracted);
    if (found !== undefined && isSpanContextValid(found)) {
      return extracted;
    }
  }
  return ROOT_CONTEXT;
}

/** Writes the W3C traceparent and tracestate of the context's span, when it has a valid one. */
export function injectContext(ctx: Context, carrier: Record<string, string>): void {
  propagator.inject(ctx, carrier, setter);
}

/** The traceparent and tracestate of a carrier. */
export function traceOfCarrier(carrier: Carrier): TraceContext {
  return { traceparent: carrier["traceparent"], tracestate: carrier["tracestate"] };
}

/**
 * Adds the active context's traceparent and tracestate to a carrier that has
 * no traceparent yet (what a client does for its caller's span).
 */
export function injectActive(carrier: Record<string, string>): void {
  if (carrier["traceparent"] === undefined) {
    injectContext(otelContext.active(), carrier);
  }
}

/** The gRPC code name of a failure ("UNKNOWN", "CANCELLED"), as ravi.error.code carries it. */
export function grpcCodeName(code: Code): string {
  return code === Code.Canceled ? "CANCELLED" : codeName(code);
}

/** The exception to record for a failure: a handler's own error rather than its wrapper. */
function exceptionOf(error: unknown, failure: RaviError): Error {
  const cause = failure.cause;
  if (error instanceof RaviError && cause instanceof Error && !(cause instanceof RaviError) && !(cause instanceof ConnectError)) {
    return cause;
  }
  return error instanceof Error ? error : failure;
}

/** Marks a span failed: status ERROR, the exception as an event, ravi.error.code and ravi.error.reason. */
export function recordFailure(span: Span, error: unknown): void {
  if (!span.isRecording()) {
    return;
  }
  const failure = asRaviError(error);
  span.recordException(exceptionOf(error, failure));
  span.setAttribute("ravi.error.code", grpcCodeName(failure.code));
  if (failure.reason !== undefined) {
    span.setAttribute("ravi.error.reason", failure.reason);
  }
  span.setStatus({ code: SpanStatusCode.ERROR, message: failure.message });
}

/** ravi.message.type (the payload's type name, when there is a payload) and messaging.message.id. */
function messageAttributes(envelope: Envelope): Attributes {
  const attributes: Attributes = { "messaging.message.id": envelope.messageId };
  if (envelope.payload !== undefined && envelope.payload.type !== "") {
    attributes["ravi.message.type"] = envelope.payload.type;
  }
  return attributes;
}

/** A started span and the context that has it as the current span. */
export interface Started {
  readonly span: Span;
  readonly context: Context;
}

/** The spans of one node. */
export class NodeTracing {
  private readonly tracer: Tracer;
  private readonly common: Attributes;

  constructor(nodeId: string, language: string, provider?: TracerProvider) {
    // The global provider is a proxy: a provider registered later is used from then on.
    this.tracer = (provider ?? trace.getTracerProvider()).getTracer(TRACER_NAME, TRACER_VERSION);
    this.common = { "messaging.system": "ravi", "ravi.node.id": nodeId, "ravi.language": language };
  }

  // Attributes are computed only for a span that records (samplers see the
  // name and kind, as in the Python and Go members): an unsampled message
  // costs a non-recording span and its context, nothing more.
  private start(name: string, kind: SpanKind, attributes: () => Attributes, parent: Context, links?: Link[]): Started {
    const span = this.tracer.startSpan(name, links === undefined ? { kind } : { kind, links }, parent);
    if (span.isRecording()) {
      span.setAttributes(this.common);
      span.setAttributes(attributes());
    }
    return { span, context: trace.setSpan(parent, span) };
  }

  /** `send {agent type}` (CLIENT), a child of the caller's current span. */
  send(to: AgentAddress, envelope: Envelope, parent: Context): Started {
    return this.start(
      `send ${to.type}`,
      SpanKind.CLIENT,
      () => ({
        "messaging.operation.type": "send",
        "messaging.destination.name": to.type,
        "ravi.agent.type": to.type,
        "ravi.agent.key": to.key,
        ...messageAttributes(envelope),
      }),
      parent,
    );
  }

  /** `handle {agent type}` (SERVER), a child of the message's trace context. */
  handle(recipient: AgentAddress, envelope: Envelope, parent: Context): Started {
    return this.start(
      `handle ${recipient.type}`,
      SpanKind.SERVER,
      () => {
        const attributes: Attributes = {
          "messaging.operation.type": "process",
          "ravi.agent.type": recipient.type,
          "ravi.agent.key": recipient.key,
          ...messageAttributes(envelope),
        };
        if (envelope.sender !== undefined) {
          attributes["ravi.sender"] = formatAgentId(envelope.sender);
        }
        return attributes;
      },
      parent,
    );
  }

  /** `publish {topic type}` (PRODUCER), a child of the publisher's current span. */
  publish(topic: TopicAddress, envelope: Envelope, parent: Context): Started {
    return this.start(
      `publish ${topic.type}`,
      SpanKind.PRODUCER,
      () => ({
        "messaging.operation.type": "publish",
        "messaging.destination.name": topic.type,
        "ravi.topic.source": topic.source,
        ...messageAttributes(envelope),
      }),
      parent,
    );
  }

  /** `deliver {agent type}` (CONSUMER), a child of the event's trace context and linked to it. */
  deliver(recipient: AgentAddress, topic: TopicAddress, envelope: Envelope, parent: Context): Started {
    const published = trace.getSpanContext(parent);
    return this.start(
      `deliver ${recipient.type}`,
      SpanKind.CONSUMER,
      () => ({
        "messaging.operation.type": "process",
        "ravi.agent.type": recipient.type,
        "ravi.agent.key": recipient.key,
        "ravi.topic.type": topic.type,
        "ravi.topic.source": topic.source,
        ...messageAttributes(envelope),
      }),
      parent,
      published === undefined ? [] : [{ context: published }],
    );
  }

  /**
   * The span of a unary RPC, named and attributed as OpenTelemetry's gRPC
   * instrumentations name theirs (`ravi.mesh.v1.AgentService/Send`, rpc.*).
   */
  rpc(method: string, kind: SpanKind, parent: Context): Started {
    const span = this.tracer.startSpan(
      `${AgentService.typeName}/${method}`,
      { kind, attributes: { "rpc.system": "grpc", "rpc.service": AgentService.typeName, "rpc.method": method } },
      parent,
    );
    return { span, context: trace.setSpan(parent, span) };
  }

  /** `forward {agent type}` (INTERNAL), a child of the message's trace context. */
  forward(recipient: AgentAddress, hopCount: number, parent: Context): Started {
    return this.start(`forward ${recipient.type}`, SpanKind.INTERNAL, () => ({ "ravi.route.hop_count": hopCount }), parent);
  }
}

/** Ends the span once `body` settled, marking it failed when `body` failed. */
export async function traced<T>(span: Span, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    recordFailure(span, error);
    throw error;
  } finally {
    span.end();
  }
}

/** The synchronous form of `traced`. */
export function tracedSync<T>(span: Span, body: () => T): T {
  try {
    return body();
  } catch (error) {
    recordFailure(span, error);
    throw error;
  } finally {
    span.end();
  }
}

/** The W3C headers of a context, as a carrier. */
function headersOf(ctx: Context): Record<string, string> {
  const carrier: Record<string, string> = {};
  injectContext(ctx, carrier);
  return carrier;
}

/** Puts a context's W3C headers on a request's headers, replacing what was there. */
function setTraceHeaders(header: Headers, carrier: Record<string, string>): void {
  for (const key of ["traceparent", "tracestate"]) {
    const value = carrier[key];
    if (value === undefined) {
      header.delete(key);
    } else {
      header.set(key, value);
    }
  }
}

function traceId(traceparent: string | undefined): string | undefined {
  return traceparent?.split("-")[1];
}

/** Ends an RPC span with the call's outcome: rpc.grpc.status_code, and status ERROR on a failure. */
async function finishRpc<T>(span: Span, call: () => Promise<T>): Promise<T> {
  try {
    const result = await call();
    span.setAttribute("rpc.grpc.status_code", 0);
    return result;
  } catch (error) {
    const failure = ConnectError.from(error);
    span.setAttribute("rpc.grpc.status_code", failure.code);
    span.setStatus({ code: SpanStatusCode.ERROR, message: failure.message });
    throw error;
  } finally {
    span.end();
  }
}

/**
 * A server interceptor making the span of every unary AgentService RPC (the
 * multiplexed stream and Subscribe carry many messages each, which have the
 * node's own spans only). Its parent is the caller's traceparent in the gRPC
 * metadata; a Send takes the RPC span's context, so the RPC span parents the
 * node's handle span, unless the envelope carries a context of another trace
 * (which wins, as envelope metadata always does). A delivery keeps its
 * publish span as parent and link.
 */
export function rpcServerInterceptor(tracing: NodeTracing): Interceptor {
  return (next) => async (req) => {
    if (req.stream || req.service.typeName !== AgentService.typeName) {
      return next(req);
    }
    const started = tracing.rpc(req.method.name, SpanKind.SERVER, extractContext(headerCarrier(req.header)));
    const carrier = headersOf(started.context);
    setTraceHeaders(req.header, carrier);
    // A delivery (a Send with a topic, Publish) keeps its publish span as parent and link.
    const sent = req.method.name === "Send" ? (req.message as { envelope?: Envelope; topic?: unknown }) : undefined;
    const envelope = sent?.topic === undefined ? sent?.envelope : undefined;
    if (envelope !== undefined && carrier["traceparent"] !== undefined) {
      const own = envelope.metadata["traceparent"];
      if (own === undefined || traceId(own) === traceId(carrier["traceparent"])) {
        delete envelope.metadata["tracestate"];
        Object.assign(envelope.metadata, carrier);
      }
    }
    return finishRpc(started.span, () => otelContext.with(started.context, () => next(req)));
  };
}

/**
 * A client interceptor making the span of every unary AgentService RPC: a
 * child of the traceparent the request carries (the node's send span), else
 * of the active context; the call then carries the RPC span's context.
 */
export function rpcClientInterceptor(tracing: NodeTracing): Interceptor {
  return (next) => async (req) => {
    if (req.stream || req.service.typeName !== AgentService.typeName) {
      return next(req);
    }
    const given = extractContext(headerCarrier(req.header));
    const parent = trace.getSpanContext(given) === undefined ? otelContext.active() : given;
    const started = tracing.rpc(req.method.name, SpanKind.CLIENT, parent);
    setTraceHeaders(req.header, headersOf(started.context));
    return finishRpc(started.span, () => next(req));
  };
}

function headerCarrier(header: Headers): Record<string, string | undefined> {
  return { traceparent: header.get("traceparent") ?? undefined, tracestate: header.get("tracestate") ?? undefined };
}
