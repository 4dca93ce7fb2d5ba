// Agents that come and go: passivation when idle or beyond maxActiveAgents,
// state stores, checkpoints, stale copies refused.
import { strict as assert } from "node:assert";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

import {
  CountSchema,
  CountedSchema,
  EchoSchema,
  EchoedSchema,
  ReadCountSchema,
} from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";

import { defineStatelessAgent } from "../src/agent.js";

import { COUNTER_TYPE, counterAgent, registerCounter } from "../src/agents/counter.js";
import { Lifecycle } from "../src/lifecycle.js";
import type { RaviNode } from "../src/node.js";
import { MemoryStore, openStore, PostgresStore, SqliteStore } from "../src/store.js";
import { Code, eventually, Fixture, rejectsWith, testLogger } from "../test-support/helpers.js";

const T = { timeout: 20_000 };

// The collector, for a heap measure that does not count garbage.
setFlagsFromString("--expose-gc");
const collect = runInNewContext("gc") as () => void;

function heapAfterCollection(): number {
  collect();
  return process.memoryUsage().heapUsed;
}

function echoAgent() {
  return defineStatelessAgent().on(EchoSchema, EchoedSchema, (message) => ({ text: message.text }));
}

async function count(node: RaviNode, key: string, id: string): Promise<bigint> {
  const reply = await node.send({ type: COUNTER_TYPE, key }, CountSchema, { id });
  return reply.decode(CountedSchema).total;
}

describe("agent lifecycle", T, () => {
  const fx = new Fixture();
  // Folders of the stores, removed once the nodes using them have stopped.
  const folders: string[] = [];
  const folder = () => {
    const made = mkdtempSync(join(tmpdir(), "ravi-node-"));
    folders.push(made);
    return made;
  };
  after(async () => {
    await fx.close();
    for (const made of folders) rmSync(made, { recursive: true, force: true });
  });

  test("an idle agent is passivated and comes back with its state", async () => {
    const store = new MemoryStore();
    const node = await fx.started({ nodeId: "idle", idleTimeoutMs: 50, stateStore: store }, (n) => registerCounter(n));
    assert.equal(await count(node, "a", "1"), 1n);
    assert.equal(node.activeAgents().get(COUNTER_TYPE), 1);
    await eventually(() => node.activeAgents().get(COUNTER_TYPE) === 0 && store.size === 1, 5_000, "passivation");
    assert.equal(await count(node, "a", "2"), 2n);
    assert.equal(node.info().agentTypes.find((t) => t.agentType === COUNTER_TYPE)?.activeInstances, 1n);
  });

  test("beyond maxActiveAgents the least recently used goes", async () => {
    const store = new MemoryStore();
    const node = await fx.started({ nodeId: "lru", maxActiveAgents: 3, stateStore: store }, (n) => registerCounter(n));
    for (const key of ["a", "b", "c", "a", "d"]) {
      await count(node, key, key);
    }
    await eventually(() => store.size === 1, 3_000, "the save of b");
    assert.equal((await store.load({ type: COUNTER_TYPE, key: "b" })).version, 1);
    assert.equal(node.activeAgents().get(COUNTER_TYPE), 3);
    assert.equal(await count(node, "b", "b2"), 2n);
  });

  test("many stateless keys stay bounded, in the heap too", async () => {
    const node = await fx.started({ nodeId: "many", maxActiveAgents: 100 }, (n) => n.register("echo", echoAgent()));
    const touch = async (prefix: string, n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        await node.send({ type: "echo", key: `${prefix}${i}` }, EchoSchema, { text: "x" });
      }
    };
    await touch("w", 2_000);
    const before = heapAfterCollection();
    await touch("k", 20_000);
    const grown = heapAfterCollection() - before;
    assert.ok((node.activeAgents().get("echo") ?? 0) <= 100);
    // An instance kept per key would hold more than 20 MiB here.
    assert.ok(grown < 4 * 1024 * 1024, `the heap grew ${grown} bytes for 20,000 keys`);
  });

  test("each_message checkpoints, and a stale copy is refused and reloaded", async () => {
    const path = join(folder(), "state.sqlite3");
    const options = { checkpoint: "each_message", idleTimeoutMs: 0 } as const;
    const first = await fx.started({ nodeId: "first", ...options, stateStore: new SqliteStore(path) }, (n) => registerCounter(n));
    const second = await fx.started({ nodeId: "second", ...options, stateStore: new SqliteStore(path) }, (n) => registerCounter(n));
    assert.equal(await count(first, "k", "1"), 1n);
    assert.equal(await count(second, "k", "2"), 2n);
    await rejectsWith(count(first, "k", "stale"), Code.Aborted, "STALE_STATE");
    assert.equal(await count(first, "k", "3"), 3n);
    const read = await first.send({ type: COUNTER_TYPE, key: "k" }, ReadCountSchema, {});
    assert.deepEqual(read.decode(CountedSchema).ids, ["1", "2", "3"]);
  });

  test("a stopped node saves every agent and a new one loads them", async () => {
    const dir = folder();
    const node = await fx.started({ nodeId: "saver", dataDir: dir }, (n) => registerCounter(n));
    await count(node, "k", "1");
    await count(node, "k", "2");
    await node.stop(200);
    const again = await fx.started({ nodeId: "loader", dataDir: dir }, (n) => registerCounter(n));
    assert.equal(await count(again, "k", "3"), 3n);
  });

  test("resident agents stay", async () => {
    const node = await fx.started({ nodeId: "resident", idleTimeoutMs: 20 }, (n) => {
      n.register("pinned", counterAgent({ resident: true }));
      registerCounter(n);
    });
    await node.send({ type: "pinned", key: "p" }, CountSchema, { id: "1" });
    await count(node, "gone", "1");
    await eventually(() => node.activeAgents().get(COUNTER_TYPE) === 0, 5_000, "the other passivated");
    assert.equal(node.activeAgents().get("pinned"), 1);
  });

  test("bad options and stores are refused clearly", async () => {
    assert.throws(() => new Lifecycle({ checkpoint: "sometimes" }, testLogger("x")), /checkpoint must be one of passivation, each_message/);
    assert.throws(() => new Lifecycle({ maxActiveAgents: -1 }, testLogger("x")), /maxActiveAgents must not be negative/);
    assert.throws(() => openStore("mysql://x"), /unknown state store/);
    const node = fx.node({ nodeId: "nostore", stateStore: new PostgresStore("postgresql://ravi@127.0.0.1:1/x") });
    await rejectsWith(node.start(), Code.Unavailable);
  });
});
