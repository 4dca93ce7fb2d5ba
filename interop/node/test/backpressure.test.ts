// Back-pressure: a publish delivery waits for room in a full mailbox until its
// deadline (first come, first served), a send to a full mailbox fails at once.
import { strict as assert } from "node:assert";
import { after, describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { TaskResultSchema, TaskSchema } from "@ravi-mesh/contract/ravi/examples/v1/examples_pb";
import { PublishRequestSchema } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { EnvelopeSchema, TopicIdSchema } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import { defineAgent } from "../src/agent.js";
import { registerConformance } from "../src/agents/conformance.js";
import { encodePayload } from "../src/codec.js";
import { asRaviError } from "../src/errors.js";
import type { RaviNode } from "../src/node.js";
import { Code, eventually, Fixture, rejectsWith, testLogger } from "../test-support/helpers.js";

const T = { timeout: 20_000 };
const TOPIC = "jobs";

/** Records Task.content in order; each handler takes Task.threadId ms (ignoring cancellation). */
function slowAgent(seen: string[]) {
  return defineAgent<null>({ state: () => null }).on(TaskSchema, TaskResultSchema, async (task) => {
    await new Promise((r) => setTimeout(r, Number(task.threadId) || 0));
    seen.push(task.content);
    return { content: task.content };
  });
}

const task = (content: string, millis: number) => ({ content, threadId: String(millis) });

/** Waits until the sink's Subscribe stream on `origin` is open (a warm-up event reaches it, on its own key). */
async function streamOpen(origin: RaviNode): Promise<void> {
  await eventually(
    async () => (await origin.publish({ type: TOPIC, source: "warmup" }, TaskSchema, task("warmup", 0))).streamDeliveries === 1,
    5_000,
    "the peer's stream",
  );
}

describe("publish back-pressure", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("publishes beyond the capacity wait for room and are all delivered in order", async () => {
    const seen: string[] = [];
    const node = await fx.started({ nodeId: "bp-order", mailboxCapacity: 2 }, (n) => {
      n.register("slow", slowAgent(seen));
      n.subscribe("slow", { topicType: TOPIC });
    });
    const client = fx.client(node.address);
    // Over the wire, one after the other: each returns once its event is queued.
    const started = Date.now();
    for (let i = 0; i < 6; i++) {
      const result = await client.publish({ type: TOPIC, source: "s" }, TaskSchema, task(`rpc${i}`, 40));
      assert.equal(result.localDeliveries, 1);
    }
    // Six 40 ms handlers through a mailbox of 2 (one running): the last publishes had to wait.
    assert.ok(Date.now() - started >= 80, `publishes returned after ${Date.now() - started} ms: nobody waited`);
    // In process, all at once: the waiters get room in the order they came.
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) => node.publish({ type: TOPIC, source: "s" }, TaskSchema, task(`local${i}`, 10))),
    );
    assert.deepEqual(
      results.map((r) => r.localDeliveries),
      [1, 1, 1, 1, 1, 1],
    );
    const expected = [...Array.from({ length: 6 }, (_, i) => `rpc${i}`), ...Array.from({ length: 6 }, (_, i) => `local${i}`)];
    await eventually(() => seen.length === expected.length, 5_000, "every event handled");
    assert.deepEqual(seen, expected);
  });

  test("a publish that gets no room before its deadline is RESOURCE_EXHAUSTED MAILBOX_FULL; a send fails at once", async () => {
    const seen: string[] = [];
    const node = await fx.started({ nodeId: "bp-full", mailboxCapacity: 1 }, (n) => {
      n.register("slow", slowAgent(seen));
      n.subscribe("slow", { topicType: TOPIC });
    });
    const client = fx.client(node.address);
    const topic = { type: TOPIC, source: "f" };
    await client.publish(topic, TaskSchema, task("running", 600));
    await client.publish(topic, TaskSchema, task("queued", 0));
    // The mailbox stays full for ~600 ms: a 150 ms publish deadline passes
    // first. The node answers RESOURCE_EXHAUSTED MAILBOX_FULL then (as Go and
    // Python do); the gRPC deadline is sent without a client-side timer here,
    // which would otherwise win the race and report DEADLINE_EXCEEDED itself.
    const request = create(PublishRequestSchema, {
      topic: create(TopicIdSchema, topic),
      envelope: create(EnvelopeSchema, { payload: encodePayload(TaskSchema, task("late", 0)) }),
    });
    const before = Date.now();
    const error = await rejectsWith(
      client.agentService.publish(request, { headers: { "grpc-timeout": "150m" } }).catch((e: unknown) => {
        throw asRaviError(e);
      }),
      Code.ResourceExhausted,
      "MAILBOX_FULL",
    );
    assert.match(error.message, /mailbox of slow\/f stayed full \(1 messages\) until the publish deadline/);
    assert.ok(Date.now() - before >= 100, "the publish waited for room before failing");
    // A caller with the same deadline on its own clock sees its deadline pass.
    await rejectsWith(client.publish(topic, TaskSchema, task("late2", 0), { timeoutMs: 150 }), Code.DeadlineExceeded);
    // A unary Send to the full mailbox fails at once, without waiting.
    const sent = Date.now();
    await rejectsWith(client.send({ type: "slow", key: "f" }, TaskSchema, task("sent", 0)), Code.ResourceExhausted, "MAILBOX_FULL");
    assert.ok(Date.now() - sent < 150, `the send took ${Date.now() - sent} ms`);
    await eventually(() => seen.length === 2, 5_000, "the queued events handled");
    // The publish that failed was never delivered.
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(seen, ["running", "queued"]);
  });

  test("events from a peer's stream wait for room, in order, and are dropped only at their deadline", async () => {
    const seen: string[] = [];
    const a = await fx.started({ nodeId: "bp-origin" }, (n) => registerConformance(n));
    const logger = testLogger("bp-sink");
    const b = await fx.started({ nodeId: "bp-sink", mailboxCapacity: 2, peers: { a: a.address }, logger }, (n) => {
      n.register("slow", slowAgent(seen));
      n.subscribe("slow", { topicType: TOPIC });
    });
    await b.waitForRoute("conformance", { nodeId: "bp-origin" });
    await streamOpen(a);
    // a queues every event on b's stream at once; b reads them as room comes.
    for (let i = 0; i < 8; i++) {
      const result = await a.publish({ type: TOPIC, source: "p" }, TaskSchema, task(`peer${i}`, 30));
      assert.equal(result.streamDeliveries, 1);
    }
    await eventually(() => seen.filter((s) => s !== "warmup").length === 8, 5_000, "every peer event handled");
    assert.deepEqual(
      seen.filter((s) => s !== "warmup"),
      Array.from({ length: 8 }, (_, i) => `peer${i}`),
    );
    assert.ok(!logger.lines.some((l) => l.includes("dropped")), logger.lines.join("\n"));
  });

  test("an event from a peer that gets no room before its deadline is dropped with a warning naming the mailbox", async () => {
    const seen: string[] = [];
    const a = await fx.started({ nodeId: "bp-origin2" }, (n) => registerConformance(n));
    const logger = testLogger("bp-sink2");
    const b = await fx.started(
      { nodeId: "bp-sink2", mailboxCapacity: 1, eventTimeoutMs: 150, abortGraceMs: 2_000, peers: { a: a.address }, logger },
      (n) => {
        n.register("slow", slowAgent(seen));
        n.subscribe("slow", { topicType: TOPIC });
      },
    );
    await b.waitForRoute("conformance", { nodeId: "bp-origin2" });
    await streamOpen(a);
    // The first handler ignores its cancellation and holds the mailbox for 800 ms.
    for (const [i, millis] of [800, 0, 0].entries()) {
      await a.publish({ type: TOPIC, source: "d" }, TaskSchema, task(`d${i}`, millis));
    }
    await eventually(
      () => logger.lines.some((l) => l.includes("dropped") && l.includes("mailbox of slow/d stayed full")),
      3_000,
      "a warning about the dropped event",
    );
  });
});
