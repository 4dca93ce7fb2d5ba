// OpenTelemetry tracing (docs/operations.md, "Tracing") on a mesh of Node
// nodes on 127.0.0.1, recorded by an in-memory exporter.
import { strict as assert } from "node:assert";
import { after, describe, test } from "node:test";

import { context, SpanKind, SpanStatusCode, trace, type TracerProvider } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
} from "@opentelemetry/sdk-trace-base";
import {
  EchoSchema,
  EchoedSchema,
  FailSchema,
  ForwardSchema,
  ObservedSchema,
  ReportSchema,
} from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";

import { defineAgent, defineStatelessAgent } from "../src/agent.js";
import { conformanceAgent, registerConformance } from "../src/agents/conformance.js";
import { encodePayload } from "../src/codec.js";
import { RaviError } from "../src/errors.js";
import type { RaviNode } from "../src/node.js";
import { setupTracing, tracingConfigured } from "../src/telemetry.js";
import { extractContext, grpcCodeName } from "../src/tracing.js";
import { Code, eventually, Fixture, rejectsWith } from "../test-support/helpers.js";

const T = { timeout: 20_000 };

// Handler code sees its span as the active context only with a context
// manager (NodeTracerProvider.register() installs this one). No provider is
// registered globally: the global one stays the no-op.
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());

const TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/** A provider recording every ended span in memory, at once. */
function recorder(): { provider: TracerProvider; exporter: InMemorySpanExporter; spans: () => ReadableSpan[] } {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  return { provider, exporter, spans: () => exporter.getFinishedSpans() };
}

/** The one span matching, failing with the names of all spans otherwise. */
function only(spans: readonly ReadableSpan[], match: (s: ReadableSpan) => boolean, what: string): ReadableSpan {
  const found = spans.filter(match);
  assert.equal(found.length, 1, `${what}: ${found.length} matches among ${spans.map(describeSpan).join(", ")}`);
  return found[0]!;
}

function describeSpan(span: ReadableSpan): string {
  return `${span.name}@${String(span.attributes["ravi.node.id"])}`;
}

function named(name: string, nodeId: string): (s: ReadableSpan) => boolean {
  return (s) => s.name === name && s.attributes["ravi.node.id"] === nodeId;
}

function assertChild(child: ReadableSpan, parent: ReadableSpan): void {
  assert.equal(child.spanContext().traceId, parent.spanContext().traceId, `trace of ${child.name}`);
  assert.equal(child.parentSpanContext?.spanId, parent.spanContext().spanId, `parent of ${child.name} is ${parent.name}`);
}

/**
 * The child's parent is the RPC span of a unary AgentService call, which
 * descends from `want` directly (a client without RPC spans) or through the
 * caller's RPC client span; returns that RPC span.
 */
function viaRpc(spans: readonly ReadableSpan[], child: ReadableSpan, want: string): ReadableSpan {
  const server = only(spans, (s) => s.spanContext().spanId === child.parentSpanContext?.spanId, `parent of ${child.name}`);
  assert.equal(server.kind, SpanKind.SERVER, `${server.name} is an RPC server span`);
  assert.ok(server.name.startsWith("ravi.mesh.v1.AgentService/"), server.name);
  assert.equal(server.attributes["rpc.system"], "grpc");
  let parent = server.parentSpanContext?.spanId;
  const client = spans.find((s) => s.spanContext().spanId === parent && s.kind === SpanKind.CLIENT && s.name === server.name);
  if (client !== undefined) {
    parent = client.parentSpanContext?.spanId;
  }
  assert.equal(parent, want, `the RPC span of ${child.name} descends from ${want}`);
  return server;
}

function assertCommon(span: ReadableSpan, nodeId: string): void {
  assert.equal(span.attributes["ravi.node.id"], nodeId);
  assert.equal(span.attributes["ravi.language"], "node");
  assert.equal(span.attributes["messaging.system"], "ravi");
}

