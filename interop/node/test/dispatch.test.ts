// Dispatch, mailboxes, deadlines and cancellation on one node.
import { strict as assert } from "node:assert";
import { after, before, describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import {
  EchoSchema,
  EchoedSchema,
  ForwardSchema,
  ObservedSchema,
  ReportSchema,
  SleepSchema,
  SleptSchema,
} from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";
import { TaskResultSchema, TaskSchema } from "@ravi-mesh/contract/ravi/examples/v1/examples_pb";
import { PayloadSchema } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import { defineAgent, defineStatelessAgent } from "../src/agent.js";
import { registerConformance } from "../src/agents/conformance.js";
import { encodePayload } from "../src/codec.js";
import type { RaviNode } from "../src/node.js";
import type { RaviClient } from "../src/client.js";
import { Code, Fixture, rejectsWith } from "../test-support/helpers.js";

const T = { timeout: 15_000 };

interface OrderState {
  seen: string[];
  running: number;
  maxRunning: number;
}

/** Records the order of Task.content per key and how many ran at once. */
function orderAgent() {
  return defineAgent<OrderState>({ state: () => ({ seen: [], running: 0, maxRunning: 0 }) }).on(
    TaskSchema,
    TaskResultSchema,
    async (task, ctx) => {
      ctx.state.running += 1;
      ctx.state.maxRunning = Math.max(ctx.state.maxRunning, ctx.state.running);
      await new Promise((r) => setTimeout(r, Number(task.threadId) || 0));
      ctx.state.seen.push(task.content);
      ctx.state.running -= 1;
      return { threadId: task.threadId, content: ctx.state.seen.join(","), steps: ctx.state.maxRunning };
    },
  );
}

describe("dispatch on one node", T, () => {
  const fx = new Fixture();
  let node: RaviNode;
  let client: RaviClient;

  before(async () => {
    node = await fx.started({ nodeId: "solo" }, (n) => {
      registerConformance(n);
      n.register("order", orderAgent());
      n.register("silent", defineStatelessAgent().on(EchoSchema, () => undefined));
      n.register(
        "relay",
        defineStatelessAgent().on(SleepSchema, SleptSchema, (sleep, ctx) =>
          ctx.call({ type: "conformance", key: "relayed" }, SleepSchema, sleep, SleptSchema),
        ),
      );
      n.register(
        "self-caller",
        defineStatelessAgent().on(TaskSchema, TaskResultSchema, async (_task, ctx) => {
          const reply = await ctx.call({ type: "self-caller", key: ctx.id.key }, TaskSchema, { content: "again" }, TaskResultSchema);
          return { content: reply.content };
        }),
      );
      n.register(
        "reentrant-caller",
        defineStatelessAgent({ reentrant: true }).on(TaskSchema, TaskResultSchema, async (task, ctx) => {
          if (task.content === "inner") {
            return { content: `inner chain=${ctx.callChain.map((a) => `${a.type}/${a.key}`).join(">")}` };
          }
          return ctx.call(ctx.id, TaskSchema, { content: "inner" }, TaskResultSchema);
        }),
      );
    });
    client = fx.client(node.address);
  });
  after(() => fx.close());

  test("a protobuf reply comes back with the handling node's id", async () => {
    const reply = await client.send({ type: "conformance", key: "k1" }, EchoSchema, { text: "hello" }, { metadata: { m: "v" } });
    assert.equal(reply.nodeId, "solo");
    assert.equal(reply.payload?.type, "ravi.conformance.v1.Echoed");
    assert.equal(reply.payload?.contentType, "application/x-protobuf");
    const echoed = reply.decode(EchoedSchema);
    assert.equal(echoed.text, "hello");
    assert.deepEqual({ type: echoed.agent?.type, key: echoed.agent?.key }, { type: "conformance", key: "k1" });
    assert.equal(echoed.nodeId, "solo");
    assert.equal(echoed.language, "node");
    assert.equal(echoed.sender, undefined);
    assert.deepEqual(echoed.metadata, { m: "v" });
  });

  test("canonical protobuf JSON payloads decode too", async () => {
    const payload = create(PayloadSchema, {
      type: "ravi.conformance.v1.Echo",
      contentType: "application/json",
      data: new TextEncoder().encode(JSON.stringify({ text: "from json" })),
    });
    const reply = await client.sendPayload({ type: "conformance", key: "json" }, payload);
    assert.equal(reply.decode(EchoedSchema).text, "from json");
  });

  test("a handler that returns nothing returns no result", async () => {
    const reply = await client.send({ type: "silent", key: "k1" }, EchoSchema, { text: "x" });
    assert.equal(reply.payload, undefined);
    assert.equal(reply.nodeId, "solo");
  });

  test("one agent handles its messages one at a time, in order", async () => {
    const sends = Array.from({ length: 20 }, (_, i) =>
      node.call({ type: "order", key: "a" }, TaskSchema, { threadId: String(i % 3), content: String(i) }, TaskResultSchema),
    );
    const replies = await Promise.all(sends);
    const last = replies[replies.length - 1];
    assert.equal(last?.content, Array.from({ length: 20 }, (_, i) => String(i)).join(","));
    assert.equal(Math.max(...replies.map((r) => r.steps)), 1);
  });

  test("messages sent in order over gRPC arrive in order", async () => {
    const replies = [];
    for (let i = 0; i < 5; i += 1) {
      replies.push(await client.call({ type: "order", key: "grpc" }, TaskSchema, { content: String(i) }, TaskResultSchema));
    }
    assert.equal(replies[4]?.content, "0,1,2,3,4");
  });

  test("distinct agents run concurrently", async () => {
    const started = Date.now();
    await Promise.all(
      ["x", "y", "z"].map((key) => client.call({ type: "order", key }, TaskSchema, { threadId: "300", content: key }, TaskResultSchema)),
    );
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 800, `three 300 ms handlers on distinct keys took ${elapsed} ms`);
  });

  test("a passed deadline fails the call and cancels the handler", async () => {
    const started = Date.now();
    await rejectsWith(
      client.send({ type: "conformance", key: "sleepy" }, SleepSchema, { millis: 5_000, tag: "dl" }, { timeoutMs: 150 }),
      Code.DeadlineExceeded,
    );
    assert.ok(Date.now() - started < 1_500);
    const observed = await client.call({ type: "conformance", key: "sleepy" }, ReportSchema, {}, ObservedSchema);
    assert.deepEqual(observed.cancelled, ["dl"]);
  });

  test("a cancelled caller cancels the handler", async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 150);
    await rejectsWith(
      client.send({ type: "conformance", key: "cancel" }, SleepSchema, { millis: 5_000, tag: "gone" }, { signal: controller.signal }),
      Code.Canceled,
    );
    const observed = await client.call({ type: "conformance", key: "cancel" }, ReportSchema, {}, ObservedSchema, {
      timeoutMs: 3_000,
    });
    assert.deepEqual(observed.cancelled, ["gone"]);
  });

  test("in-process sends honour deadlines the same way", async () => {
    await rejectsWith(node.send({ type: "conformance", key: "local" }, SleepSchema, { millis: 5_000, tag: "l" }, { timeoutMs: 100 }), Code.DeadlineExceeded);
    const slept = await node.call({ type: "conformance", key: "local" }, SleepSchema, { millis: 10, tag: "ok" }, SleptSchema);
    assert.equal(slept.tag, "ok");
  });

  test("an agent that calls itself fails fast with REENTRANT_CALL", async () => {
    const error = await rejectsWith(client.send({ type: "self-caller", key: "s" }, TaskSchema, { content: "go" }), Code.FailedPrecondition, "REENTRANT_CALL");
    assert.match(error.message, /self-caller\/s/);
  });

  test("a reentrant agent may call itself, and the call chain grows", async () => {
    const reply = await client.call({ type: "reentrant-caller", key: "r" }, TaskSchema, { content: "outer" }, TaskResultSchema);
    assert.equal(reply.content, "inner chain=reentrant-caller/r");
  });

  test("Forward carries the sender, the call chain and the deadline", async () => {
    const echoed = await client.call(
      { type: "conformance", key: "fwd" },
      ForwardSchema,
      { target: { type: "conformance", key: "target" }, text: "via" },
      EchoedSchema,
    );
    assert.equal(echoed.text, "via");
    assert.equal(echoed.sender?.type, "conformance");
    assert.equal(echoed.sender?.key, "fwd");
    // Forwarding back to itself would deadlock: refused.
    await rejectsWith(
      client.send({ type: "conformance", key: "loop" }, ForwardSchema, { target: { type: "conformance", key: "loop" }, text: "x" }),
      Code.FailedPrecondition,
      "REENTRANT_CALL",
    );
  });

  test("a nested send gets the caller's remaining deadline", async () => {
    const started = Date.now();
    await rejectsWith(client.send({ type: "relay", key: "d" }, SleepSchema, { millis: 5_000, tag: "nested" }, { timeoutMs: 200 }), Code.DeadlineExceeded);
    assert.ok(Date.now() - started < 1_500);
    const observed = await client.call({ type: "conformance", key: "relayed" }, ReportSchema, {}, ObservedSchema);
    assert.deepEqual(observed.cancelled, ["nested"]);
  });

  test("promises resolve waiting handlers, once", async () => {
    const waiter = defineStatelessAgent().on(TaskSchema, TaskResultSchema, async (task, ctx) => {
      const value = await ctx.waitFor(task.content, { timeoutMs: 2_000 });
      return { content: value.type };
    });
    node.register("waiter", waiter);
    const pending = client.call({ type: "waiter", key: "w" }, TaskSchema, { content: "approval" }, TaskResultSchema);
    await new Promise((r) => setTimeout(r, 50));
    const response = await client.agentService.resolvePromise({ name: "approval", value: encodePayload(EchoSchema, { text: "yes" }) });
    assert.equal(response.waiting, true);
    assert.equal((await pending).content, "ravi.conformance.v1.Echo");
    await rejectsWith(node.resolvePromise("approval", encodePayload(EchoSchema, { text: "again" })), Code.AlreadyExists);
    // Resolved before anyone waits: the value is kept.
    const late = await client.call({ type: "waiter", key: "w2" }, TaskSchema, { content: "approval" }, TaskResultSchema);
    assert.equal(late.content, "ravi.conformance.v1.Echo");
  });

  test("SaveState and LoadState move agent state as JSON objects", async () => {
    await node.publish({ type: "conformance.events", source: "st" }, EchoSchema, { text: "remembered" });
    const saved = await client.agentService.saveState({ agent: { type: "conformance", key: "st" } });
    const payload = saved.states["conformance/st"];
    assert.equal(payload?.type, "google.protobuf.Struct");
    assert.deepEqual(JSON.parse(new TextDecoder().decode(payload?.data)), { events: ["remembered"], cancelled: [] });
    await client.agentService.loadState({
      states: {
        "conformance/loaded": {
          type: "google.protobuf.Struct",
          contentType: "application/json",
          data: new TextEncoder().encode(JSON.stringify({ events: ["a", "b"], cancelled: ["c"] })),
        },
      },
    });
    const observed = await client.call({ type: "conformance", key: "loaded" }, ReportSchema, {}, ObservedSchema);
    assert.deepEqual(observed.events, ["a", "b"]);
    assert.deepEqual(observed.cancelled, ["c"]);
    const all = await client.agentService.saveState({});
    assert.ok(Object.keys(all.states).includes("conformance/loaded"));
  });
});
