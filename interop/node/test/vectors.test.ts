// Shared protobuf test vectors: Node encodes and decodes the cases of
// tests/vectors byte for byte like Python and Go. RAVI_UPDATE_VECTORS=1
// rewrites the Node files.
import { strict as assert } from "node:assert";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  createRegistry,
  equals,
  fromBinary,
  fromJson,
  toBinary,
  type DescMessage,
  type JsonValue,
  type Message,
} from "@bufbuild/protobuf";
import { file_ravi_examples_v1_examples, WriteRequestSchema } from "@ravi-mesh/contract/ravi/examples/v1/examples_pb";
import { file_ravi_mesh_v1_agent_service, SendRequestSchema } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { file_ravi_mesh_v1_types } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

// Compiled tests run from dist/test, three levels below interop/node's parent.
const vectorsDir = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..", "tests", "vectors");
const languages = ["python", "go", "node"] as const;
const registry = createRegistry(
  file_ravi_mesh_v1_agent_service,
  file_ravi_mesh_v1_types,
  file_ravi_examples_v1_examples,
);

interface VectorCase {
  name: string;
  type: string;
  json: JsonValue;
}

const cases = (JSON.parse(readFileSync(join(vectorsDir, "cases.json"), "utf8")) as { cases: VectorCase[] }).cases;

function schemaOf(c: VectorCase): DescMessage {
  const schema = registry.getMessage(c.type);
  assert.ok(schema, `unknown type ${c.type}`);
  return schema;
}

function build(c: VectorCase): Message {
  return fromJson(schemaOf(c), c.json, { registry });
}

for (const c of cases) {
  test(`node encoding matches committed vector: ${c.name}`, () => {
    const encoded = toBinary(schemaOf(c), build(c));
    const path = join(vectorsDir, "node", `${c.name}.binpb`);
    if (process.env["RAVI_UPDATE_VECTORS"] === "1") {
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, encoded);
    }
    assert.deepEqual(new Uint8Array(readFileSync(path)), encoded);
  });

  for (const language of languages) {
    test(`decodes ${language} vector: ${c.name}`, () => {
      const schema = schemaOf(c);
      const expected = build(c);
      const data = new Uint8Array(readFileSync(join(vectorsDir, language, `${c.name}.binpb`)));
      const decoded = fromBinary(schema, data);
      assert.ok(equals(schema, decoded, expected), `${language}/${c.name} decodes to a different value`);
      assert.deepEqual(data, toBinary(schema, expected));
    });
  }
}

for (const language of languages) {
  test(`nested payload decodes as its declared type: ${language}`, () => {
    const data = new Uint8Array(readFileSync(join(vectorsDir, language, "send_request.binpb")));
    const request = fromBinary(SendRequestSchema, data);
    const payload = request.envelope?.payload;
    assert.equal(payload?.type, WriteRequestSchema.typeName);
    const inner = fromBinary(WriteRequestSchema, payload.data);
    assert.equal(inner.topic, "Rendezvous hashing");
    assert.deepEqual(inner.feedback, ["cite the paper ✓"]);
  });
}
