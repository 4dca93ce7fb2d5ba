// A mesh of Node nodes on 127.0.0.1: routing, rendezvous, forwarding,
// publish over streams, peer restarts, and the Multiplex stream.
import { strict as assert } from "node:assert";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { AddressInfo } from "node:net";
import { after, describe, test } from "node:test";

import { Code as ConnectCode, ConnectError, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  EchoSchema,
  EchoedSchema,
  ForwardSchema,
  ObservedSchema,
  ReportSchema,
  SleepSchema,
} from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  AgentService,
  PublishScope,
  type CallFrameSchema,
  type MultiplexRequestSchema,
} from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { CONTRACT_VERSION } from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import type { Payload } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import { defineAgent } from "../src/agent.js";
import { conformanceAgent, registerConformance } from "../src/agents/conformance.js";
import { encodePayload } from "../src/codec.js";
import { rendezvousPick, rendezvousScore } from "../src/rendezvous.js";
import { Code, eventually, Fixture, rejectsWith } from "../test-support/helpers.js";

const T = { timeout: 20_000 };

type Frame = MessageInitShape<typeof CallFrameSchema>;
type Request = MessageInitShape<typeof MultiplexRequestSchema>;

test("rendezvous scores are the first 8 bytes of SHA-256, big-endian", () => {
  // The same values as Python's ravi.integrations.runtime.grpc._wire.rendezvous_score.
  assert.equal(rendezvousScore("node-a", "writer", "k1"), 10261073898363062150n);
  assert.equal(rendezvousScore("rb", "shared", "key-3"), 2986226021884378501n);
  assert.equal(rendezvousPick(["a"], "t", "k"), "a");
  assert.equal(rendezvousPick([], "t", "k"), undefined);
  const winner = rendezvousPick(["a", "b", "c"], "t", "k");
  const best = ["a", "b", "c"].reduce((x, y) => (rendezvousScore(x, "t", "k") >= rendezvousScore(y, "t", "k") ? x : y));
  assert.equal(winner, best);
});

