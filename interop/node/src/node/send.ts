// Send: one dispatcher for Sends made here and Sends received, local delivery or
// forwarding with hop and loop checks (Go: send.go, handleSend).
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { context as otelContext } from "@opentelemetry/api";
import { HOP_LIMIT } from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import {
  SendRequestSchema,
  SendResponseSchema,
  type SendRequest,
  type SendResponse,
} from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { AgentIdSchema, EnvelopeSchema, type Payload } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { randomUUID } from "node:crypto";
import type { SendOptions } from "../agent.js";
import { SendReply } from "../client.js";
import { asRaviError, errors } from "../errors.js";
import { CallScope, traceHeaders, type Origin, type TraceContext } from "../host.js";
import {
  checkAgentId,
  checkTopicId,
  formatAgentId,
  sameAgent,
  type AgentAddress,
} from "../ids.js";
import {
  extractContext,
  injectContext,
  recordFailure,
  traceOfCarrier,
  type Started,
} from "../tracing.js";
import { CallInfo, NodeCore, handlerMetadata } from "./core.js";
import { deliverEvent, withRoom } from "./deliver.js";
import { knownTypes, route, unreachableHosting } from "./routing.js";

// --- Send -------------------------------------------------------------------
/**
 * Handles a Send in the order of the spec: id, local type or forward,
 * payload, call chain, handler, then the handler under the deadline. The
 * checks and the mailbox push happen synchronously, so Sends made in order
 * are delivered in order.
 */
export async function dispatchSend(node: NodeCore, request: SendRequest, call: CallInfo): Promise<SendResponse> {
  const recipient = checkAgentId(request.recipient);
  const registration = node.registrations.get(recipient.type);
  if (registration === undefined) {
    return forward(node, request, recipient, call);
  }
  const envelope = request.envelope ?? create(EnvelopeSchema);
  if (request.topic !== undefined) {
    // A published message handed over by the node where it was published.
    const { schema, message } = node.types.decode(envelope.payload);
    const topic = checkTopicId(request.topic);
    // A delivery of a publication: it waits for room in a full mailbox
    // until the Send's deadline and then fails with MAILBOX_FULL, as in Go.
    await withRoom(node, call.deadline, call.signal, (room) =>
      deliverEvent(node, registration, recipient.key, schema, message, envelope, topic, room, call.trace),
    );
    return create(SendResponseSchema, { nodeId: node.nodeId });
  }
  // The handle span's parent: the envelope's trace context, else the call's gRPC metadata.
  const handling = node.tracing.handle(recipient, envelope, extractContext(envelope.metadata, call.trace));
  // The span ends here rather than in a wrapper: a wrapper would delay every
  // outcome by a few microtasks and change the order of calls that complete together.
  try {
    const { schema, message } = node.types.decode(envelope.payload);
    const metadata = handlerMetadata(envelope, call.trace);
    const trace: TraceContext = envelope.metadata["traceparent"] !== undefined ? traceOfCarrier(envelope.metadata) : call.trace;
    if (!registration.reentrant && envelope.callChain.some((a) => sameAgent(a, recipient))) {
      throw errors.reentrantCall(formatAgentId(recipient));
    }
    if (!registration.hasHandler(schema.typeName)) {
      throw errors.noHandler(recipient.type, schema.typeName, registration.handledTypes());
    }
    const result = await registration.deliver(recipient.key, schema.typeName, message, {
      envelope,
      metadata,
      topic: undefined,
      deadline: call.deadline,
      signal: call.signal,
      trace,
      context: handling.context,
    });
    return create(SendResponseSchema, { nodeId: node.nodeId, ...(result === undefined ? {} : { result }) });
  } catch (error) {
    recordFailure(handling.span, error);
    throw error;
  } finally {
    handling.span.end();
  }
}

/**
 * Sends a request for a type this node does not host to the peer hosting
 * it. A Send received from outside is forwarded under a forward span.
 */
export async function forward(node: NodeCore, request: SendRequest, recipient: AgentAddress, call: CallInfo): Promise<SendResponse> {
  const forwarding = call.received
    ? node.tracing.forward(recipient, (request.route?.hopCount ?? 0) + 1, extractContext(request.envelope?.metadata, call.trace))
    : undefined;
  try {
    return await forwardTo(node, request, recipient, call, forwarding);
  } catch (error) {
    if (forwarding !== undefined) {
      recordFailure(forwarding.span, error);
    }
    throw error;
  } finally {
    forwarding?.span.end();
  }
}

