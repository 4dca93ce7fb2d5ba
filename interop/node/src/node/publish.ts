// Publish: local subscribers, hand-over to the peer hosting a subscribed type,
// and events from peers' streams (Go: publish.go).
import { create, type DescMessage, type Message } from "@bufbuild/protobuf";
import { type HandlerContext } from "@connectrpc/connect";
import { context as otelContext, type Context } from "@opentelemetry/api";
import { PublishScope, SendRequestSchema, type Event, type PublishRequest } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import {
  AgentIdSchema,
  EnvelopeSchema,
  TopicIdSchema,
  type Envelope,
  type Payload,
} from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { randomUUID } from "node:crypto";
import type { PublishOptions, PublishResult } from "../agent.js";
import { checkPayloadShape } from "../codec.js";
import { asRaviError } from "../errors.js";
import {
  checkTopicId,
  formatAgentId,
  sameAgent,
  type AgentAddress,
  type TopicAddress,
} from "../ids.js";
import { PeerLink } from "../peers.js";
import { injectContext, traceOfCarrier, traced } from "../tracing.js";
import { NodeCore, handlerMetadata, traceOf } from "./core.js";
import { deliverEvent, withRoom } from "./deliver.js";
import { route } from "./routing.js";
import { forward } from "./send.js";
import { backedUp, catchUp, matchesFilter, offerToStreams } from "./streams.js";

// --- Publish and Subscribe --------------------------------------------------
export function handlePublish(node: NodeCore, request: PublishRequest, ctx: HandlerContext): Promise<PublishResult> {
  const topic = checkTopicId(request.topic);
  const envelope = request.envelope ?? create(EnvelopeSchema);
  checkPayloadShape(envelope.payload);
  Object.assign(envelope.metadata, handlerMetadata(envelope, traceOf(ctx)));
  if (envelope.messageId === "") {
    envelope.messageId = randomUUID();
  }
  // The caller is the publisher (and made the publish span, if it traces): the
  // events carry its trace context unchanged, so deliveries are its children.
  // Full local mailboxes are waited for until the RPC's deadline (as in Go).
  return withRoom(node, node.deadlineOf(ctx), ctx.signal, (room) =>
    publishEnvelope(node, topic, envelope, request.scope === PublishScope.NODE, true, room),
  );
}

/** Publishes as an agent (or as the node): local subscribers and every matching stream. */
export async function publishFrom(
  node: NodeCore,
  sender: AgentAddress | undefined,
  parent: Context | undefined,
  topic: TopicAddress,
  payload: Payload,
  options: PublishOptions,
  within?: { readonly deadline: number; readonly signal: AbortSignal | undefined },
): Promise<PublishResult> {
  checkTopicId(topic);
  const envelope = create(EnvelopeSchema, {
    messageId: options.messageId ?? randomUUID(),
    ...(sender === undefined ? {} : { sender: create(AgentIdSchema, sender) }),
    payload,
    metadata: { ...(options.metadata ?? {}) },
  });
  const publishing = node.tracing.publish(topic, envelope, parent ?? otelContext.active());
  // Full local mailboxes are waited for until the default deadline, or the
  // publishing handler's own deadline when that comes first.
  const deadline = Math.min(Date.now() + node.defaultTimeoutMs, within?.deadline ?? Number.POSITIVE_INFINITY);
  const result = await traced(publishing.span, () => {
    // Every event and delivery carries the publish span's W3C context.
    injectContext(publishing.context, envelope.metadata);
    return withRoom(node, deadline, within?.signal, (room) => publishEnvelope(node, topic, envelope, false, true, room));
  });
  if (result.streamDeliveries > 0 && backedUp(node, topic)) {
    await catchUp(node, topic);
  }
  return result;
}

/**
 * Delivers to local subscribers, waiting on `room` for full mailboxes, then
 * queues the event on every matching stream (unless `nodeOnly`). A local
 * delivery that got no room fails the publication before any stream sees
 * it, as in Go. When nothing had to wait, everything happens synchronously,
 * so publications made in order reach mailboxes and streams in order.
 */
export function publishEnvelope(
  node: NodeCore,
  topic: TopicAddress,
  envelope: Envelope,
  nodeOnly: boolean,
  strict: boolean,
  room: AbortSignal,
): PublishResult | Promise<PublishResult> {
  const local = deliverLocally(node, topic, envelope, strict, room);
  const result = (localDeliveries: number): PublishResult => ({
    localDeliveries,
    streamDeliveries: nodeOnly ? 0 : offerToStreams(node, topic, envelope),
  });
  return typeof local === "number" ? result(local) : local.then(result);
}