test("gRPC code names are the upper-case gRPC ones", () => {
  assert.equal(grpcCodeName(Code.Unknown), "UNKNOWN");
  assert.equal(grpcCodeName(Code.Canceled), "CANCELLED");
  assert.equal(grpcCodeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
  assert.equal(trace.getSpanContext(extractContext({ traceparent: "garbage" })), undefined);
  assert.equal(trace.getSpanContext(extractContext({}, { traceparent: TRACEPARENT }))?.spanId, "00f067aa0ba902b7");
});

describe("tracing across nodes", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("a send to an agent on A whose handler sends to B: send -> handle -> send -> handle, one trace", async () => {
    const rec = recorder();
    const b = await fx.started({ nodeId: "tb", tracerProvider: rec.provider }, (n) => registerConformance(n, "leaf"));
    let activeInHandler: string | undefined;
    let handlerTraceparent: string | undefined;
    const a = await fx.started({ nodeId: "ta", peers: { b: b.address }, tracerProvider: rec.provider }, (n) => {
      n.registry.add(EchoSchema);
      n.register(
        "front",
        defineStatelessAgent().on(EchoSchema, EchoedSchema, async (echo, ctx) => {
          activeInHandler = trace.getActiveSpan()?.spanContext().spanId;
          handlerTraceparent = ctx.traceparent;
          return ctx.call({ type: "leaf", key: "k" }, EchoSchema, { text: `${echo.text}!` }, EchoedSchema);
        }),
      );
    });
    await a.waitForRoute("leaf");
    const reply = await a.call({ type: "front", key: "f" }, EchoSchema, { text: "hi" }, EchoedSchema, { messageId: "m-1" });
    assert.equal(reply.text, "hi!");
    assert.equal(reply.nodeId, "tb");

    const spans = rec.spans();
    const send1 = only(spans, named("send front", "ta"), "send front");
    const handle1 = only(spans, named("handle front", "ta"), "handle front");
    const send2 = only(spans, named("send leaf", "ta"), "send leaf");
    const handle2 = only(spans, named("handle leaf", "tb"), "handle leaf");
    assert.equal(send1.parentSpanContext, undefined, "the first send is a root");
    assertChild(handle1, send1);
    assertChild(send2, handle1);
    // Peers call each other over their Multiplex stream, which has no span per
    // call: the handle span is the send span's child, across the nodes.
    assertChild(handle2, send2);
    assert.equal(new Set([send1, handle1, send2, handle2].map((s) => s.spanContext().traceId)).size, 1);

    assert.equal(send1.kind, SpanKind.CLIENT);
    assert.equal(handle1.kind, SpanKind.SERVER);
    assert.equal(handle2.kind, SpanKind.SERVER);
    assertCommon(send1, "ta");
    assertCommon(handle2, "tb");
    assert.deepEqual(
      { ...send1.attributes },
      {
        "messaging.system": "ravi",
        "ravi.node.id": "ta",
        "ravi.language": "node",
        "messaging.operation.type": "send",
        "messaging.destination.name": "front",
        "ravi.agent.type": "front",
        "ravi.agent.key": "f",
        "ravi.message.type": "ravi.conformance.v1.Echo",
        "messaging.message.id": "m-1",
      },
    );
    assert.equal(handle1.attributes["messaging.operation.type"], "process");
    assert.equal(handle1.attributes["messaging.message.id"], "m-1");
    assert.equal(handle1.attributes["ravi.sender"], undefined);
    assert.equal(handle2.attributes["ravi.sender"], "front/f");
    assert.equal(handle2.attributes["ravi.agent.type"], "leaf");
    assert.equal(handle2.attributes["ravi.agent.key"], "k");
    assert.equal(handle2.attributes["ravi.message.type"], "ravi.conformance.v1.Echo");
    assert.equal(handle2.attributes["messaging.message.id"], send2.attributes["messaging.message.id"]);
    for (const span of [send1, handle1, send2, handle2]) {
      assert.equal(span.status.code, SpanStatusCode.UNSET, span.name);
    }

    // The handler ran in its handle span, and saw the send span's traceparent.
    assert.equal(activeInHandler, handle1.spanContext().spanId);
    assert.equal(handlerTraceparent, `00-${send1.spanContext().traceId}-${send1.spanContext().spanId}-01`);
    // The leaf saw its send span's context in its envelope metadata.
    assert.equal(reply.metadata["traceparent"], `00-${send2.spanContext().traceId}-${send2.spanContext().spanId}-01`);
  });

  test("a send under the caller's active span, and from a client, continues the caller's trace", async () => {
    const rec = recorder();
    const node = await fx.started({ nodeId: "tc", tracerProvider: rec.provider }, (n) => registerConformance(n));
    const outer = rec.provider.getTracer("test").startSpan("outer");
    await context.with(trace.setSpan(context.active(), outer), async () => {
      await node.call({ type: "conformance", key: "x" }, EchoSchema, { text: "in" }, EchoedSchema);
      // A RaviClient puts the active context in the envelope and the gRPC metadata.
      await fx.client(node.address).call({ type: "conformance", key: "y" }, EchoSchema, { text: "in" }, EchoedSchema);
    });
    outer.end();
    const spans = rec.spans();
    const outerSpan = only(spans, (s) => s.name === "outer", "outer");
    assertChild(only(spans, named("send conformance", "tc"), "send"), outerSpan);
    const handles = spans.filter(named("handle conformance", "tc"));
    assert.equal(handles.length, 2);
    const fromClient = only(handles, (s) => s.attributes["ravi.agent.key"] === "y", "handle y");
    viaRpc(spans, fromClient, outerSpan.spanContext().spanId);

    // A traceparent given explicitly is the parent.
    await node.send({ type: "conformance", key: "z" }, EchoSchema, { text: "in" }, { traceparent: TRACEPARENT });
    const explicit = only(rec.spans(), (s) => s.name === "send conformance" && s.parentSpanContext?.spanId === "00f067aa0ba902b7", "send z");
    assert.equal(explicit.spanContext().traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
  });

  test("a unary Send's gRPC metadata parents its RPC span when the envelope has no traceparent of another trace", async () => {
    const rec = recorder();
    const node = await fx.started({ nodeId: "tu", tracerProvider: rec.provider }, (n) => registerConformance(n));
    const client = fx.client(node.address);
    await client.send({ type: "conformance", key: "u" }, EchoSchema, { text: "x" }, { headers: { traceparent: TRACEPARENT } });
    const envelopeFirst = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    await client.send(
      { type: "conformance", key: "v" },
      EchoSchema,
      { text: "x" },
      { headers: { traceparent: TRACEPARENT }, metadata: { traceparent: envelopeFirst } },
    );
    const spans = rec.spans();
    const u = only(spans, (s) => s.attributes["ravi.agent.key"] === "u", "handle u");
    assert.equal(u.spanContext().traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert.equal(viaRpc(spans, u, "00f067aa0ba902b7").parentSpanContext?.isRemote, true);
    const v = only(spans, (s) => s.attributes["ravi.agent.key"] === "v", "handle v");
    assert.equal(v.spanContext().traceId, "0af7651916cd43dd8448eb211c80319c");
    assert.equal(v.parentSpanContext?.spanId, "b7ad6b7169203331");
  });

  test("calls on a Multiplex stream take their parent from each frame's envelope", async () => {
    const rec = recorder();
    const node = await fx.started({ nodeId: "tx", tracerProvider: rec.provider }, (n) => registerConformance(n));
    const client = fx.client(node.address);
    async function* frames() {
      yield {
        calls: [
          {
            callId: 1n,
            kind: {
              case: "send" as const,
              value: {
                recipient: { type: "conformance", key: "c1" },
                envelope: { payload: encodePayload(EchoSchema, { text: "framed" }), metadata: { traceparent: TRACEPARENT, tracestate: "ravi=1" } },
              },
            },
            timeoutMillis: 5_000,
          },
        ],
      };
    }
    let outcomes = 0;
    for await (const response of client.agentService.multiplex(frames(), { timeoutMs: 5_000 })) {
      outcomes += response.calls.length;
    }
    assert.equal(outcomes, 1);
    const handle = only(rec.spans(), named("handle conformance", "tx"), "handle");
    assert.equal(handle.spanContext().traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert.equal(handle.parentSpanContext?.spanId, "00f067aa0ba902b7");
    assert.equal(handle.spanContext().traceState?.get("ravi"), "1");
  });

  test("a publish delivered over B's Subscribe stream: publish -> deliver, with a link", async () => {
    const rec = recorder();
    const b = await fx.started({ nodeId: "pb", tracerProvider: rec.provider }, (n) => registerConformance(n));
    const a = await fx.started({ nodeId: "pa", peers: { b: b.address }, tracerProvider: rec.provider });
    await b.waitForRoutes((r) => r.has("pa"));
    await eventually(
      async () => (await a.publish({ type: "conformance.events", source: "probe" }, EchoSchema, { text: "probe" })).streamDeliveries === 1,
      3_000,
      "b's stream on a",
    );
    const result = await a.publish({ type: "conformance.events", source: "s1" }, EchoSchema, { text: "over the stream" }, { messageId: "pub-1" });
    assert.deepEqual(result, { localDeliveries: 0, streamDeliveries: 1 });
    const isDeliver = (s: ReadableSpan): boolean => s.name === "deliver conformance" && s.attributes["messaging.message.id"] === "pub-1";
    await eventually(() => rec.spans().some(isDeliver), 3_000, "the deliver span on b");

    const spans = rec.spans();
    const publish = only(spans, (s) => s.name === "publish conformance.events" && s.attributes["messaging.message.id"] === "pub-1", "publish");
    const deliver = only(spans, isDeliver, "deliver");
    assert.equal(publish.kind, SpanKind.PRODUCER);
    assert.equal(deliver.kind, SpanKind.CONSUMER);
    assertChild(deliver, publish);
    assert.equal(deliver.links.length, 1);
    assert.equal(deliver.links[0]?.context.spanId, publish.spanContext().spanId);
    assert.equal(deliver.links[0]?.context.traceId, publish.spanContext().traceId);
    assert.deepEqual(
      { ...publish.attributes },
      {
        "messaging.system": "ravi",
        "ravi.node.id": "pa",
        "ravi.language": "node",
        "messaging.operation.type": "publish",
        "messaging.destination.name": "conformance.events",
        "ravi.topic.source": "s1",
        "ravi.message.type": "ravi.conformance.v1.Echo",
        "messaging.message.id": "pub-1",
      },
    );
    assert.deepEqual(
      { ...deliver.attributes },
      {
        "messaging.system": "ravi",
        "ravi.node.id": "pb",
        "ravi.language": "node",
        "messaging.operation.type": "process",
        "ravi.agent.type": "conformance",
        "ravi.agent.key": "s1",
        "ravi.topic.type": "conformance.events",
        "ravi.topic.source": "s1",
        "ravi.message.type": "ravi.conformance.v1.Echo",
        "messaging.message.id": "pub-1",
      },
    );
  });

  test("a handler's publish is a child of its handle span; a subscription hosted elsewhere delivers under the publish", async () => {
    const rec = recorder();
    const b = await fx.started({ nodeId: "hb", tracerProvider: rec.provider }, (n) => n.register("remote-sub", conformanceAgent()));
    const a = await fx.started({ nodeId: "ha", peers: { b: b.address }, tracerProvider: rec.provider }, (n) => {
      n.subscribe("remote-sub", { topicType: "remote.events" });
      n.register(
        "announcer",
        defineStatelessAgent().on(EchoSchema, async (echo, ctx) => {
          await ctx.publish({ type: "remote.events", source: "r1" }, EchoSchema, { text: echo.text }, { messageId: "ann-1" });
        }),
      );
    });
    await a.waitForRoute("remote-sub");
    await a.send({ type: "announcer", key: "k" }, EchoSchema, { text: "handed over" });
    const isDeliver = (s: ReadableSpan): boolean => s.name === "deliver remote-sub";
    await eventually(() => rec.spans().some(isDeliver), 3_000, "the deliver span on hb");
    const onB = fx.client(b.address);
    await eventually(async () => (await onB.call({ type: "remote-sub", key: "r1" }, ReportSchema, {}, ObservedSchema)).events.length === 1, 3_000, "delivery on b");
    const spans = rec.spans();
    const handle = only(spans, named("handle announcer", "ha"), "handle announcer");
    const publish = only(spans, named("publish remote.events", "ha"), "publish");
    const deliver = only(spans, named("deliver remote-sub", "hb"), "deliver");
    assertChild(publish, handle);
    assertChild(deliver, publish);
    assert.equal(deliver.links[0]?.context.spanId, publish.spanContext().spanId);
  });

  test("a Send forwarded through a middle node makes a forward span there", async () => {
    const rec = recorder();
    const c = await fx.started({ nodeId: "fc", tracerProvider: rec.provider }, (n) => n.register("far", conformanceAgent()));
    const m = await fx.started({ nodeId: "fm", peers: { c: c.address }, tracerProvider: rec.provider });
    await m.waitForRoute("far");
    // A client sends to m, which does not host "far": m forwards to c.
    const client = fx.client(m.address);
    const reply = await client.call({ type: "far", key: "k" }, EchoSchema, { text: "via m" }, EchoedSchema, { headers: { traceparent: TRACEPARENT } });
    assert.equal(reply.nodeId, "fc");
    const spans = rec.spans();
    const forward = only(spans, named("forward far", "fm"), "forward");
    const handle = only(spans, named("handle far", "fc"), "handle");
    assert.equal(forward.kind, SpanKind.INTERNAL);
    const atM = viaRpc(spans, forward, "00f067aa0ba902b7");
    assert.equal(forward.spanContext().traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
    // The forwarded envelope carries m's RPC span's context (a forward does not
    // change the message's trace context, as in Python), over Multiplex to c.
    assertChild(handle, atM);
    assert.equal(handle.spanContext().traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert.deepEqual(
      { ...forward.attributes },
      {
        "messaging.system": "ravi",
        "ravi.node.id": "fm",
        "ravi.language": "node",
        "ravi.route.hop_count": 1,
        "ravi.route.next_node": "fc",
      },
    );
    assert.equal(forward.status.code, SpanStatusCode.UNSET);
  });
});

describe("failures on spans", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("a failing handler: handle and send spans are ERROR with ravi.error.code and reason", async () => {
    const rec = recorder();
    const node = await fx.started({ nodeId: "err", tracerProvider: rec.provider }, (n) => registerConformance(n));
    await rejectsWith(node.send({ type: "conformance", key: "f" }, FailSchema, { code: 0, message: "it broke" }), Code.Unknown, "HANDLER_FAILED");
    const spans = rec.spans();
    for (const name of ["send conformance", "handle conformance"]) {
      const span = only(spans, named(name, "err"), name);
      assert.equal(span.status.code, SpanStatusCode.ERROR, name);
      assert.match(span.status.message ?? "", /it broke/);
      assert.equal(span.attributes["ravi.error.code"], "UNKNOWN", name);
      assert.equal(span.attributes["ravi.error.reason"], "HANDLER_FAILED", name);
      const exception = span.events.find((e) => e.name === "exception");
      assert.ok(exception !== undefined, `${name} records the exception`);
      // The handler's own exception is recorded, not the RaviError wrapping it.
      assert.equal(exception.attributes?.["exception.type"], "Error");
      assert.equal(exception.attributes?.["exception.message"], "it broke");
    }

    // A ravi error keeps its code and carries HANDLER_FAILED (errors.proto).
    rec.exporter.reset();
    await rejectsWith(node.send({ type: "conformance", key: "f" }, FailSchema, { code: Code.NotFound, message: "gone" }), Code.NotFound, "HANDLER_FAILED");
    const handle = only(rec.spans(), named("handle conformance", "err"), "handle");
    assert.equal(handle.attributes["ravi.error.code"], "NOT_FOUND");
    assert.equal(handle.attributes["ravi.error.reason"], "HANDLER_FAILED");

    // Failures before the handler (no handler for the type) fail the handle span too.
    rec.exporter.reset();
    node.register("nothing", defineStatelessAgent().on(FailSchema, () => undefined));
    await rejectsWith(node.send({ type: "nothing", key: "n" }, EchoSchema, {}), Code.Unimplemented, "NO_HANDLER");
    assert.equal(only(rec.spans(), named("handle nothing", "err"), "handle nothing").attributes["ravi.error.reason"], "NO_HANDLER");
  });

  test("a failing handler on another node fails the caller's send span with the remote code", async () => {
    const rec = recorder();
    const b = await fx.started({ nodeId: "eb", tracerProvider: rec.provider }, (n) => registerConformance(n, "far-fail"));
    const a = await fx.started({ nodeId: "ea", peers: { b: b.address }, tracerProvider: rec.provider });
    await a.waitForRoute("far-fail");
    a.registry.add(FailSchema);
    await rejectsWith(a.send({ type: "far-fail", key: "k" }, FailSchema, { code: Code.FailedPrecondition, message: "no" }), Code.FailedPrecondition);
    const send = only(rec.spans(), named("send far-fail", "ea"), "send");
    const handle = only(rec.spans(), named("handle far-fail", "eb"), "handle");
    assertChild(handle, send);
    assert.equal(send.attributes["ravi.error.code"], "FAILED_PRECONDITION");
    assert.equal(handle.attributes["ravi.error.code"], "FAILED_PRECONDITION");
    assert.equal(send.status.code, SpanStatusCode.ERROR);
  });

  test("a failing subscriber: the deliver span is ERROR", async () => {
    const rec = recorder();
    const node = await fx.started({ nodeId: "ed", tracerProvider: rec.provider }, (n) => {
      n.register(
        "grumpy",
        defineStatelessAgent().on(EchoSchema, () => {
          throw new RaviError(Code.FailedPrecondition, "not today", { reason: "REENTRANT_CALL" });
        }),
      );
      n.subscribe("grumpy", { topicType: "grumpy.events" });
    });
    await node.publish({ type: "grumpy.events", source: "g" }, EchoSchema, { text: "hello" });
    await eventually(() => rec.spans().some((s) => s.name === "deliver grumpy"), 3_000, "the deliver span");
    const deliver = only(rec.spans(), named("deliver grumpy", "ed"), "deliver");
    assert.equal(deliver.status.code, SpanStatusCode.ERROR);
    assert.equal(deliver.attributes["ravi.error.code"], "FAILED_PRECONDITION");
    assert.equal(deliver.attributes["ravi.error.reason"], "REENTRANT_CALL");
    assert.ok(deliver.events.some((e) => e.name === "exception"));
  });

  test("a Send refused by the forwarding node fails its forward span", async () => {
    const rec = recorder();
    const node = await fx.started({ nodeId: "fl", tracerProvider: rec.provider });
    const client = fx.client(node.address);
    await rejectsWith(client.send({ type: "nowhere", key: "k" }, EchoSchema, { text: "x" }), Code.NotFound, "AGENT_TYPE_NOT_FOUND");
    const forward = only(rec.spans(), named("forward nowhere", "fl"), "forward");
    assert.equal(forward.status.code, SpanStatusCode.ERROR);
    assert.equal(forward.attributes["ravi.error.code"], "NOT_FOUND");
    assert.equal(forward.attributes["ravi.error.reason"], "AGENT_TYPE_NOT_FOUND");
    assert.equal(forward.attributes["ravi.route.next_node"], undefined);
  });
});

describe("without a provider", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("the mesh works on the global no-op provider, and trace context passes through unchanged", async () => {
    let seen: { traceparent: string | undefined; active: boolean } | undefined;
    const b = await fx.started({ nodeId: "nb" }, (n) => {
      registerConformance(n, "leaf");
      n.register(
        "watcher",
        defineAgent({ state: () => ({}) }).on(EchoSchema, (_echo, ctx) => {
          seen = { traceparent: ctx.traceparent, active: trace.getActiveSpan()?.isRecording() ?? false };
        }),
      );
    });
    const a: RaviNode = await fx.started({ nodeId: "na", peers: { b: b.address } }, (n) => registerConformance(n));
    await a.waitForRoute("leaf");
    // A handler's nested send carries the caller's traceparent on.
    const reply = await a.call(
      { type: "conformance", key: "k" },
      ForwardSchema,
      { target: { type: "leaf", key: "x" }, text: "no tracing" },
      EchoedSchema,
      { traceparent: TRACEPARENT },
    );
    assert.equal(reply.nodeId, "nb");
    assert.equal(reply.metadata["traceparent"], TRACEPARENT);
    await a.send({ type: "watcher", key: "w" }, EchoSchema, { text: "x" }, { traceparent: TRACEPARENT });
    assert.deepEqual(seen, { traceparent: TRACEPARENT, active: false });
    // Without any trace context nothing is added.
    const plain = await a.call({ type: "leaf", key: "y" }, EchoSchema, { text: "plain" }, EchoedSchema);
    assert.equal(plain.metadata["traceparent"], undefined);
  });
});

test("setupTracing installs nothing without an endpoint, and an SDK provider with one", async () => {
  assert.equal(tracingConfigured(undefined, {}), false);
  assert.equal(tracingConfigured(undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: " " }), false);
  assert.equal(tracingConfigured(undefined, { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://127.0.0.1:4317" }), true);
  assert.equal(tracingConfigured("http://127.0.0.1:4317", {}), true);
  assert.equal(await setupTracing({ nodeId: "none", env: {} }), undefined);
  const installed = await setupTracing({ nodeId: "some", endpoint: "http://127.0.0.1:4317", env: {}, register: false });
  assert.ok(installed !== undefined);
  assert.equal(installed.endpoint, "http://127.0.0.1:4317");
  assert.equal(trace.getTracerProvider().getTracer("t").startSpan("x").isRecording(), false, "nothing registered globally");
  assert.equal(await installed.shutdown(), true);
});
