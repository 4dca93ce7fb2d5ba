// Deliveries into local mailboxes: the wait for room, and the handler of a
// published event (Go: mailbox.go).
import { type DescMessage, type Message } from "@bufbuild/protobuf";
import { type Envelope } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { asRaviError } from "../errors.js";
import { CallScope, type Registration, type TraceContext } from "../host.js";
import { sameAgent, type TopicAddress } from "../ids.js";
import { extractContext, traceOfCarrier, traced } from "../tracing.js";
import { NodeCore } from "./core.js";

/**
 * Runs a publication with the signal its deliveries wait on for room in a
 * full mailbox: it aborts at `deadline`, or with `signal`. A wait is never
 * unbounded, so memory stays bounded and a stuck agent cannot hold a
 * publisher forever.
 */
export async function withRoom<T>(
  node: NodeCore,
  deadline: number,
  signal: AbortSignal | undefined,
  body: (room: AbortSignal) => T | Promise<T>,
): Promise<T> {
  const scope = new CallScope(deadline, signal, "while waiting for room in a mailbox");
  try {
    return await body(scope.signal);
  } finally {
    scope.dispose();
  }
}

/**
 * Queues a published message for one local agent, waiting for room in a
 * full mailbox until `room` aborts. Returns whether it was delivered: a
 * boolean when that is known at once, else a promise that rejects with
 * MAILBOX_FULL when no room came in time (the caller reports that).
 * Handler failures are logged.
 */
export function deliverEvent(
  node: NodeCore,
  registration: Registration,
  key: string,
  schema: DescMessage,
  message: Message,
  envelope: Envelope,
  topic: TopicAddress,
  room: AbortSignal,
  fallback?: TraceContext,
): boolean | Promise<boolean> {
  const agent = `${registration.type}/${key}`;
  if (envelope.sender !== undefined && sameAgent(envelope.sender, { type: registration.type, key })) {
    return false;
  }
  if (!registration.hasHandler(schema.typeName)) {
    node.logger.warn(`${agent} has no handler for ${schema.typeName} published on ${topic.type}/${topic.source}`);
    return false;
  }
  const trace =
    envelope.metadata["traceparent"] !== undefined || fallback === undefined ? traceOfCarrier(envelope.metadata) : fallback;
  // The deliver span's parent is the event's trace context, and it links to it too.
  const delivering = node.tracing.deliver({ type: registration.type, key }, topic, envelope, extractContext(envelope.metadata, fallback));
  const { waiting, done } = registration.deliverEvent(
    key,
    schema.typeName,
    message,
    {
      envelope,
      metadata: { ...envelope.metadata },
      topic,
      deadline: Date.now() + node.eventTimeoutMs,
      signal: undefined,
      trace,
      context: delivering.context,
    },
    room,
  );
  const handled = traced(delivering.span, () => done);
  const report = (error: unknown): void => {
    node.logger.warn(`${agent} failed on ${schema.typeName} published on ${topic.type}/${topic.source}: ${asRaviError(error).message}`);
  };
  if (waiting === undefined) {
    handled.catch(report);
    return true;
  }
  // A message that never got room is the publication's failure, reported
  // by its caller; only failures after it was queued are logged here.
  return waiting.then(
    () => {
      handled.catch(report);
      return true;
    },
    (error: unknown) => {
      handled.catch(() => undefined);
      throw error;
    },
  );
}