describe("routing and forwarding", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("a Send for a peer's type goes to the peer, which learns the caller", async () => {
    const b = await fx.started({ nodeId: "b" }, (n) => registerConformance(n, "conformance-b"));
    const a = await fx.started({ nodeId: "a", peers: { b: b.address } });
    await a.waitForRoute("conformance-b");
    const client = fx.client(a.address);
    const echoed = await client.call({ type: "conformance-b", key: "k" }, EchoSchema, { text: "via a" }, EchoedSchema);
    assert.equal(echoed.nodeId, "b");
    const reply = await client.send({ type: "conformance-b", key: "k" }, EchoSchema, { text: "x" });
    assert.equal(reply.nodeId, "b");
    // b learned a from a's Describe(caller) and peers with it too.
    await eventually(() => b.peers().some((p) => p.nodeId === "a" && p.connected), 3_000, "b peering with a");
    const info = b.routingTable().get("a");
    assert.equal(info?.language, "node");
    assert.equal(info?.address, a.address);
  });

  test("two nodes hosting one type: each key lands on its rendezvous winner", async () => {
    const b = await fx.started({ nodeId: "rb" }, (n) => n.register("shared", conformanceAgent()));
    const c = await fx.started({ nodeId: "rc" }, (n) => n.register("shared", conformanceAgent()));
    const a = await fx.started({ nodeId: "ra", peers: { b: b.address, c: c.address } });
    await a.waitForRoutes((r) => r.has("rb") && r.has("rc"));
    const client = fx.client(a.address);
    const landed = new Set<string>();
    for (let i = 0; i < 24; i += 1) {
      const key = `key-${i}`;
      const reply = await client.send({ type: "shared", key }, EchoSchema, { text: key });
      assert.equal(reply.nodeId, rendezvousPick(["rb", "rc"], "shared", key), key);
      // the same key always lands on the same node
      assert.equal((await client.send({ type: "shared", key }, EchoSchema, { text: key })).nodeId, reply.nodeId);
      landed.add(reply.nodeId);
    }
    assert.deepEqual([...landed].sort(), ["rb", "rc"]);
  });

  test("routes record forwarding: hop limit, loops, and visited peers are refused", async () => {
    const b = await fx.started({ nodeId: "fb" }, (n) => registerConformance(n, "far"));
    const a = await fx.started({ nodeId: "fa", peers: { b: b.address } });
    await a.waitForRoute("far");
    const client = fx.client(a.address);
    const echo = encodePayload(EchoSchema, { text: "r" });
    const far = { type: "far", key: "k" };
    assert.equal((await client.sendPayload(far, echo, { route: { hopCount: 7, visitedNodeIds: ["x1"] } })).nodeId, "fb");
    await rejectsWith(client.sendPayload(far, echo, { route: { hopCount: 8 } }), Code.FailedPrecondition, "HOP_LIMIT_EXCEEDED");
    await rejectsWith(client.sendPayload(far, echo, { route: { hopCount: 1, visitedNodeIds: ["fa"] } }), Code.FailedPrecondition, "FORWARDING_LOOP");
    await rejectsWith(client.sendPayload(far, echo, { route: { hopCount: 1, visitedNodeIds: ["fb"] } }), Code.NotFound, "AGENT_TYPE_NOT_FOUND");
    // Forwarded errors keep their status and reason.
    await rejectsWith(
      client.sendPayload(far, encodePayload(SleepSchema, { millis: 5_000, tag: "t" }), { timeoutMs: 150 }),
      Code.DeadlineExceeded,
    );
    await rejectsWith(client.sendPayload(far, echo, { callChain: [far] }), Code.FailedPrecondition, "REENTRANT_CALL");
    // A handler's nested send to another node carries its sender and call chain.
    const local = await fx.started({ nodeId: "fc", peers: { b: b.address } }, (n) => registerConformance(n));
    await local.waitForRoute("far");
    const echoed = await fx
      .client(local.address)
      .call({ type: "conformance", key: "me" }, ForwardSchema, { target: far, text: "nested" }, EchoedSchema);
    assert.equal(echoed.nodeId, "fb");
    assert.equal(echoed.sender?.key, "me");
  });

  test("an unreachable peer is UNAVAILABLE / PEER_UNAVAILABLE within the deadline", async () => {
    // A peer that describes itself as hosting "ghost" but cannot serve it.
    const info = { nodeId: "ghost-node", contractVersion: CONTRACT_VERSION, language: "test", agentTypes: [{ agentType: "ghost", handledTypes: [] }] };
    const impl: Partial<ServiceImpl<typeof AgentService>> = {
      describe: () => ({ node: info }),
      async *subscribe(_request, ctx) {
        yield { kind: { case: "node", value: info } };
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
      },
      send: () => {
        throw new ConnectError("connection refused", ConnectCode.Unavailable);
      },
    };
    const server = http2.createServer(connectNodeAdapter({ routes: (r) => r.service(AgentService, impl), grpc: true, connect: false, grpcWeb: false }));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const port = (server.address() as AddressInfo).port;
      const a = await fx.started({ nodeId: "ua", peers: { ghost: `127.0.0.1:${port}` } });
      await a.waitForRoute("ghost");
      const started = Date.now();
      const error = await rejectsWith(fx.client(a.address).send({ type: "ghost", key: "k" }, EchoSchema, { text: "x" }, { timeoutMs: 2_000 }), Code.Unavailable, "PEER_UNAVAILABLE");
      // The node that decided, and the peer it could not reach.
      assert.deepEqual([error.metadata["node_id"], error.metadata["peer_address"]], ["ua", `127.0.0.1:${port}`]);
      assert.ok(Date.now() - started < 2_000);
      await a.stop(100);
    } finally {
      server.close();
      server.emit("close");
    }
  });
});