export async function forwardTo(
  node: NodeCore,
  request: SendRequest,
  recipient: AgentAddress,
  call: CallInfo,
  forwarding: Started | undefined,
): Promise<SendResponse> {
  const visited = request.route?.visitedNodeIds ?? [];
  const hops = request.route?.hopCount ?? 0;
  if (visited.includes(node.nodeId)) {
    throw errors.forwardingLoop(node.nodeId);
  }
  if (hops >= HOP_LIMIT) {
    throw errors.hopLimit(node.nodeId, HOP_LIMIT);
  }
  const target = route(node, recipient.type, recipient.key, visited);
  const link = target === undefined ? undefined : node.routes.get(target)?.link;
  const client = link?.client;
  if (target === undefined || link === undefined || client === undefined) {
    const unreachable = unreachableHosting(node, recipient.type, visited);
    throw unreachable.length > 0
      ? errors.peerUnavailable(
          node.nodeId,
          unreachable.join(", "),
          `every node hosting agent type "${recipient.type}" is unreachable (${unreachable.join(", ")})`,
        )
      : errors.agentTypeNotFound(recipient.type, node.nodeId, knownTypes(node));
  }
  forwarding?.span.setAttribute("ravi.route.next_node", target);
  const nextRoute = call.received ? { hopCount: hops + 1, visitedNodeIds: [...visited, node.nodeId] } : request.route;
  const scope = new CallScope(call.deadline, call.signal, `while forwarding to ${target}`);
  try {
    // The envelope travels with the message's own trace context; a call that
    // brought its trace context in gRPC metadata only gets it into the
    // envelope, the one carrier of a frame on the Multiplex stream (a unary
    // fallback's gRPC metadata carries the same, as Python's nodes do).
    let envelope = request.envelope;
    let headers: Record<string, string> | undefined;
    if (envelope?.metadata["traceparent"] !== undefined) {
      headers = traceHeaders(traceOfCarrier(envelope.metadata));
    } else {
      headers = traceHeaders(call.trace);
      if (envelope !== undefined && headers !== undefined) {
        envelope = { ...envelope, metadata: { ...envelope.metadata, ...headers } };
      }
    }
    return await client.multiplexer.send(
      {
        recipient: request.recipient,
        ...(envelope === undefined ? {} : { envelope }),
        ...(nextRoute === undefined ? {} : { route: nextRoute }),
        ...(request.topic === undefined ? {} : { topic: request.topic }),
      },
      call.deadline - Date.now(),
      scope.signal,
      headers,
    );
  } catch (error) {
    const failure = asRaviError(error);
    if (failure.reason === undefined && failure.code === Code.Unavailable) {
      throw errors.peerUnavailable(node.nodeId, link.address, `peer ${target} at ${link.address} is unavailable: ${failure.message}`);
    }
    throw failure;
  } finally {
    scope.dispose();
  }
}

/** Sends from an agent (or from the node itself when origin.agent is unset). */
export async function sendFrom(node: NodeCore, origin: Origin, to: AgentAddress, payload: Payload, options: SendOptions): Promise<SendReply> {
  const envelope = create(EnvelopeSchema, {
    messageId: options.messageId ?? randomUUID(),
    ...(origin.agent === undefined ? {} : { sender: create(AgentIdSchema, origin.agent) }),
    payload,
    metadata: { ...(options.metadata ?? {}) },
    idempotencyKey: options.idempotencyKey ?? "",
    callChain: origin.callChain.map((a) => create(AgentIdSchema, a)),
  });
  const sending = node.tracing.send(to, envelope, origin.context ?? otelContext.active());
  try {
    const now = Date.now();
    let deadline = now + (options.timeoutMs ?? (origin.deadline === undefined ? node.defaultTimeoutMs : origin.deadline - now));
    if (origin.deadline !== undefined) {
      deadline = Math.min(deadline, origin.deadline);
    }
    if (deadline <= now) {
      throw errors.deadlineExceeded(`before sending to ${formatAgentId(to)}`);
    }
    const signals = [origin.signal, options.signal].filter((s): s is AbortSignal => s !== undefined);
    // The send span's W3C context travels in the envelope (and in gRPC metadata to a peer).
    injectContext(sending.context, envelope.metadata);
    const response = await dispatchSend(node, create(SendRequestSchema, { recipient: create(AgentIdSchema, to), envelope }), {
      deadline,
      signal: signals.length === 0 ? undefined : AbortSignal.any(signals),
      trace: traceOfCarrier(envelope.metadata),
      received: false,
    });
    return new SendReply(response.nodeId, response.result, node.types.protobuf);
  } catch (error) {
    recordFailure(sending.span, error);
    throw error;
  } finally {
    sending.span.end();
  }
}
