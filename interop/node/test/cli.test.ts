// The ravi-node command line, run as child processes.
import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { dirname, join } from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

import { CONTRACT_VERSION } from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import { toMarkdown } from "../src/agents/formatter.js";

const CLI = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "cli.js");
const T = { timeout: 30_000 };

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a client subcommand to completion (killed after 10 s). */
function run(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"], env: childEnv() });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The environment of child nodes: no OTLP endpoint unless a test sets one. */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  for (const name of ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME"]) {
    if (!(name in extra)) {
      delete env[name];
    }
  }
  return env;
}

/** Starts `ravi-node node ...` and resolves with its process and address once it printed its line. */
function startNode(args: string[], env: Record<string, string> = {}): Promise<{ child: ChildProcess; address: string; line: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, "node", ...args], { stdio: ["ignore", "pipe", "pipe"], env: childEnv(env) });
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`node did not start: ${stderr}`));
    }, 10_000);
    child.on("exit", (code) => reject(new Error(`node exited with ${code}: ${stderr}`)));
    const lines = createInterface({ input: child.stdout! });
    lines.once("line", (line) => {
      clearTimeout(timer);
      const address = line.split(" ").pop() ?? "";
      resolve({ child, address, line });
    });
  });
}

/**
 * A stand-in OTLP/gRPC collector on 127.0.0.1: it keeps the body of every
 * TraceService/Export call and answers each with an empty message and OK.
 */
