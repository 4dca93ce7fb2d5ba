// A mesh of Node nodes on 127.0.0.1: routing, rendezvous, forwarding,
// publish over streams, peer restarts, and the Connect stream.
import { strict as assert } from "node:assert";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, describe, test } from "node:test";

import { Code as ConnectCode, ConnectError, type ServiceImpl } from "@connectrpc/connect";
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
  type ConnectRequestSchema,
} from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { CONTRACT_VERSION } from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import type { Payload } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import { conformanceAgent, registerConformance } from "../src/agents/conformance.js";
import { encodePayload } from "../src/codec.js";
import { rendezvousPick, rendezvousScore } from "../src/rendezvous.js";
import { Code, eventually, Fixture, rejectsWith } from "../test-support/helpers.js";

const T = { timeout: 20_000 };

type Frame = MessageInitShape<typeof CallFrameSchema>;
type Request = MessageInitShape<typeof ConnectRequestSchema>;

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
      assert.equal(error.metadata["node_id"], "ghost-node");
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
    await rejectsWith(client.send({ type: "restarting", key: "k" }, EchoSchema, { text: "down" }), Code.NotFound, "AGENT_TYPE_NOT_FOUND");
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

describe("Connect stream", T, () => {
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
    for await (const response of client.agentService.connect(frames(), { timeoutMs: 5_000 })) {
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
    assert.deepEqual(outcomes, ["2:ok:mux", `3:${Code.NotFound}:AGENT_TYPE_NOT_FOUND`, "1:ok:mux"]);
    const observed = await client.call({ type: "conformance", key: "cancelled" }, ReportSchema, {}, ObservedSchema);
    assert.deepEqual(observed.cancelled, ["cx"]);
  });
});
