// Self-describing payloads: encode replies as binary protobuf, decode binary
// protobuf or canonical protobuf JSON by the payload's type name.
import {
  create,
  createRegistry,
  fromBinary,
  fromJson,
  toBinary,
  type DescFile,
  type DescMessage,
  type JsonValue,
  type Message,
  type MessageInitShape,
  type MessageShape,
  type Registry,
} from "@bufbuild/protobuf";
import { PayloadSchema, type Payload } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import { MAX_NESTING_DEPTH } from "@ravi-mesh/contract/ravi/mesh/v1/contract";

import { errors } from "./errors.js";

export const CONTENT_TYPE_PROTOBUF = "application/x-protobuf";
export const CONTENT_TYPE_JSON = "application/json";

/**
 * The encoding a Payload.content_type names (types.proto): a media type whose
 * type and subtype match case-insensitively, with parameters allowed but no
 * charset other than UTF-8. Throws BAD_PAYLOAD for anything else.
 */
export function mediaType(contentType: string): string {
  if (contentType === CONTENT_TYPE_PROTOBUF || contentType === CONTENT_TYPE_JSON) {
    return contentType;
  }
  const [essence = "", ...parameters] = contentType.split(";");
  const media = essence.trim().toLowerCase();
  if (media !== CONTENT_TYPE_PROTOBUF && media !== CONTENT_TYPE_JSON) {
    throw errors.badPayload(
      `unsupported content type ${JSON.stringify(contentType.slice(0, 100))}; expected ${CONTENT_TYPE_PROTOBUF} or ${CONTENT_TYPE_JSON}`,
    );
  }
  for (const parameter of parameters) {
    const [name = "", value = ""] = parameter.split("=", 2);
    const charset = value.trim().replace(/^"|"$/g, "").toLowerCase();
    if (name.trim().toLowerCase() === "charset" && charset !== "utf-8" && charset !== "utf8") {
      throw errors.badPayload(`content type ${JSON.stringify(contentType.slice(0, 100))}: only UTF-8 JSON is accepted`);
    }
  }
  return media;
}

/** The message type a Payload.type names: a type URL names the type after its last '/'. */
export function typeNameOf(type: string): string {
  const slash = type.lastIndexOf("/");
  return slash < 0 ? type : type.slice(slash + 1);
}

/**
 * Throws BAD_PAYLOAD when JSON data nests deeper than MAX_NESTING_DEPTH arrays
 * and objects. Counting only starts past that many brackets, which keeps
 * ordinary payloads on the fast path (and JSON.parse off a deep stack).
 */
export function checkJsonDepth(data: Uint8Array): void {
  let brackets = 0;
  for (const byte of data) {
    if (byte === 0x5b || byte === 0x7b) {
      brackets += 1;
    }
  }
  if (brackets <= MAX_NESTING_DEPTH) {
    return;
  }
  let depth = 0;
  let inString = false;
  let escaped = false;
  for (const byte of data) {
    if (inString) {
      if (escaped) {
        escaped = false;
      } else if (byte === 0x5c) {
        escaped = true;
      } else if (byte === 0x22) {
        inString = false;
      }
    } else if (byte === 0x22) {
      inString = true;
    } else if (byte === 0x5b || byte === 0x7b) {
      depth += 1;
      if (depth > MAX_NESTING_DEPTH) {
        throw errors.badPayload(`JSON nests deeper than ${MAX_NESTING_DEPTH} arrays and objects`);
      }
    } else if (byte === 0x5d || byte === 0x7d) {
      depth -= 1;
    }
  }
}

/** Encodes a message as a binary protobuf payload. */
export function encodePayload<Desc extends DescMessage>(
  schema: Desc,
  message: MessageInitShape<Desc> | MessageShape<Desc>,
): Payload {
  const full = isMessage(schema, message) ? message : create(schema, message);
  return create(PayloadSchema, {
    type: schema.typeName,
    contentType: CONTENT_TYPE_PROTOBUF,
    data: toBinary(schema, full),
  });
}