async function fakeCollector(): Promise<{ url: string; exports: Buffer[]; close(): Promise<void> }> {
  const exports: Buffer[] = [];
  const server = http2.createServer();
  server.on("stream", (stream, headers) => {
    const chunks: Buffer[] = [];
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () => {
      if (headers[":path"] === "/opentelemetry.proto.collector.trace.v1.TraceService/Export") {
        exports.push(Buffer.concat(chunks));
      }
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(Buffer.from([0, 0, 0, 0, 0]));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    exports,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function stop(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) {
      resolve(child.exitCode);
      return;
    }
    const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
    child.removeAllListeners("exit");
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
    child.kill("SIGTERM");
  });
}

test("the formatter lays out a draft as Markdown", () => {
  const draft = "Rendezvous hashing:\n- nodes score each key\n- the highest score wins\nSources: routing.md:3, paper.md:1";
  assert.equal(
    toMarkdown(draft),
    "## Rendezvous hashing\n\n- nodes score each key\n- the highest score wins\n\n_Sources: routing.md:3, paper.md:1_",
  );
  assert.equal(toMarkdown("Title:\n- one"), "## Title\n\n- one");
});

describe("ravi-node command line", T, () => {
  const children: ChildProcess[] = [];
  after(async () => {
    await Promise.all(children.map(stop));
  });

  test("node, send, describe, publish, subscribe, errors and SIGTERM", async () => {
    const a = await startNode(["--listen", "127.0.0.1:0", "--node-id", "cli-a"]);
    children.push(a.child);
    assert.match(a.line, /^ravi-node node cli-a serving on 127\.0\.0\.1:\d+$/);
    assert.notEqual(a.address, "127.0.0.1:0");

    const b = await startNode(["--listen", "127.0.0.1:0", "--node-id", "cli-b", "--peer", `a=${a.address}`, "--conformance-type", "conformance-b"]);
    children.push(b.child);

    const described = await run(["describe", "--addr", a.address]);
    assert.equal(described.code, 0, described.stderr);
    const info = JSON.parse(described.stdout) as { nodeId: string; language: string; contractVersion: string; agentTypes: { agentType: string }[] };
    assert.equal(info.nodeId, "cli-a");
    assert.equal(info.language, "node");
    assert.equal(info.contractVersion, CONTRACT_VERSION);
    assert.deepEqual(info.agentTypes.map((t) => t.agentType).sort(), ["conformance", "counter", "formatter"]);

    const formatted = await run([
      "send", "--addr", a.address, "--timeout-ms", "5000", "--to", "formatter/default",
      "--type", "ravi.examples.v1.FormatRequest", "--json", JSON.stringify({ text: "Title:\n- a\nSources: s.md", style: "markdown" }),
    ]);
    assert.equal(formatted.code, 0, formatted.stderr);
    // One JSON shape in the three command lines: the SendResponse, its result decoded.
    assert.deepEqual(JSON.parse(formatted.stdout), {
      nodeId: "cli-a",
      result: {
        type: "ravi.examples.v1.FormattedText",
        value: { text: "## Title\n\n- a\n\n_Sources: s.md_", formatter: "formatter/default (node)" },
      },
    });

    // b peers with a, and a learned b: a routes conformance-b to b (as JSON payload).
    let routed: Run | undefined;
    for (let i = 0; i < 50; i += 1) {
      routed = await run([
        "send", "--addr", a.address, "--to", "conformance-b/k", "--type", "ravi.conformance.v1.Echo", "--json", '{"text":"hop"}', "--encoding", "json",
      ]);
      if (routed.code === 0) {
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(routed?.code, 0, routed?.stderr);
    assert.equal((JSON.parse(routed?.stdout ?? "{}") as { nodeId: string }).nodeId, "cli-b");

    const failed = await run(["send", "--addr", a.address, "--to", "conformance/k", "--type", "ravi.conformance.v1.Fail", "--json", '{"code":0,"message":"boom"}']);
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /^ravi-node send: UNKNOWN \(HANDLER_FAILED\): .*boom\n$/);

    const missing = await run(["send", "--addr", a.address, "--to", "nobody/k", "--type", "ravi.conformance.v1.Echo", "--json", "{}"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^ravi-node send: NOT_FOUND \(AGENT_TYPE_NOT_FOUND\): no node hosts agent type "nobody"; known types: .*conformance-b/);

    const late = await run(["send", "--addr", a.address, "--timeout-ms", "100", "--to", "conformance/k", "--type", "ravi.conformance.v1.Sleep", "--json", '{"millis":3000,"tag":"t"}']);
    assert.equal(late.code, 1);
    assert.match(late.stderr, /^ravi-node send: DEADLINE_EXCEEDED/);

    const usage = await run(["send", "--addr", a.address]);
    assert.equal(usage.code, 2);

    // A CLI subscriber on a sees an event published on a (as does b, over its stream).
    const subscriber = spawn(process.execPath, [CLI, "subscribe", "--addr", a.address, "--topic-type", "conformance.events", "--count", "1", "--timeout-ms", "8000"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.push(subscriber);
    const lines: string[] = [];
    createInterface({ input: subscriber.stdout }).on("line", (line) => lines.push(line));
    const exited = new Promise<number | null>((resolve) => subscriber.on("exit", resolve));
    for (let i = 0; i < 50 && lines.length === 0; i += 1) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const published = await run(["publish", "--addr", a.address, "--topic", "conformance.events/s", "--type", "ravi.conformance.v1.Echo", "--json", '{"text":"news"}']);
    assert.equal(published.code, 0, published.stderr);
    const counts = JSON.parse(published.stdout) as { localDeliveries: number; streamDeliveries: number };
    assert.equal(counts.localDeliveries, 1);
    assert.ok(counts.streamDeliveries >= 2, `streams: ${counts.streamDeliveries}`); // b's and the CLI's
    assert.equal(await exited, 0);
    assert.equal(lines.length, 2);
    assert.equal((JSON.parse(lines[0] ?? "{}") as { node: { nodeId: string } }).node.nodeId, "cli-a");
    const event = (
      JSON.parse(lines[1] ?? "{}") as {
        event: { topic: { type: string; source: string }; originNodeId: string; envelope: { payload: unknown } };
      }
    ).event;
    assert.deepEqual(event.topic, { type: "conformance.events", source: "s" });
    assert.equal(event.originNodeId, "cli-a");
    assert.deepEqual(event.envelope.payload, { type: "ravi.conformance.v1.Echo", value: { text: "news" } });

    const report = await run(["send", "--addr", a.address, "--to", "conformance/s", "--type", "ravi.conformance.v1.Report", "--json", "{}"]);
    assert.deepEqual((JSON.parse(report.stdout) as { result: { value: unknown } }).result.value, { events: ["news"], cancelled: [] });

    assert.equal(await stop(b.child), 0);
    assert.equal(await stop(a.child), 0);
  });
});

describe("ravi-node node exporting spans over OTLP", T, () => {
  const children: ChildProcess[] = [];
  after(async () => {
    await Promise.all(children.map(stop));
  });

  test("with an endpoint, spans reach the collector when the node stops on SIGTERM", async () => {
    const collector = await fakeCollector();
    try {
      // By the environment; the batch would wait a minute: only the shutdown flushes it.
      const a = await startNode(["--listen", "127.0.0.1:0", "--node-id", "otel-a"], {
        OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
        OTEL_BSP_SCHEDULE_DELAY: "60000",
      });
      children.push(a.child);
      // By the flag, with the service name from OTEL_SERVICE_NAME.
      const b = await startNode(["--listen", "127.0.0.1:0", "--node-id", "otel-b", "--otlp-endpoint", collector.url], {
        OTEL_SERVICE_NAME: "renamed-b",
        OTEL_BSP_SCHEDULE_DELAY: "60000",
      });
      children.push(b.child);
      for (const node of [a, b]) {
        const sent = await run([
          "send", "--addr", node.address, "--to", "formatter/default", "--type", "ravi.examples.v1.FormatRequest",
          "--json", JSON.stringify({ text: "Title:\n- a", style: "markdown" }),
        ]);
        assert.equal(sent.code, 0, sent.stderr);
      }
      assert.equal(collector.exports.length, 0, "nothing is exported before the batch is due");
      assert.equal(await stop(a.child), 0);
      assert.equal(await stop(b.child), 0);
      const bodies = collector.exports.map((body) => body.toString("latin1"));
      const fromA = bodies.find((body) => body.includes("otel-a"));
      const fromB = bodies.find((body) => body.includes("otel-b"));
      assert.ok(fromA !== undefined && fromB !== undefined, `exports: ${bodies.length}`);
      for (const body of [fromA, fromB]) {
        assert.ok(body.includes("handle formatter"), "the handle span");
        assert.ok(body.includes("service.name") && body.includes("ravi.node.id") && body.includes("ravi.language"));
      }
      assert.ok(fromB.includes("renamed-b"), "OTEL_SERVICE_NAME names the service");
    } finally {
      await collector.close();
    }
  });

  test("a malformed --otlp-endpoint is a usage error", async () => {
    const bad = await run(["node", "--listen", "127.0.0.1:0", "--node-id", "otel-bad", "--otlp-endpoint", "127.0.0.1:4317"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--otlp-endpoint must be/);
  });
});
