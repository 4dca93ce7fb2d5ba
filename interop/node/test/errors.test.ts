// The ordered checks of a Send, each failure's status and ErrorInfo on the wire.
import { strict as assert } from "node:assert";
import { after, before, describe, test } from "node:test";

import { create, toBinary } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "@ravi-mesh/contract/google/rpc/error_details_pb";
import {
  EchoSchema,
  FailSchema,
  UnhandledSchema,
} from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";
import { TaskSchema } from "@ravi-mesh/contract/ravi/examples/v1/examples_pb";
import { PayloadSchema } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import { registerConformance } from "../src/agents/conformance.js";
import type { RaviClient } from "../src/client.js";
import { encodePayload } from "../src/codec.js";
import { RaviError } from "../src/errors.js";
import type { RaviNode } from "../src/node.js";
import { Code, Fixture, rejectsWith } from "../test-support/helpers.js";

const T = { timeout: 15_000 };

describe("Send failures, in the spec's order", T, () => {
  const fx = new Fixture();
  let node: RaviNode;
  let client: RaviClient;
  const conformance = { type: "conformance", key: "k" };
  const echo = encodePayload(EchoSchema, { text: "hi" });

  before(async () => {
    node = await fx.started({ nodeId: "checks" }, (n) => registerConformance(n));
    client = fx.client(node.address);
  });
  after(() => fx.close());

  test("1. an empty or malformed agent id is INVALID_ARGUMENT / BAD_ID", async () => {
    await rejectsWith(client.sendPayload({ type: "", key: "k" }, echo), Code.InvalidArgument, "BAD_ID");
    await rejectsWith(client.sendPayload({ type: "conformance", key: "" }, echo), Code.InvalidArgument, "BAD_ID");
    await rejectsWith(client.sendPayload({ type: "has space", key: "k" }, echo), Code.InvalidArgument, "BAD_ID");
    await rejectsWith(client.sendPayload({ type: "conformance", key: "tab\there" }, echo), Code.InvalidArgument, "BAD_ID");
    // BAD_ID comes before everything else, even an unknown type and a bad payload.
    await rejectsWith(
      client.sendPayload({ type: "no such!", key: "" }, create(PayloadSchema, { type: "x.Y", contentType: "text/plain" })),
      Code.InvalidArgument,
      "BAD_ID",
    );
  });

  test("2. a type no node hosts is NOT_FOUND / AGENT_TYPE_NOT_FOUND", async () => {
    const error = await rejectsWith(client.sendPayload({ type: "nobody", key: "k" }, echo), Code.NotFound, "AGENT_TYPE_NOT_FOUND");
    assert.equal(error.metadata["agent_type"], "nobody");
    // before the payload is looked at
    await rejectsWith(
      client.sendPayload({ type: "nobody", key: "k" }, create(PayloadSchema, { type: "x.Y", contentType: "text/plain" })),
      Code.NotFound,
      "AGENT_TYPE_NOT_FOUND",
    );
  });

  test("3. a missing, unknown, mis-typed or undecodable payload is INVALID_ARGUMENT / BAD_PAYLOAD", async () => {
    const bad = [
      create(PayloadSchema, { type: "no.such.Type", contentType: "application/x-protobuf" }),
      create(PayloadSchema, { type: "ravi.conformance.v1.Echo", contentType: "text/plain", data: toBinary(EchoSchema, create(EchoSchema, { text: "x" })) }),
      create(PayloadSchema, { type: "ravi.conformance.v1.Echo", contentType: "application/x-protobuf", data: new Uint8Array([0x0a, 0x05, 0x61]) }),
      create(PayloadSchema, { type: "ravi.conformance.v1.Echo", contentType: "application/json", data: new TextEncoder().encode("{not json") }),
      create(PayloadSchema, { type: "ravi.conformance.v1.Echo", contentType: "application/json", data: new TextEncoder().encode('{"nope": 1}') }),
    ];
    for (const payload of bad) {
      await rejectsWith(client.sendPayload(conformance, payload), Code.InvalidArgument, "BAD_PAYLOAD");
    }
    await rejectsWith(client.sendRequest({ recipient: conformance, envelope: { messageId: "m" } }), Code.InvalidArgument, "BAD_PAYLOAD");
    // before the call chain
    await rejectsWith(
      client.sendPayload(conformance, bad[0] ?? echo, { callChain: [conformance] }),
      Code.InvalidArgument,
      "BAD_PAYLOAD",
    );
  });

  test("4. a recipient in the call chain is FAILED_PRECONDITION / REENTRANT_CALL", async () => {
    await rejectsWith(client.sendPayload(conformance, echo, { callChain: [{ type: "other", key: "o" }, conformance] }), Code.FailedPrecondition, "REENTRANT_CALL");
    // before the handler lookup
    await rejectsWith(
      client.sendPayload(conformance, encodePayload(UnhandledSchema, {}), { callChain: [conformance] }),
      Code.FailedPrecondition,
      "REENTRANT_CALL",
    );
    // another key of the same type is fine
    await client.sendPayload(conformance, echo, { callChain: [{ type: "conformance", key: "other" }] });
  });

  test("5. a known type without a handler is UNIMPLEMENTED / NO_HANDLER", async () => {
    const error = await rejectsWith(client.send(conformance, UnhandledSchema, {}), Code.Unimplemented, "NO_HANDLER");
    assert.equal(error.metadata["message_type"], "ravi.conformance.v1.Unhandled");
    // A type the node knows from another file, but no handler on this agent.
    node.registry.add(TaskSchema);
    await rejectsWith(client.send(conformance, TaskSchema, {}), Code.Unimplemented, "NO_HANDLER");
  });

  test("7. an ordinary error is UNKNOWN / HANDLER_FAILED with its type and message", async () => {
    const error = await rejectsWith(client.send(conformance, FailSchema, { code: 0, message: "the answer is 41" }), Code.Unknown, "HANDLER_FAILED");
    assert.equal(error.metadata["exception_type"], "Error");
    assert.equal(error.metadata["exception_message"], "the answer is 41");
    assert.equal(error.remote, true);
  });

  test("7. a RaviError keeps its code and carries HANDLER_FAILED", async () => {
    for (const code of [Code.PermissionDenied, Code.InvalidArgument, Code.NotFound, Code.ResourceExhausted, Code.Unavailable]) {
      const error = await rejectsWith(client.send(conformance, FailSchema, { code, message: `code ${code}` }), code, "HANDLER_FAILED");
      assert.equal(error.message, `code ${code}`);
    }
  });

  test("errors carry google.rpc.ErrorInfo in domain ravi.mesh.v1 on the wire", async () => {
    try {
      await client.agentService.send({ recipient: { type: "nobody", key: "k" }, envelope: { payload: echo } }, { timeoutMs: 2_000 });
      assert.fail("expected a failure");
    } catch (error) {
      assert.ok(error instanceof ConnectError);
      const infos = error.findDetails(ErrorInfoSchema);
      assert.equal(infos.length, 1);
      assert.equal(infos[0]?.domain, "ravi.mesh.v1");
      assert.equal(infos[0]?.reason, "AGENT_TYPE_NOT_FOUND");
    }
  });

  test("the agent keeps serving after its handler failed", async () => {
    await rejectsWith(client.send(conformance, FailSchema, { code: 0, message: "boom" }), Code.Unknown, "HANDLER_FAILED");
    const reply = await client.send(conformance, EchoSchema, { text: "still here" });
    assert.ok(reply.payload);
  });

  test("a message over the size limit is RESOURCE_EXHAUSTED", async () => {
    const small = await fx.started({ nodeId: "small", maxMessageBytes: 1024 }, (n) => registerConformance(n));
    const c = fx.client(small.address);
    await c.send(conformance, EchoSchema, { text: "fits" });
    const error = await rejectsWith(c.send(conformance, EchoSchema, { text: "x".repeat(4096) }), Code.ResourceExhausted);
    assert.ok(error instanceof RaviError);
  });
});