/** Encodes a message as a canonical-JSON payload. */
export function encodeJsonPayload(typeName: string, json: JsonValue | string): Payload {
  const text = typeof json === "string" ? json : JSON.stringify(json);
  return create(PayloadSchema, {
    type: typeName,
    contentType: CONTENT_TYPE_JSON,
    data: new TextEncoder().encode(text),
  });
}

function isMessage<Desc extends DescMessage>(
  schema: Desc,
  value: MessageInitShape<Desc> | MessageShape<Desc>,
): value is MessageShape<Desc> {
  return (value as { $typeName?: unknown }).$typeName === schema.typeName;
}

/** Decodes a payload with a known schema; throws BAD_PAYLOAD on a type mismatch or bad data. */
export function decodeAs<Desc extends DescMessage>(
  schema: Desc,
  payload: Payload | undefined,
  registry?: Registry,
): MessageShape<Desc> {
  if (payload === undefined) {
    throw errors.badPayload(`expected a ${schema.typeName} payload, got none`);
  }
  if (typeNameOf(payload.type) !== schema.typeName) {
    throw errors.badPayload(`expected a ${schema.typeName} payload, got ${payload.type}`, { message_type: payload.type });
  }
  return decodeWith(schema, payload, registry);
}

function decodeWith<Desc extends DescMessage>(schema: Desc, payload: Payload, registry?: Registry): MessageShape<Desc> {
  const media = mediaType(payload.contentType);
  if (media === CONTENT_TYPE_JSON) {
    checkJsonDepth(payload.data);
  }
  try {
    if (media === CONTENT_TYPE_PROTOBUF) {
      return fromBinary(schema, payload.data);
    }
    if (media === CONTENT_TYPE_JSON) {
      const text = new TextDecoder("utf-8", { fatal: true }).decode(payload.data);
      const json = JSON.parse(text) as JsonValue;
      return fromJson(schema, json, registry === undefined ? undefined : { registry });
    }
  } catch (error) {
    throw errors.badPayload(
      `cannot decode ${payload.type} from ${payload.contentType}: ${error instanceof Error ? error.message : String(error)}`,
      { message_type: payload.type },
    );
  }
  throw errors.badPayload(
    `unsupported content type ${JSON.stringify(payload.contentType)}; expected ${CONTENT_TYPE_PROTOBUF} or ${CONTENT_TYPE_JSON}`,
    { message_type: payload.type },
  );
}

/** Throws BAD_PAYLOAD unless the payload is present and has a supported content type. */
export function checkPayloadShape(payload: Payload | undefined): Payload {
  if (payload === undefined) {
    throw errors.badPayload("the envelope carries no payload");
  }
  if (typeNameOf(payload.type) === "") {
    throw errors.badPayload("the payload has no type name");
  }
  mediaType(payload.contentType);
  return payload;
}

/**
 * TypeRegistry knows the message types a node can decode: the files of every
 * registered handler's message type, plus any files or schemas added.
 */
export class TypeRegistry {
  private readonly files = new Map<string, DescFile>();
  private registry: Registry = createRegistry();

  /** Adds the whole file of each schema (so its sibling messages are known too). */
  add(...items: (DescFile | DescMessage)[]): void {
    let changed = false;
    for (const item of items) {
      const file = item.kind === "file" ? item : item.file;
      if (!this.files.has(file.name)) {
        this.files.set(file.name, file);
        changed = true;
      }
    }
    if (changed) {
      this.registry = createRegistry(...this.files.values());
    }
  }

  /** The protobuf registry of the known types (for JSON and Any). */
  get protobuf(): Registry {
    return this.registry;
  }

  /** The known files. */
  allFiles(): DescFile[] {
    return [...this.files.values()];
  }

  getMessage(typeName: string): DescMessage | undefined {
    return this.registry.getMessage(typeName);
  }

  /** Decodes a payload by its type name; throws BAD_PAYLOAD for anything it cannot decode. */
  decode(payload: Payload | undefined): { schema: DescMessage; message: Message } {
    const checked = checkPayloadShape(payload);
    const schema = this.registry.getMessage(typeNameOf(checked.type));
    if (schema === undefined) {
      throw errors.badPayload(`unknown payload type ${checked.type.slice(0, 200)}`, { message_type: checked.type });
    }
    return { schema, message: decodeWith(schema, checked, this.registry) };
  }
}
