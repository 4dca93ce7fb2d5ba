// payload builds an AgentId and a self-describing payload and round-trips them
// through the protobuf wire format: the smallest Node program over the
// generated ravi.mesh.v1 code.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { DraftSchema } from "@ravi-mesh/contract/ravi/examples/v1/examples_pb";
import { SendRequestSchema } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { AgentIdSchema, EnvelopeSchema, PayloadSchema } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

const draft = create(DraftSchema, { text: "hello from Node", revision: 1 });
const request = create(SendRequestSchema, {
  recipient: create(AgentIdSchema, { type: "formatter", key: "default" }),
  envelope: create(EnvelopeSchema, {
    messageId: "node-1",
    payload: create(PayloadSchema, {
      type: DraftSchema.typeName,
      contentType: "application/x-protobuf",
      data: toBinary(DraftSchema, draft),
    }),
  }),
});
const wire = toBinary(SendRequestSchema, request);
const back = fromBinary(SendRequestSchema, wire);
const payload = back.envelope?.payload;
if (payload === undefined) {
  throw new Error("payload lost in the round trip");
}
const decoded = fromBinary(DraftSchema, payload.data);
console.log(`${back.recipient?.type} <- ${payload.type} "${decoded.text}" (${wire.length} bytes on the wire)`);
