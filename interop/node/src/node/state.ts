// Promises and agent state: ResolvePromise, SaveState and LoadState (Go: state.go).
import { create, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  type LoadStateRequest,
  type ResolvePromiseRequest,
  type SaveStateRequest,
} from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { PayloadSchema, type Payload } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { RaviClient } from "../client.js";
import { checkPayloadShape, CONTENT_TYPE_JSON } from "../codec.js";
import { asRaviError, errors, RaviError } from "../errors.js";
import { checkAgentId, formatAgentId, parseAgentId, type AgentAddress } from "../ids.js";
import { NodeCore } from "./core.js";

/** The payload type and content type of JSON-object agent state. */
const STATE_TYPE = "google.protobuf.Struct";

export function jsonObjectPayload(value: JsonObject): Payload {
  return create(PayloadSchema, {
    type: STATE_TYPE,
    contentType: CONTENT_TYPE_JSON,
    data: new TextEncoder().encode(JSON.stringify(value)),
  });
}

export function jsonObjectOf(payload: Payload | undefined, key: string): JsonObject {
  let value: JsonValue;
  try {
    const media = (checkPayloadShape(payload).contentType.split(";")[0] ?? "").trim().toLowerCase();
    if (media !== CONTENT_TYPE_JSON) {
      throw new Error(`expected ${CONTENT_TYPE_JSON}, got ${media}`);
    }
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload?.data)) as JsonValue;
  } catch (error) {
    throw errors.badPayload(`the state of ${key} is not JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw errors.badPayload(`the state of ${key} is not a JSON object`);
  }
  return value;
}

// --- promises and state -----------------------------------------------------
export function handleResolvePromise(node: NodeCore, request: ResolvePromiseRequest): { waiting: boolean } {
  if (request.name === "") {
    throw errors.badId("the promise name is empty");
  }
  node.types.decode(request.value);
  const waiting = node.promises.resolve(request.name, checkPayloadShape(request.value));
  return { waiting };
}

/**
 * Resolves a named promise here and on every connected peer (the waiting
 * handler may be anywhere). Throws ALREADY_EXISTS when any node had it
 * resolved already.
 */
export async function resolvePromise(node: NodeCore, name: string, value: Payload, options: { timeoutMs?: number } = {}): Promise<void> {
  let already = false;
  try {
    node.promises.resolve(name, value);
  } catch (error) {
    if (!(error instanceof RaviError && error.code === Code.AlreadyExists)) {
      throw error;
    }
    already = true;
  }
  const clients = [...node.routes.values()].map((e) => e.link.client).filter((c): c is RaviClient => c !== undefined);
  const results = await Promise.allSettled(
    clients.map((c) =>
      c.agentService.resolvePromise({ name, value }, { timeoutMs: options.timeoutMs ?? node.defaultTimeoutMs }),
    ),
  );
  for (const result of results) {
    if (result.status === "rejected") {
      const failure = asRaviError(result.reason);
      if (failure.code === Code.AlreadyExists) {
        already = true;
      } else if (failure.code !== Code.Unimplemented) {
        node.logger.warn(`a peer could not resolve promise "${name}": ${failure.message}`);
      }
    }
  }
  if (already) {
    throw new RaviError(Code.AlreadyExists, `promise "${name}" is resolved already`);
  }
}

export function handleSaveState(node: NodeCore, request: SaveStateRequest): { states: Record<string, Payload> } {
  return { states: saveState(node, request.agent) };
}

/** The JSON state of one local agent, or of every local agent instance, by "type/key". */
export function saveState(node: NodeCore, agent?: AgentAddress): Record<string, Payload> {
  const states: Record<string, Payload> = {};
  if (agent !== undefined) {
    const id = checkAgentId(agent);
    const registration = node.registrations.get(id.type);
    if (registration === undefined) {
      throw errors.agentTypeNotFound(id.type, node.nodeId);
    }
    states[formatAgentId(id)] = jsonObjectPayload(registration.saveState(id.key));
    return states;
  }
  for (const registration of node.registrations.values()) {
    for (const key of registration.keys()) {
      states[`${registration.type}/${key}`] = jsonObjectPayload(registration.saveState(key));
    }
  }
  return states;
}

export function handleLoadState(node: NodeCore, request: LoadStateRequest): Record<string, never> {
  loadState(node, request.states);
  return {};
}

/** Loads JSON states ("type/key" -> Struct JSON payload) into local agents, creating them as needed. */
export function loadState(node: NodeCore, states: Readonly<Record<string, Payload>>): void {
  const parsed = Object.entries(states).map(([key, payload]) => {
    const id = parseAgentId(key);
    const registration = node.registrations.get(id.type);
    if (registration === undefined) {
      throw errors.agentTypeNotFound(id.type, node.nodeId);
    }
    return { registration, key: id.key, saved: jsonObjectOf(payload, key) };
  });
  for (const { registration, key, saved } of parsed) {
    registration.loadState(key, saved);
  }
}