/**
 * Hands a published message to each agent type subscribed to its topic,
 * once per type, never to the publishing agent itself: types hosted here go
 * to their mailboxes, other types to the peer hosting them as a Send with
 * the topic set. The payload is decoded only when an agent here needs it:
 * with `strict` a payload it cannot decode is BAD_PAYLOAD, otherwise it is
 * logged and dropped. A full mailbox is waited for until `room` aborts;
 * then the publication fails with MAILBOX_FULL (the deliveries that got
 * room stay queued). Returns the number of deliveries: synchronously when
 * no delivery had to wait.
 */
export function deliverLocally(
  node: NodeCore,
  topic: TopicAddress,
  envelope: Envelope,
  strict: boolean,
  room: AbortSignal,
): number | Promise<number> {
  const agentTypes = new Set<string>();
  for (const sub of node.subscriptionsById.values()) {
    if (matchesFilter(sub.filter, topic.type)) {
      agentTypes.add(sub.agentType);
    }
  }
  const deliveries: (() => boolean | Promise<boolean>)[] = [];
  let decoded: { schema: DescMessage; message: Message } | undefined;
  for (const agentType of agentTypes) {
    const recipient = { type: agentType, key: topic.source };
    if (envelope.sender !== undefined && sameAgent(envelope.sender, recipient)) {
      continue;
    }
    const registration = node.registrations.get(agentType);
    if (registration === undefined) {
      deliveries.push(() => deliverRemote(node, recipient, topic, envelope));
      continue;
    }
    if (decoded === undefined) {
      try {
        decoded = node.types.decode(envelope.payload);
      } catch (error) {
        if (strict) {
          throw error;
        }
        node.logger.warn(`dropped an event on ${topic.type}/${topic.source}: ${asRaviError(error).message}`);
        return 0;
      }
    }
    const { schema, message } = decoded;
    deliveries.push(() => deliverEvent(node, registration, topic.source, schema, message, envelope, topic, room));
  }
  // Every delivery starts now (each mailbox keeps its own waiters in
  // order); only those that found a mailbox full are waited for.
  const started = deliveries.map((deliver) => deliver());
  if (started.every((queued): queued is boolean => typeof queued === "boolean")) {
    return started.filter((queued) => queued).length;
  }
  return Promise.allSettled(started).then((settled) => {
    let delivered = 0;
    for (const outcome of settled) {
      if (outcome.status === "rejected") {
        throw outcome.reason;
      }
      delivered += outcome.value ? 1 : 0;
    }
    return delivered;
  });
}

/** Hands a published message to the peer hosting a subscribed type (in the background). */
export function deliverRemote(node: NodeCore, recipient: AgentAddress, topic: TopicAddress, envelope: Envelope): boolean {
  if (route(node, recipient.type, recipient.key) === undefined) {
    node.logger.warn(`a subscription to ${topic.type} names agent type "${recipient.type}", which no node hosts`);
    return false;
  }
  const request = create(SendRequestSchema, {
    recipient: create(AgentIdSchema, recipient),
    envelope,
    topic: create(TopicIdSchema, { type: topic.type, source: topic.source }),
  });
  // The hand-over is part of the publication, not a send of its own (as in Python):
  // the envelope keeps the publisher's trace context, so the receiving node's
  // deliver span is the publish span's child.
  const pending = forward(node, request, recipient, {
    deadline: Date.now() + node.eventTimeoutMs,
    signal: undefined,
    trace: traceOfCarrier(envelope.metadata),
    received: false,
  }).catch((error: unknown) => {
    node.logger.warn(
      `could not deliver ${envelope.payload?.type ?? "a message"} published on ${topic.type}/${topic.source} to ${formatAgentId(recipient)}: ${asRaviError(error).message}`,
    );
  });
  node.background.add(pending);
  void pending.finally(() => node.background.delete(pending));
  return true;
}

export async function onPeerEvent(node: NodeCore, link: PeerLink, event: Event, signal: AbortSignal): Promise<void> {
  try {
    const topic = checkTopicId(event.topic);
    const envelope = event.envelope ?? create(EnvelopeSchema);
    // An event carries no deadline of its own: it waits for room in a full
    // mailbox as long as a handler of an event may run (eventTimeoutMs), or
    // until the stream ends. The peer link awaits this before it reads the
    // next event, so a slow agent slows the stream (HTTP/2 flow control)
    // instead of events piling up here.
    await withRoom(node, Date.now() + node.eventTimeoutMs, signal, (room) =>
      deliverLocally(node, topic, envelope, false, room),
    );
  } catch (error) {
    node.logger.warn(`dropped an event from peer ${link.label}: ${asRaviError(error).message}`);
  }
}
