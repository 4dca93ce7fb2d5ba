// A pool of writer nodes behind one DNS name, as the pods of a Kubernetes
// headless Service are (tests/integration/test_discovery.py does the same with
// Python nodes): four nodes on 127.0.0.2 to 127.0.0.5, all on one port, and a
// front node that peers with dns:writers.test:PORT through a resolver the test
// controls. The test "scales the Deployment" by changing what the name
// resolves to.
import { strict as assert } from "node:assert";
import * as net from "node:net";
import { after, describe, test } from "node:test";

import { EchoSchema, EchoedSchema } from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";

import { registerConformance } from "../src/agents/conformance.js";
import { dnsTarget, resolveDns } from "../src/node/discovery.js";
import { rendezvousScore } from "../src/rendezvous.js";
import type { RaviNode } from "../src/node.js";
import { eventually, Fixture } from "../test-support/helpers.js";

const NAME = "writers.test";
const HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
const KEYS = Array.from({ length: 200 }, (_, i) => `doc-${i}`);

function listen(host: string, port: number): Promise<net.Server | undefined> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(undefined));
    server.listen(port, host, () => resolve(server));
  });
}

/** A port free on every one of `hosts` (pods of one Deployment share their port). */
async function freePortOnAll(hosts: readonly string[]): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const first = await listen(hosts[0] ?? "127.0.0.1", 0);
    assert.ok(first !== undefined, `cannot listen on ${hosts[0]}`);
    const port = (first.address() as net.AddressInfo).port;
    const rest = await Promise.all(hosts.slice(1).map((h) => listen(h, port)));
    for (const server of [first, ...rest]) {
      server?.close();
    }
    if (rest.every((s) => s !== undefined)) {
      return port;
    }
  }
  assert.fail("no port is free on every pool host");
}

function winners(nodes: readonly string[]): Map<string, string> {
  return new Map(
    KEYS.map((key) => [key, nodes.reduce((a, b) => (rendezvousScore(b, "writer", key) > rendezvousScore(a, "writer", key) ? b : a))]),
  );
}

async function placement(front: RaviNode): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const key of KEYS) {
    const echoed = await front.call({ type: "writer", key }, EchoSchema, { text: key }, EchoedSchema, { timeoutMs: 10_000 });
    out.set(key, echoed.nodeId);
  }
  return out;
}

/** Waits until `front` routes "writer" to exactly `nodes`. */
async function hosting(front: RaviNode, nodes: readonly string[]): Promise<void> {
  const want = [...nodes].sort().join(",");
  await eventually(
    () => {
      const got = [...front.routingTable().values()]
        .filter((info) => info.agentTypes.some((t) => t.agentType === "writer"))
        .map((info) => info.nodeId)
        .sort()
        .join(",");
      return got === want && front.peers().length === nodes.length;
    },
    20_000,
    `writer hosted by [${want}]`,
  );
}

/** Calls every key, round and round, until the returned function is called; it resolves to the failures. */
function steadyLoad(front: RaviNode): () => Promise<string[]> {
  const failures: string[] = [];
  let calls = 0;
  let running = true;
  const workers = Array.from({ length: 8 }, async (_, offset) => {
    for (let i = offset; running; i += 8) {
      const key = KEYS[i % KEYS.length] ?? "k";
      try {
        await front.call({ type: "writer", key }, EchoSchema, { text: key }, EchoedSchema, { timeoutMs: 10_000 });
      } catch (error) {
        failures.push(`${key}: ${error instanceof Error ? error.message : String(error)}`);
      }
      calls += 1;
    }
  });
  return async () => {
    running = false;
    await Promise.all(workers);
    return calls === 0 ? ["no call was made"] : failures;
  };
}

describe("dns: peers", { timeout: 60_000 }, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("a dns: peer is a pool of every address the name resolves to, scaled out and in", async () => {
    const port = await freePortOnAll(["127.0.0.1", ...HOSTS]);
    for (const host of HOSTS) {
      await fx.started({ nodeId: `writer-${host}`, host, port }, (n) => registerConformance(n, "writer"));
    }
    let answer: string[] = [];
    let broken = false;
    let questions = 0;
    const scale = (replicas: number): void => {
      answer = HOSTS.slice(0, replicas).map((h) => `${h}:${port}`);
    };
    scale(2);
    const front = await fx.started({
      nodeId: "front",
      peers: { writers: `dns:${NAME}:${port}` },
      peerDnsIntervalMs: 50,
      resolver: (host, asked) => {
        assert.deepEqual([host, asked], [NAME, port]);
        questions += 1;
        return broken ? Promise.reject(new Error("the DNS server did not answer")) : Promise.resolve([...answer]);
      },
    });
    const two = HOSTS.slice(0, 2).map((h) => `writer-${h}`);
    const four = HOSTS.map((h) => `writer-${h}`);
    await hosting(front, two);
    assert.ok(front.peers().every((p) => p.label.startsWith(`writers/127.0.0.`)));
    const before = await placement(front);
    assert.deepEqual(before, winners(two));

    let stop = steadyLoad(front);
    scale(4);
    await hosting(front, four);
    assert.deepEqual(await stop(), []);
    const afterOut = await placement(front);
    assert.deepEqual(afterOut, winners(four));
    const moved = KEYS.filter((k) => afterOut.get(k) !== before.get(k));
    // Rendezvous hashing moves a key only to a node that joined, about half of them.
    assert.ok(moved.every((k) => !two.includes(afterOut.get(k) ?? "")));
    assert.ok(moved.length > KEYS.length * 0.35 && moved.length < KEYS.length * 0.65, `${moved.length} keys moved`);

    stop = steadyLoad(front);
    scale(2);
    await hosting(front, two);
    assert.deepEqual(await stop(), []);
    assert.deepEqual(await placement(front), before);

    // A failing lookup keeps the pool; a name that does not exist empties it.
    broken = true;
    const asked = questions;
    await eventually(() => questions >= asked + 2, 5_000, "two more lookups");
    await hosting(front, two);
    broken = false;
    scale(0);
    await hosting(front, []);
  });

  test("the dns: syntax, and getaddrinfo", async () => {
    assert.deepEqual(dnsTarget("dns:writers:50051"), { host: "writers", port: 50051 });
    assert.deepEqual(dnsTarget("dns:///writers:50051"), { host: "writers", port: 50051 });
    assert.deepEqual(dnsTarget("dns:[::1]:7"), { host: "::1", port: 7 });
    assert.equal(dnsTarget("writers:50051"), undefined);
    for (const bad of ["dns://8.8.8.8/writers:1", "dns:writers", "dns::1", "dns:writers:http", "dns:w:70000"]) {
      assert.throws(() => dnsTarget(bad), Error, bad);
    }
    assert.throws(() => fx.node({ nodeId: "bad", peers: { w: "dns://8.8.8.8/w:1" } }), /DNS server/);
    assert.ok((await resolveDns("localhost", 4)).includes("127.0.0.1:4"));
  });
});