describe("publishing across nodes", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("an event published on one node reaches another node's subscriber over its stream", async () => {
    const b = await fx.started({ nodeId: "pb" }, (n) => registerConformance(n));
    const a = await fx.started({ nodeId: "pa", peers: { b: b.address } });
    // b learns a and subscribes to it with its own filters.
    await b.waitForRoutes((r) => r.has("pa"));
    const client = fx.client(a.address);
    await eventually(
      async () => (await client.publish({ type: "conformance.events", source: "probe" }, EchoSchema, { text: "probe" })).streamDeliveries === 1,
      3_000,
      "b's stream on a",
    );
    const result = await client.publish({ type: "conformance.events", source: "s1" }, EchoSchema, { text: "over the stream" }, { headers: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" } });
    assert.deepEqual(result, { localDeliveries: 0, streamDeliveries: 1 });
    const onB = fx.client(b.address);
    await eventually(async () => (await onB.call({ type: "conformance", key: "s1" }, ReportSchema, {}, ObservedSchema)).events.length === 1, 3_000, "delivery on b");
    const observed = await onB.call({ type: "conformance", key: "s1" }, ReportSchema, {}, ObservedSchema);
    assert.deepEqual(observed.events, ["over the stream"]);

    // PUBLISH_SCOPE_NODE stays on the node.
    const nodeOnly = await client.publish({ type: "conformance.events", source: "s2" }, EchoSchema, { text: "local only" }, { scope: PublishScope.NODE });
    assert.deepEqual(nodeOnly, { localDeliveries: 0, streamDeliveries: 0 });

    // A plain client stream sees the event with the publisher's traceparent.
    const seen: string[] = [];
    const controller = new AbortController();
    const watching = (async () => {
      for await (const message of fx.client(a.address).subscribe([{ topicTypePrefix: "conformance." }], { subscriberId: "test", signal: controller.signal })) {
        if (message.kind.case === "node") {
          seen.push(`node:${message.kind.value.nodeId}`);
        } else if (message.kind.case === "event") {
          seen.push(`event:${message.kind.value.originNodeId}:${message.kind.value.envelope?.metadata["traceparent"] ?? "-"}`);
          controller.abort();
        }
      }
    })();
    await eventually(() => seen.length === 1, 2_000, "the stream's first node info");
    await client.publish({ type: "conformance.events", source: "s3" }, EchoSchema, { text: "watched" }, { headers: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" } });
    await watching;
    assert.deepEqual(seen, ["node:pa", "event:pa:00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]);
  });

  test("a subscription naming a type hosted elsewhere hands the event to that node", async () => {
    const b = await fx.started({ nodeId: "hb" }, (n) => n.register("remote-sub", conformanceAgent()));
    const a = await fx.started({ nodeId: "ha", peers: { b: b.address } }, (n) => n.subscribe("remote-sub", { topicType: "remote.events" }));
    await a.waitForRoute("remote-sub");
    const result = await fx.client(a.address).publish({ type: "remote.events", source: "r1" }, EchoSchema, { text: "handed over" });
    assert.equal(result.localDeliveries, 1);
    const onB = fx.client(b.address);
    await eventually(async () => (await onB.call({ type: "remote-sub", key: "r1" }, ReportSchema, {}, ObservedSchema)).events.length === 1, 3_000, "delivery on b");
  });

  test("a loop of publishes streams its events while it runs, beyond the stream's queue", async () => {
    // A publisher that awaits nothing but its publishes still lets the stream
    // send: the subscriber gets events while the loop runs, and a loop three
    // times the stream's queue does not end a subscriber that keeps up.
    const capacity = 1_000;
    const count = 3 * capacity;
    let published = 0;
    let received = 0;
    let firstAfter: number | undefined;
    const b = await fx.started({ nodeId: "lb" }, (n) => {
      n.register(
        "counter",
        defineAgent<null>({ state: () => null }).on(EchoSchema, EchoSchema, (echo) => {
          firstAfter ??= published;
          received += 1;
          return echo;
        }),
      );
      n.subscribe("counter", { topicType: "loop.events" });
    });
    const a = await fx.started({ nodeId: "la", peers: { b: b.address }, streamQueueCapacity: capacity });
    await eventually(
      async () => (await a.publish({ type: "loop.events", source: "warmup" }, EchoSchema, { text: "w" })).streamDeliveries === 1,
      3_000,
      "b's stream on a",
    );
    await eventually(() => received > 0, 3_000, "the warm-up event on b");
    [received, firstAfter] = [0, undefined];
    for (; published < count; published++) {
      const result = await a.publish({ type: "loop.events", source: "s" }, EchoSchema, { text: String(published) });
      assert.equal(result.streamDeliveries, 1, `publish ${published} found no stream`);
    }
    await eventually(() => received === count, 10_000, "every event on b");
    assert.ok(firstAfter !== undefined && firstAfter < count, `the first event arrived after ${firstAfter} of ${count} publishes`);
  });
});

describe("peer restart", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("a restarted peer is reconnected with backoff and its new incarnation noticed", async () => {
    const b1 = await fx.started({ nodeId: "sb" }, (n) => registerConformance(n, "restarting"));
    const port = Number(b1.address.split(":")[1]);
    const a = await fx.started({ nodeId: "sa", peers: { b: b1.address } });
    await a.waitForRoute("restarting");
    const client = fx.client(a.address);
    assert.equal((await client.send({ type: "restarting", key: "k" }, EchoSchema, { text: "1" })).nodeId, "sb");
    const first = a.routingTable().get("sb")?.incarnation;

    await b1.stop(100);
    await a.waitForRoutes((r) => !r.has("sb"), 3_000);
    // While b is unreachable its types are UNAVAILABLE; a type nobody hosted is NOT_FOUND.
    const down = await rejectsWith(client.send({ type: "restarting", key: "k" }, EchoSchema, { text: "down" }), Code.Unavailable, "PEER_UNAVAILABLE");
    assert.deepEqual([down.metadata["node_id"], down.metadata["peer_address"]], ["sa", b1.address]);
    await rejectsWith(client.send({ type: "never-hosted", key: "k" }, EchoSchema, { text: "x" }), Code.NotFound, "AGENT_TYPE_NOT_FOUND");
    await new Promise((r) => setTimeout(r, 600)); // let a's backoff grow

    const b2 = await fx.started({ nodeId: "sb", port }, (n) => registerConformance(n, "restarting"));
    const started = Date.now();
    await a.waitForRoute("restarting", { timeoutMs: 5_000 });
    assert.ok(Date.now() - started < 3_000, `reconnected after ${Date.now() - started} ms`);
    assert.notEqual(a.routingTable().get("sb")?.incarnation, first);
    assert.equal(a.routingTable().get("sb")?.incarnation, b2.incarnation);
    assert.equal((await client.send({ type: "restarting", key: "k" }, EchoSchema, { text: "2" })).nodeId, "sb");
  });
});

describe("Multiplex stream", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("calls multiplex on one stream, complete in any order, and can be cancelled", async () => {
    const node = await fx.started({ nodeId: "mux" }, (n) => registerConformance(n));
    const client = fx.client(node.address);
    const to = { type: "conformance", key: "c" };
    let release: () => void = () => undefined;
    const hold = new Promise<void>((r) => {
      release = r;
    });
    const send = (callId: bigint, recipient: { type: string; key: string }, payload: Payload, timeoutMillis = 0): Frame => ({
      callId,
      kind: { case: "send", value: { recipient, envelope: { payload } } },
      timeoutMillis,
    });
    async function* frames(): AsyncGenerator<Request> {
      // The first request batches three calls; the rest come one per request.
      yield {
        calls: [
          send(1n, { type: "conformance", key: "slow" }, encodePayload(SleepSchema, { millis: 300, tag: "slow" }), 5_000),
          send(2n, to, encodePayload(EchoSchema, { text: "fast" })),
          send(3n, { type: "nobody", key: "k" }, encodePayload(EchoSchema, { text: "x" })),
        ],
      };
      yield { calls: [send(4n, { type: "conformance", key: "cancelled" }, encodePayload(SleepSchema, { millis: 5_000, tag: "cx" }))] };
      await new Promise((r) => setTimeout(r, 50));
      yield { calls: [{ callId: 4n, kind: { case: "cancel", value: {} } }] };
      await hold;
    }
    const outcomes: string[] = [];
    for await (const response of client.agentService.multiplex(frames(), { timeoutMs: 5_000 })) {
      for (const call of response.calls) {
        const outcome = call.outcome;
        outcomes.push(
          outcome.case === "result"
            ? `${call.callId}:ok:${outcome.value.nodeId}`
            : `${call.callId}:${outcome.case === "failure" ? `${outcome.value.code}:${outcome.value.reason}` : "?"}`,
        );
      }
      if (outcomes.length === 3) {
        release();
      }
    }
    // The failure and the fast call complete in either order (the fast one
    // activates its agent first, loading its state), both before the slow one.
    assert.deepEqual(outcomes.slice(0, 2).sort(), ["2:ok:mux", `3:${Code.NotFound}:AGENT_TYPE_NOT_FOUND`]);
    assert.equal(outcomes[2], "1:ok:mux");
    const observed = await client.call({ type: "conformance", key: "cancelled" }, ReportSchema, {}, ObservedSchema);
    assert.deepEqual(observed.cancelled, ["cx"]);
  });
});

/** A server interceptor counting the AgentService methods a node serves. */
function counting(): { counts: Map<string, number>; interceptor: Interceptor } {
  const counts = new Map<string, number>();
  return {
    counts,
    interceptor: (next) => async (req) => {
      counts.set(req.method.name, (counts.get(req.method.name) ?? 0) + 1);
      return next(req);
    },
  };
}

/** Serves `impl` (a partial AgentService) on 127.0.0.1; close() stops it and cuts its connections. */
async function fakePeer(impl: Partial<ServiceImpl<typeof AgentService>>, interceptor?: Interceptor): Promise<{ address: string; close(): void }> {
  const sessions = new Set<http2.ServerHttp2Session>();
  const server = http2.createServer(
    connectNodeAdapter({ routes: (r) => r.service(AgentService, impl), interceptors: interceptor === undefined ? [] : [interceptor], grpc: true, connect: false, grpcWeb: false }),
  );
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => {
      server.close();
      for (const session of sessions) {
        session.destroy();
      }
    },
  };
}

describe("sends to peers over the Multiplex stream", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("a node's sends to a peer share one Multiplex stream", async () => {
    const served = counting();
    const b = await fx.started({ nodeId: "xb", interceptors: [served.interceptor] }, (n) => registerConformance(n));
    const a = await fx.started({ nodeId: "xa", peers: { b: b.address } });
    await a.waitForRoute("conformance");
    const replies = await Promise.all(
      Array.from({ length: 64 }, (_, i) => a.call({ type: "conformance", key: `k${i % 8}` }, EchoSchema, { text: `t${i}` }, EchoedSchema)),
    );
    assert.deepEqual(
      replies.map((r) => `${r.nodeId}:${r.text}`),
      Array.from({ length: 64 }, (_, i) => `xb:t${i}`),
    );
    assert.equal(served.counts.get("Multiplex"), 1);
    assert.equal(served.counts.get("Send"), undefined);
  });

  test("a deadline or an abort on the caller's side cancels the peer's handler", async () => {
    const b = await fx.started({ nodeId: "yb" }, (n) => registerConformance(n));
    const a = await fx.started({ nodeId: "ya", peers: { b: b.address } });
    await a.waitForRoute("conformance");
    const sleeper = { type: "conformance", key: "sleeper" };
    const started = Date.now();
    await rejectsWith(a.send(sleeper, SleepSchema, { millis: 10_000, tag: "short" }, { timeoutMs: 200 }), Code.DeadlineExceeded);
    assert.ok(Date.now() - started < 3_000);
    await rejectsWith(a.send(sleeper, SleepSchema, { millis: 10_000, tag: "gave up" }, { signal: AbortSignal.timeout(100) }), Code.Canceled);
    await eventually(async () => {
      const observed = await b.call(sleeper, ReportSchema, {}, ObservedSchema);
      return observed.cancelled.join(",") === "short,gave up";
    }, 5_000, "both handlers to be cancelled");
  });

  test("calls in flight fail UNAVAILABLE / PEER_UNAVAILABLE when the stream breaks", async () => {
    const info = { nodeId: "breaking", contractVersion: CONTRACT_VERSION, language: "test", agentTypes: [{ agentType: "held", handledTypes: [] }] };
    let received = 0;
    const peer = await fakePeer({
      describe: () => ({ node: info }),
      async *subscribe(_request, ctx) {
        yield { kind: { case: "node", value: info } };
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
      },
      async *multiplex(requests) {
        // Reads the calls and never answers them.
        for await (const request of requests) {
          received += request.calls.length;
        }
      },
    });
    try {
      const a = await fx.started({ nodeId: "za", peers: { p: peer.address } });
      await a.waitForRoute("held");
      const started = Date.now();
      const failing = rejectsWith(a.send({ type: "held", key: "k" }, EchoSchema, { text: "x" }, { timeoutMs: 10_000 }), Code.Unavailable, "PEER_UNAVAILABLE");
      await eventually(() => received === 1, 3_000, "the call to reach the peer");
      peer.close();
      const error = await failing;
      assert.deepEqual([error.metadata["node_id"], error.metadata["peer_address"]], ["za", peer.address]);
      assert.ok(Date.now() - started < 5_000);
    } finally {
      peer.close();
    }
  });

  test("a peer without Multiplex (contract 1.1.0) is called with unary Send", async () => {
    const info = { nodeId: "legacy", contractVersion: "1.1.0", language: "test", agentTypes: [{ agentType: "old", handledTypes: [] }] };
    const served = counting();
    const peer = await fakePeer(
      {
        describe: () => ({ node: info }),
        async *subscribe(_request, ctx) {
          yield { kind: { case: "node", value: info } };
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
        },
        send: (request) => ({ nodeId: "legacy", result: encodePayload(EchoedSchema, { text: `legacy ${request.recipient?.key ?? ""}` }) }),
      },
      served.interceptor,
    );
    try {
      const a = await fx.started({ nodeId: "la", peers: { legacy: peer.address } });
      await a.waitForRoute("old");
      for (const key of ["k1", "k2", "k3", "k4", "k5"]) {
        const echoed = await a.call({ type: "old", key }, EchoSchema, { text: "x" }, EchoedSchema);
        assert.equal(echoed.text, `legacy ${key}`);
      }
      assert.equal(served.counts.get("Multiplex"), 1);
      assert.equal(served.counts.get("Send"), 5);
    } finally {
      peer.close();
    }
  });
});

/** A port free on 127.0.0.1 now. */
async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

/**
 * A TCP proxy to `target` that can freeze: a frozen proxy keeps its
 * connections open and passes nothing on, as a SIGSTOPped peer does.
 */
async function freezableProxy(target: () => string): Promise<{ address: string; freeze(): void; thaw(): void; close(): void }> {
  const sockets = new Set<net.Socket>();
  let frozen = false;
  const server = net.createServer((client) => {
    if (frozen) {
      sockets.add(client); // accepted by the kernel, never answered
      return;
    }
    const address = target();
    const upstream = net.connect({ host: address.slice(0, address.lastIndexOf(":")), port: Number(address.slice(address.lastIndexOf(":") + 1)) });
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(from);
      from.on("data", (chunk) => {
        if (!frozen) {
          to.write(chunk);
        }
      });
      from.on("error", () => to.destroy());
      from.on("close", () => to.destroy());
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    freeze: () => {
      frozen = true;
    },
    thaw: () => {
      frozen = false;
      for (const socket of sockets) {
        socket.destroy();
      }
      sockets.clear();
    },
    close: () => {
      server.close();
      for (const socket of sockets) {
        socket.destroy();
      }
    },
  };
}

describe("a frozen peer", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("is ejected by keepalive: its calls fail PEER_UNAVAILABLE, its types too, and it comes back", async () => {
    // b is reached through the proxy only: it advertises the proxy's address.
    const port = await freePort();
    const proxy = await freezableProxy(() => `127.0.0.1:${port}`);
    await fx.started({ nodeId: "fb", port, advertiseAddress: proxy.address }, (n) => registerConformance(n, "frozen"));
    try {
      const a = await fx.started({ nodeId: "fa", peers: { b: proxy.address }, keepaliveTimeMs: 2_000, keepaliveTimeoutMs: 500 });
      await a.waitForRoute("frozen");
      assert.equal((await a.call({ type: "frozen", key: "k" }, EchoSchema, { text: "up" }, EchoedSchema)).nodeId, "fb");
      proxy.freeze();
      const frozenAt = Date.now();
      const inFlight = await rejectsWith(a.send({ type: "frozen", key: "k" }, EchoSchema, { text: "x" }, { timeoutMs: 20_000 }), Code.Unavailable, "PEER_UNAVAILABLE");
      assert.ok(Date.now() - frozenAt < 2_000 + 500 + 1_500, `ejected after ${Date.now() - frozenAt} ms`);
      assert.equal(inFlight.metadata["peer_address"], proxy.address);
      // The next calls fail at once: the type's only host is known but unreachable.
      const started = Date.now();
      await rejectsWith(a.send({ type: "frozen", key: "k2" }, EchoSchema, { text: "x" }, { timeoutMs: 20_000 }), Code.Unavailable, "PEER_UNAVAILABLE");
      assert.ok(Date.now() - started < 1_000);
      proxy.thaw();
      await a.waitForRoute("frozen", { timeoutMs: 10_000 });
      assert.equal((await a.call({ type: "frozen", key: "k" }, EchoSchema, { text: "back" }, EchoedSchema)).nodeId, "fb");
    } finally {
      proxy.close();
    }
  });
});
