// Agent and topic identifiers: validation and the "type/key" text form.
import { MAX_KEY_BYTES, MAX_TYPE_BYTES } from "@ravi-mesh/contract/ravi/mesh/v1/contract";

import { errors } from "./errors.js";

/** AgentAddress addresses one agent instance: type selects the code, key the instance. */
export interface AgentAddress {
  readonly type: string;
  readonly key: string;
}

/** TopicAddress names a stream of published events; subscriptions match on type. */
export interface TopicAddress {
  readonly type: string;
  readonly source: string;
}

const TYPE_PATTERN = /^[A-Za-z0-9_.:-]+$/;
// A printable key (types.proto): no control character (Unicode category Cc).
const CONTROL_PATTERN = /[\u0000-\u001f\u007f-\u009f]/;

function checkType(kind: string, value: string): void {
  if (!TYPE_PATTERN.test(value)) {
    throw errors.badId(`${kind} must be a non-empty string of letters, digits, '_', '-', '.' or ':'; got ${JSON.stringify(value.slice(0, 64))}`);
  }
  if (value.length > MAX_TYPE_BYTES) {
    throw errors.badId(`${kind} is longer than ${MAX_TYPE_BYTES} characters`);
  }
}

function checkName(kind: string, value: string): void {
  if (value === "" || CONTROL_PATTERN.test(value)) {
    throw errors.badId(`${kind} must be a non-empty string without control characters; got ${JSON.stringify(value.slice(0, 64))}`);
  }
  if (value.length > MAX_KEY_BYTES / 3 && Buffer.byteLength(value, "utf8") > MAX_KEY_BYTES) {
    throw errors.badId(`${kind} is longer than ${MAX_KEY_BYTES} bytes of UTF-8`);
  }
}

/** Throws BAD_ID unless `type` is a valid agent type name. */
export function checkAgentType(type: string): void {
  checkType("agent type", type);
}

/** Throws BAD_ID unless `type` is a valid topic type name. */
export function checkTopicType(type: string): void {
  checkType("topic type", type);
}

/** Throws BAD_ID unless the agent id is valid. */
export function checkAgentId(id: AgentAddress | undefined): AgentAddress {
  if (id === undefined) {
    throw errors.badId("the agent id is missing");
  }
  checkType("agent type", id.type);
  checkName("agent key", id.key);
  return id;
}

/** Throws BAD_ID unless the topic id is valid. */
export function checkTopicId(id: TopicAddress | undefined): TopicAddress {
  if (id === undefined) {
    throw errors.badId("the topic id is missing");
  }
  checkType("topic type", id.type);
  checkName("topic source", id.source);
  return id;
}

/** "type/key". */
export function formatAgentId(id: AgentAddress): string {
  return `${id.type}/${id.key}`;
}

/** Parses "type/key" (the key may contain '/'); throws BAD_ID when malformed. */
export function parseAgentId(text: string): AgentAddress {
  const slash = text.indexOf("/");
  if (slash < 0) {
    throw errors.badId(`expected 'type/key', got ${JSON.stringify(text)}`);
  }
  return checkAgentId({ type: text.slice(0, slash), key: text.slice(slash + 1) });
}

/** Parses "type/source"; throws BAD_ID when malformed. */
export function parseTopicId(text: string): TopicAddress {
  const slash = text.indexOf("/");
  if (slash < 0) {
    throw errors.badId(`expected 'type/source', got ${JSON.stringify(text)}`);
  }
  return checkTopicId({ type: text.slice(0, slash), source: text.slice(slash + 1) });
}

/** True when two agent ids are equal. */
export function sameAgent(a: AgentAddress, b: AgentAddress): boolean {
  return a.type === b.type && a.key === b.key;
}
