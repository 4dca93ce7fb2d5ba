// Shared helpers of the node tests: nodes on 127.0.0.1 port 0 that are
// always stopped, and assertions on RaviErrors.
import { strict as assert } from "node:assert";

import { Code, codeName, RaviError, type ReasonName } from "../src/errors.js";
import { RaviNode, type NodeOptions } from "../src/node.js";
import { RaviClient, type ClientOptions } from "../src/client.js";
import type { Logger } from "../src/peers.js";

/** A logger that keeps lines (printed when RAVI_TEST_VERBOSE=1). */
export function testLogger(nodeId: string): Logger & { lines: string[] } {
  const lines: string[] = [];
  const verbose = process.env["RAVI_TEST_VERBOSE"] === "1";
  const log =
    (level: string) =>
    (message: string): void => {
      lines.push(`${level}: ${message}`);
      if (verbose) {
        process.stderr.write(`[${nodeId}] ${level}: ${message}\n`);
      }
    };
  return { lines, debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") };
}

/** Keeps the nodes and clients a test made, and stops them all. */
export class Fixture {
  private readonly nodes: RaviNode[] = [];
  private readonly clients: RaviClient[] = [];

  node(options: Partial<NodeOptions> & { nodeId: string }, setup?: (node: RaviNode) => void): RaviNode {
    const node = new RaviNode({ logger: testLogger(options.nodeId), shutdownGraceMs: 500, ...options });
    setup?.(node);
    this.nodes.push(node);
    return node;
  }

  async started(options: Partial<NodeOptions> & { nodeId: string }, setup?: (node: RaviNode) => void): Promise<RaviNode> {
    const node = this.node(options, setup);
    await node.start();
    return node;
  }

  client(address: string, options: Partial<ClientOptions> = {}): RaviClient {
    const client = new RaviClient({ address, timeoutMs: 5_000, ...options });
    this.clients.push(client);
    return client;
  }

  async close(): Promise<void> {
    for (const client of this.clients) {
      client.close();
    }
    await Promise.all(this.nodes.map((n) => n.stop(200)));
  }
}

/** Asserts that the promise rejects with a RaviError of this code (and reason; null = none). */
export async function rejectsWith(
  promise: Promise<unknown>,
  code: Code,
  reason?: ReasonName | null,
): Promise<RaviError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof RaviError, `expected a RaviError, got ${String(error)}`);
    assert.equal(codeName(error.code), codeName(code), `code of: ${error.message}`);
    if (reason === null) {
      assert.equal(error.reason, undefined, `reason of: ${error.message}`);
    } else if (reason !== undefined) {
      assert.equal(error.reason, reason, `reason of: ${error.message}`);
    }
    return error;
  }
  assert.fail(`expected ${codeName(code)}${reason ? ` ${reason}` : ""}, but the call succeeded`);
}

/** Polls `check` until it returns true or `timeoutMs` passes. */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 3_000, what = "condition"): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await check()) {
      return;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.fail(`timed out waiting for ${what}`);
}

export { Code };
