// Serving: bearer auth, gRPC health, server reflection, graceful shutdown.
import { strict as assert } from "node:assert";
import { after, describe, test } from "node:test";

import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "@ravi-mesh/contract/grpc/health/v1/health_pb";
import * as v1 from "@ravi-mesh/contract/grpc/reflection/v1/reflection_pb";
import * as v1alpha from "@ravi-mesh/contract/grpc/reflection/v1alpha/reflection_pb";
import { EchoSchema, SleepSchema, SleptSchema } from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";

import { registerConformance } from "../src/agents/conformance.js";
import { Code, Fixture, rejectsWith } from "../test-support/helpers.js";

const T = { timeout: 15_000 };
const conformance = { type: "conformance", key: "k" };

describe("bearer token", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("a missing or wrong token is UNAUTHENTICATED, the right one passes", async () => {
    const node = await fx.started({ nodeId: "secure", token: "s3cret" }, (n) => registerConformance(n));
    await rejectsWith(fx.client(node.address).send(conformance, EchoSchema, { text: "x" }), Code.Unauthenticated, null);
    await rejectsWith(fx.client(node.address, { token: "wrong" }).send(conformance, EchoSchema, { text: "x" }), Code.Unauthenticated, null);
    await rejectsWith(fx.client(node.address).describe(), Code.Unauthenticated);
    await rejectsWith(fx.client(node.address).checkHealth(), Code.Unauthenticated);
    const reply = await fx.client(node.address, { token: "s3cret" }).send(conformance, EchoSchema, { text: "x" });
    assert.equal(reply.nodeId, "secure");
  });

  test("health checks may be exempted", async () => {
    const node = await fx.started({ nodeId: "exempt", token: "t", healthWithoutAuth: true }, (n) => registerConformance(n));
    const anonymous = fx.client(node.address);
    assert.equal(await anonymous.checkHealth(), ServingStatus.SERVING);
    await rejectsWith(anonymous.describe(), Code.Unauthenticated);
  });

  test("peers present the token too", async () => {
    const b = await fx.started({ nodeId: "tb", token: "mesh" }, (n) => registerConformance(n));
    const a = await fx.started({ nodeId: "ta", token: "mesh", peers: { b: b.address } });
    await a.waitForRoute("conformance", { nodeId: "tb" });
    const reply = await fx.client(a.address, { token: "mesh" }).send(conformance, EchoSchema, { text: "x" });
    assert.equal(reply.nodeId, "tb");
  });
});

describe("health", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("SERVING for the node and AgentService, NOT_FOUND for others, NOT_SERVING on shutdown", async () => {
    const node = await fx.started({ nodeId: "healthy" }, (n) => registerConformance(n));
    const client = fx.client(node.address);
    assert.equal(await client.checkHealth(""), ServingStatus.SERVING);
    assert.equal(await client.checkHealth("ravi.mesh.v1.AgentService"), ServingStatus.SERVING);
    await rejectsWith(client.checkHealth("no.such.Service"), Code.NotFound);

    const seen: ServingStatus[] = [];
    const watching = (async () => {
      for await (const response of client.health.watch({ service: "ravi.mesh.v1.AgentService" }, { timeoutMs: 5_000 })) {
        seen.push(response.status);
      }
    })();
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(seen, [ServingStatus.SERVING]);
    // (no timeoutMs: connect's iterator has no return(), so its deadline timer would linger)
    const stopWatching = new AbortController();
    const unknown = client.health.watch({ service: "later" }, { signal: stopWatching.signal })[Symbol.asyncIterator]();
    const first = await unknown.next();
    assert.equal(first.value?.status, ServingStatus.SERVICE_UNKNOWN);
    stopWatching.abort();
    await node.stop(200);
    await watching;
    assert.deepEqual(seen, [ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
  });
});

describe("graceful shutdown", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("calls in flight finish, new calls are refused, the port is released", async () => {
    const node = await fx.started({ nodeId: "draining" }, (n) => registerConformance(n));
    const client = fx.client(node.address);
    const inFlight = client.call(conformance, SleepSchema, { millis: 300, tag: "drain" }, SleptSchema);
    await new Promise((r) => setTimeout(r, 50));
    const stopping = node.stop(2_000);
    assert.equal((await inFlight).tag, "drain");
    await stopping;
    await rejectsWith(fx.client(node.address).send(conformance, EchoSchema, { text: "late" }), Code.Unavailable);
  });
});

describe("server reflection", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("v1 and v1alpha list the services and serve their files", async () => {
    const node = await fx.started({ nodeId: "reflect" }, (n) => registerConformance(n));
    const sessions = new Http2SessionManager(`http://${node.address}`);
    const transport = createGrpcTransport({ baseUrl: `http://${node.address}`, sessionManager: sessions });
    try {
      for (const pkg of [v1, v1alpha] as const) {
        const client = createClient(pkg.ServerReflection, transport);
        const requests = [
          { host: "", messageRequest: { case: "listServices" as const, value: "" } },
          { host: "", messageRequest: { case: "fileContainingSymbol" as const, value: "ravi.mesh.v1.AgentService" } },
          { host: "", messageRequest: { case: "fileContainingSymbol" as const, value: "ravi.mesh.v1.AgentService.Send" } },
          { host: "", messageRequest: { case: "fileByFilename" as const, value: "grpc/health/v1/health.proto" } },
          { host: "", messageRequest: { case: "fileContainingSymbol" as const, value: "ravi.conformance.v1.Echo" } },
          { host: "", messageRequest: { case: "fileContainingSymbol" as const, value: "no.Such" } },
        ];
        const responses = [];
        for await (const response of client.serverReflectionInfo(
          (async function* () {
            yield* requests;
          })(),
          { timeoutMs: 5_000 },
        )) {
          responses.push(response.messageResponse);
        }
        assert.equal(responses.length, requests.length);
        const [list, service, method, health, payloadType, missing] = responses;
        assert.equal(list?.case, "listServicesResponse");
        const names = list?.case === "listServicesResponse" ? list.value.service.map((s) => s.name).sort() : [];
        assert.deepEqual(names, [
          "grpc.health.v1.Health",
          "grpc.reflection.v1.ServerReflection",
          "grpc.reflection.v1alpha.ServerReflection",
          "ravi.mesh.v1.AgentService",
        ]);
        for (const [response, file] of [
          [service, "ravi/mesh/v1/agent_service.proto"],
          [method, "ravi/mesh/v1/agent_service.proto"],
          [health, "grpc/health/v1/health.proto"],
          [payloadType, "ravi/conformance/v1/conformance.proto"],
        ] as const) {
          assert.equal(response?.case, "fileDescriptorResponse");
          if (response?.case === "fileDescriptorResponse") {
            const files = response.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name);
            assert.equal(files[0], file);
            if (file === "ravi/mesh/v1/agent_service.proto") {
              assert.ok(files.includes("ravi/mesh/v1/types.proto"), "dependencies come along");
            }
          }
        }
        assert.equal(missing?.case, "errorResponse");
      }
    } finally {
      sessions.abort();
    }
  });
});
