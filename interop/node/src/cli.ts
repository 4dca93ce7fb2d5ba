#!/usr/bin/env node
// ravi-node: run a Node node of the ravi mesh, or call one.
//
//   ravi-node node --listen 127.0.0.1:PORT --node-id ID [--peer name=addr]... [--token T]
//                  [--health-without-auth] [--max-message-bytes N] [--conformance-type NAME] [--counter-type NAME]
//                  [--idle-timeout S] [--max-active-agents N] [--checkpoint passivation|each_message]
//                  [--state-store memory|sqlite:PATH|postgresql://...] [--data-dir DIR]
//                  [--otlp-endpoint URL] [--tls-cert F --tls-key F [--tls-client-ca F]]
//                  [--peer-tls-ca F] [--peer-tls-cert F --peer-tls-key F] [--peer-tls-server-name N]
//   ravi-node send --addr A [--token T] [--tls-ca F] [--timeout-ms N] --to type/key --type FULL.NAME --json '{...}'
//   ravi-node publish --addr A [--token T] [--tls-ca F] [--timeout-ms N] --topic type/source --type NAME --json '{...}'
//                     [--scope mesh|node]
//   ravi-node subscribe --addr A [--token T] [--tls-ca F] --topic-type T [--prefix P] [--count N] [--timeout-ms N]
//   ravi-node describe --addr A [--token T] [--tls-ca F] [--timeout-ms N]
import "./heap.js";
import { create, createRegistry, fromBinary, fromJson, toBinary, toJson, type JsonValue, type Registry } from "@bufbuild/protobuf";
import { file_google_protobuf_struct } from "@bufbuild/protobuf/wkt";
import { file_ravi_conformance_v1_conformance } from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";
import { file_ravi_examples_v1_examples } from "@ravi-mesh/contract/ravi/examples/v1/examples_pb";
import { EventSchema, file_ravi_mesh_v1_agent_service } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import {
  NodeInfoSchema,
  PayloadSchema,
  type Payload,
  file_ravi_mesh_v1_types,
} from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { DEFAULT_KEEPALIVE_TIME_MS } from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import { parseArgs } from "node:util";

import { RaviClient, PublishScope, type TopicFilterSpec } from "./client.js";
import { CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF, encodeJsonPayload } from "./codec.js";
import { asRaviError, Code, codeName, RaviError } from "./errors.js";
import { parseAgentId, parseTopicId } from "./ids.js";
import { RaviNode } from "./node.js";
import { dnsTarget } from "./node/discovery.js";
import type { Logger } from "./peers.js";
import { setupTracing } from "./telemetry.js";
import type { ClientTlsOptions, ServerTlsOptions } from "./tls.js";
import { formatterAgent } from "./agents/formatter.js";
import { CONFORMANCE_TYPE, registerConformance } from "./agents/conformance.js";
import { COUNTER_TYPE, registerCounter } from "./agents/counter.js";
import { CHECKPOINTS } from "./lifecycle.js";
import { openStore, type StateStore } from "./store.js";

const USAGE = `usage: ravi-node COMMAND [flags]

  node       run a node hosting the formatter and the conformance agent,
             until SIGTERM or SIGINT
  send       send a message to an agent through a node and print the reply:
             {"nodeId": ..., "result": {"type": ..., "value": ...}}
  publish    publish a message on a topic through a node and print
             {"localDeliveries": N, "streamDeliveries": N}
  subscribe  print a node's description, then the events published through
             it, as JSON lines ({"node": ...} and {"event": ...}); events
             published through its peers reach its agents but not this
             stream: subscribe to each node to follow a mesh
  describe   print a node's description (its NodeInfo as protobuf JSON)

ravi-node node --listen HOST:PORT --node-id ID [--advertise HOST:PORT]
    [--peer NAME=HOST:PORT]... [--peer-dns-interval SECONDS] [--token TOKEN]
    [--keepalive-time SECONDS] [--keepalive-timeout SECONDS]
    [--health-without-auth] [--max-message-bytes N] [--conformance-type TYPE]
    [--counter-type TYPE] [--verbose] [--otlp-endpoint URL]
    [--idle-timeout SECONDS] [--max-active-agents N]
    [--checkpoint passivation|each_message]
    [--state-store memory|sqlite:PATH|postgresql://USER@HOST/DB]
    [--data-dir DIR] [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
    [--peer-tls-ca FILE] [--peer-tls-cert FILE --peer-tls-key FILE]
    [--peer-tls-server-name NAME]
  --peer NAME=dns:HOST:PORT: every address HOST resolves to is a peer,
  resolved again every --peer-dns-interval seconds (10 by default).
  --keepalive-time: seconds between two pings of each peer's connection (4
  by default, at least 2); --keepalive-timeout: seconds a ping may go
  unanswered before the connection closes (4 by default).
  Agent instances idle for --idle-timeout seconds (default 600; 0: never),
  or the least recently used beyond --max-active-agents (default 100000; 0:
  no bound), are passivated: their state saved to the state store (default:
  sqlite in --data-dir, else memory); --checkpoint each_message also saves
  after every handled message, before the reply.
  --tls-cert/--tls-key: serve TLS with this certificate and key;
  --tls-client-ca: require client certificates from this CA (mutual TLS);
  --peer-tls-ca: dial peers with TLS, trusting this CA; --peer-tls-cert/
  --peer-tls-key: present this certificate to peers (mutual TLS);
  --peer-tls-server-name: the name peers' certificates must carry, when it
  is not the dialled host. The node traces over OTLP/gRPC when
  --otlp-endpoint, OTEL_EXPORTER_OTLP_ENDPOINT or
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; its service.name is the node id
  unless OTEL_SERVICE_NAME is set. --token defaults to $RAVI_TOKEN.

ravi-node send --addr HOST:PORT --to TYPE/KEY --type NAME --json JSON
    [--token TOKEN] [--tls-ca FILE] [--timeout-ms N] [--encoding proto|json]
ravi-node publish --addr HOST:PORT --topic TYPE/SOURCE --type NAME
    --json JSON [--scope mesh|node] [--token TOKEN] [--tls-ca FILE]
    [--timeout-ms N] [--encoding proto|json]
ravi-node subscribe --addr HOST:PORT [--topic-type TYPE]... [--prefix P]...
    [--count N] [--timeout-ms N] [--subscriber-id ID] [--token TOKEN]
    [--tls-ca FILE]
ravi-node describe --addr HOST:PORT [--token TOKEN] [--tls-ca FILE]
    [--timeout-ms N]
  --tls-ca: dial with TLS, trusting this CA.

Exit codes: 0 done; 1 a service error (the node answered with an error or
could not be reached); 2 a usage error, or a node that could not start.
`;

/**
 * The node's log lines, as the Python and Go nodes write theirs:
 * `ravi-node NODE_ID LEVEL: message`; debug lines only with --verbose.
 */
function cliLogger(nodeId: string, verbose: boolean): Logger {
  const line = (level: string, message: string): void => {
    process.stderr.write(`ravi-node ${nodeId} ${level}: ${message}\n`);
  };
  return {
    debug: (m) => verbose && line("debug", m),
    info: (m) => line("info", m),
    warn: (m) => line("warn", m),
    error: (m) => line("error", m),
  };
}

/** How long calls in flight get to finish when the node stops (as the Python and Go nodes). */
const STOP_GRACE_MS = 5_000;

/** The message types the command line can encode and print. */
const registry: Registry = createRegistry(
  file_ravi_examples_v1_examples,
  file_ravi_conformance_v1_conformance,
  file_ravi_mesh_v1_types,
  file_ravi_mesh_v1_agent_service,
  file_google_protobuf_struct,
);

class UsageError extends Error {
  override name = "UsageError";
}

/** A bad combination of options: one line on stderr, exit 2, no usage text. */
class ConfigError extends Error {
  override name = "ConfigError";
}

/** Fails unless `a` and `b` are given together. */
function together(values: Readonly<Record<string, unknown>>, a: string, b: string): void {
  const hasA = values[a] !== undefined;
  const hasB = values[b] !== undefined;
  if (hasA !== hasB) {
    throw new ConfigError(hasA ? `--${a} needs --${b}` : `--${b} needs --${a}`);
  }
}

/** Fails when `flag` is given without any of `needs`. */
function needsOneOf(values: Readonly<Record<string, unknown>>, flag: string, needs: readonly string[]): void {
  if (values[flag] !== undefined && needs.every((n) => values[n] === undefined)) {
    throw new ConfigError(`--${flag} needs ${needs.map((n) => `--${n}`).join(" or ")}`);
  }
}

/** The TLS options of `ravi-node node`, checked like the Python `ravi node` flags. */
function nodeTls(values: {
  "tls-cert"?: string | undefined;
  "tls-key"?: string | undefined;
  "tls-client-ca"?: string | undefined;
  "peer-tls-ca"?: string | undefined;
  "peer-tls-cert"?: string | undefined;
  "peer-tls-key"?: string | undefined;
  "peer-tls-server-name"?: string | undefined;
}): { tls: ServerTlsOptions | undefined; peerTls: ClientTlsOptions | undefined } {
  together(values, "tls-cert", "tls-key");
  needsOneOf(values, "tls-client-ca", ["tls-cert"]);
  together(values, "peer-tls-cert", "peer-tls-key");
  needsOneOf(values, "peer-tls-server-name", ["peer-tls-ca", "peer-tls-cert"]);
  const certFile = values["tls-cert"];
  const keyFile = values["tls-key"];
  const tls =
    certFile === undefined || keyFile === undefined
      ? undefined
      : { certFile, keyFile, clientCaFile: values["tls-client-ca"] };
  const peerTls =
    values["peer-tls-ca"] === undefined && values["peer-tls-cert"] === undefined
      ? undefined
      : {
          caFile: values["peer-tls-ca"],
          certFile: values["peer-tls-cert"],
          keyFile: values["peer-tls-key"],
          serverName: values["peer-tls-server-name"],
        };
  return { tls, peerTls };
}

function required(value: string | undefined, flag: string): string {
  if (value === undefined || value === "") {
    throw new UsageError(`${flag} is required`);
  }
  return value;
}

function integer(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) {
    return undefined;
  }
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) {
    throw new UsageError(`${flag} must be a non-negative integer, got ${JSON.stringify(value)}`);
  }
  return n;
}

/** A positive number of seconds, as `ravi node` takes them, in milliseconds. */
function seconds(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) {
    return undefined;
  }
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) {
    throw new UsageError(`${flag} must be a positive number of seconds, got ${JSON.stringify(value)}`);
  }
  return n * 1000;
}

const HOST_PORT = /^(?:\[([^\]]+)\]|([^:[\]/]+)):(\d{1,5})$/;

/**
 * Splits "host:port" or "[v6]:port", the way the Python and Go command lines
 * check an address: no scheme, and always a port (a bare host would be dialled
 * on 443). `name` is the NAME= a --peer value starts with.
 */
function hostPort(text: string, flag: string, name = ""): { host: string; port: number } {
  const given = `${flag} ${name}`;
  const scheme = text.indexOf("://");
  if (scheme >= 0) {
    const rest = text.slice(scheme + 3).replace(/\/+$/, "");
    const hint = HOST_PORT.test(rest) ? `: try ${given}${rest}` : "";
    throw new ConfigError(`${flag} takes HOST:PORT, not a URL (${given}${text})${hint}`);
  }
  const match = HOST_PORT.exec(text);
  const port = Number(match?.[3]);
  const host = match?.[1] ?? match?.[2];
  if (host === undefined || !Number.isInteger(port) || port > 65535) {
    if (text !== "" && !text.includes(":")) {
      throw new ConfigError(`${given}${text} has no port: give HOST:PORT, such as ${text}:50051`);
    }
    throw new ConfigError(`${flag} must be HOST:PORT, got ${given}${text}`);
  }
  return { host, port };
}

/** Encodes --json as a payload of --type: binary protobuf when the type is known here, else JSON. */
function payloadOf(typeName: string, json: string, encoding: string | undefined): Payload {
  let parsed: JsonValue;
  try {
    parsed = JSON.parse(json) as JsonValue;
  } catch (error) {
    throw new UsageError(`--json is not JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
  const schema = registry.getMessage(typeName);
  const wanted = encoding ?? (schema === undefined ? "json" : "proto");
  if (wanted === "json") {
    return encodeJsonPayload(typeName, json);
  }
  if (wanted !== "proto") {
    throw new UsageError(`--encoding must be proto or json, got ${JSON.stringify(wanted)}`);
  }
  if (schema === undefined) {
    throw new UsageError(`unknown message type ${typeName}: use --encoding json`);
  }
  try {
    const message = fromJson(schema, parsed, { registry });
    return create(PayloadSchema, { type: typeName, contentType: CONTENT_TYPE_PROTOBUF, data: toBinary(schema, message) });
  } catch (error) {
    throw new UsageError(`--json is not a ${typeName}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** Protobuf JSON as the three command lines print it: every field, defaults included. */
const JSON_OPTIONS = { registry, alwaysEmitImplicit: true } as const;

/**
 * A payload as the three command lines print it: {"type", "value"} when its
 * type is known here or it is JSON, else the Payload itself as protobuf JSON
 * (its data in base64).
 */
function printable(payload: Payload): JsonValue {
  const schema = registry.getMessage(payload.type);
  const media = (payload.contentType.split(";")[0] ?? "").trim().toLowerCase();
  try {
    if (media === CONTENT_TYPE_JSON) {
      return { type: payload.type, value: JSON.parse(new TextDecoder().decode(payload.data)) as JsonValue };
    }
    if (schema !== undefined && media === CONTENT_TYPE_PROTOBUF) {
      return { type: payload.type, value: toJson(schema, fromBinary(schema, payload.data), JSON_OPTIONS) };
    }
  } catch {
    // fall through to the raw form
  }
  return toJson(PayloadSchema, payload, JSON_OPTIONS);
}

function print(value: JsonValue): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

const clientOptions = {
  addr: { type: "string" },
  token: { type: "string" },
  "tls-ca": { type: "string" },
  "timeout-ms": { type: "string" },
} as const;

/** --tls-ca: dial with TLS, trusting this CA. */
function clientTls(caFile: string | undefined): ClientTlsOptions | undefined {
  return caFile === undefined ? undefined : { caFile };
}

function client(values: {
  addr?: string | undefined;
  token?: string | undefined;
  "tls-ca"?: string | undefined;
  "timeout-ms"?: string | undefined;
}): {
  client: RaviClient;
  timeoutMs: number | undefined;
} {
  const address = required(values.addr, "--addr");
  hostPort(address, "--addr");
  const timeoutMs = integer(values["timeout-ms"], "--timeout-ms");
  return {
    client: new RaviClient({ address, token: values.token, timeoutMs, tls: clientTls(values["tls-ca"]) }),
    timeoutMs,
  };
}

/** A failure to connect, said plainly as the Python and Go command lines do; other errors as they are. */
function reachError(error: unknown, address: string): unknown {
  const failure = asRaviError(error);
  const refused = /\b(ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT)\b/.exec(failure.message);
  if (failure.code === Code.Unavailable && refused !== null) {
    const cause = { ECONNREFUSED: "connection refused", ENOTFOUND: "no such host", EHOSTUNREACH: "no route to host", ETIMEDOUT: "timed out" }[refused[1] as "ECONNREFUSED"];
    return new RaviError(Code.Unavailable, `cannot reach a node at ${address}: ${cause}`);
  }
  return error;
}

/** A node that could not start: one line, exit 2 (as the Python and Go nodes report it). */
class StartupError extends Error {
  override name = "StartupError";
}

function startupFailed(error: unknown, host: string, port: number): StartupError {
  const code = (error as { code?: unknown }).code;
  const where = `${host.includes(":") ? `[${host}]` : host}:${port}`;
  const reasons: Record<string, string> = {
    EADDRINUSE: "address already in use",
    EADDRNOTAVAIL: "cannot assign requested address",
    EACCES: "permission denied",
  };
  if (typeof code === "string" && code in reasons) {
    return new StartupError(`cannot listen on ${where}: ${reasons[code]}`);
  }
  return new StartupError(error instanceof Error ? error.message : String(error));
}

async function runNode(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      listen: { type: "string" },
      "node-id": { type: "string" },
      advertise: { type: "string" },
      peer: { type: "string", multiple: true },
      "peer-dns-interval": { type: "string" },
      "keepalive-time": { type: "string" },
      "keepalive-timeout": { type: "string" },
      token: { type: "string" },
      "health-without-auth": { type: "boolean" },
      "max-message-bytes": { type: "string" },
      "conformance-type": { type: "string" },
      "counter-type": { type: "string" },
      "idle-timeout": { type: "string" },
      "max-active-agents": { type: "string" },
      checkpoint: { type: "string" },
      "state-store": { type: "string" },
      "data-dir": { type: "string" },
      verbose: { type: "boolean" },
      "otlp-endpoint": { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      "tls-client-ca": { type: "string" },
      "peer-tls-ca": { type: "string" },
      "peer-tls-cert": { type: "string" },
      "peer-tls-key": { type: "string" },
      "peer-tls-server-name": { type: "string" },
    },
  });
  const { host, port } = hostPort(required(values.listen, "--listen"), "--listen");
  const nodeId = required(values["node-id"], "--node-id");
  const { tls, peerTls } = nodeTls(values);
  const peers: Record<string, string> = {};
  for (const spec of values.peer ?? []) {
    const eq = spec.indexOf("=");
    if (eq <= 0) {
      throw new UsageError(`--peer must be NAME=HOST:PORT, got ${JSON.stringify(spec)}`);
    }
    const address = spec.slice(eq + 1);
    if (dnsTarget(address) === undefined) {
      hostPort(address, "--peer", spec.slice(0, eq + 1));
    }
    peers[spec.slice(0, eq)] = address;
  }
  const dnsInterval = seconds(values["peer-dns-interval"], "--peer-dns-interval");
  const keepaliveTimeMs = seconds(values["keepalive-time"], "--keepalive-time");
  // Every node accepts pings every DEFAULT_KEEPALIVE_TIME_MS / 2 (contract.toml).
  if (keepaliveTimeMs !== undefined && keepaliveTimeMs < DEFAULT_KEEPALIVE_TIME_MS / 2) {
    throw new UsageError(`--keepalive-time must be at least ${DEFAULT_KEEPALIVE_TIME_MS / 2000} s, got ${keepaliveTimeMs / 1000}`);
  }
  const checkpoint = values.checkpoint;
  if (checkpoint !== undefined && !CHECKPOINTS.includes(checkpoint)) {
    throw new UsageError(`--checkpoint must be one of ${CHECKPOINTS.join(", ")}; got ${JSON.stringify(checkpoint)}`);
  }
  const idleTimeout = values["idle-timeout"];
  if (idleTimeout !== undefined && !(Number(idleTimeout) >= 0)) {
    throw new UsageError(`--idle-timeout must be seconds, not negative (0: never), got ${JSON.stringify(idleTimeout)}`);
  }
  let stateStore: StateStore | undefined;
  if (values["state-store"] !== undefined) {
    try {
      stateStore = openStore(values["state-store"]);
    } catch (error) {
      throw new UsageError(asRaviError(error).message);
    }
  }
  const otlpEndpoint = values["otlp-endpoint"];
  if (otlpEndpoint !== undefined && !/^https?:\/\/[^/]+\/?$/.test(otlpEndpoint)) {
    throw new UsageError(`--otlp-endpoint must be http://HOST:PORT or https://HOST:PORT, got ${JSON.stringify(otlpEndpoint)}`);
  }
  // An SDK provider exporting over OTLP/gRPC, only when an endpoint is configured.
  const tracing = await setupTracing({ nodeId, endpoint: otlpEndpoint });
  let node: RaviNode;
  let address: string;
  try {
    node = new RaviNode({
      nodeId,
      host,
      port,
      advertiseAddress: values.advertise,
      peers,
      peerDnsIntervalMs: dnsInterval,
      keepaliveTimeMs,
      keepaliveTimeoutMs: seconds(values["keepalive-timeout"], "--keepalive-timeout"),
      // Like the Python and Go nodes: a token from the environment keeps it out of `ps`.
      token: values.token ?? process.env["RAVI_TOKEN"],
      healthWithoutAuth: values["health-without-auth"] ?? false,
      tls,
      peerTls,
      maxMessageBytes: integer(values["max-message-bytes"], "--max-message-bytes"),
      idleTimeoutMs: idleTimeout === undefined ? undefined : Number(idleTimeout) * 1000,
      maxActiveAgents: integer(values["max-active-agents"], "--max-active-agents"),
      checkpoint,
      stateStore,
      dataDir: values["data-dir"],
      logger: cliLogger(nodeId, values.verbose ?? false),
      tracerProvider: tracing?.tracerProvider,
    });
    node.register("formatter", formatterAgent());
    registerConformance(node, values["conformance-type"] ?? CONFORMANCE_TYPE);
    registerCounter(node, values["counter-type"] ?? COUNTER_TYPE);
    address = await node.start();
  } catch (error) {
    await tracing?.shutdown();
    if (error instanceof UsageError || error instanceof ConfigError) {
      throw error;
    }
    throw startupFailed(error, host, port);
  }
  // The lines every node's command line prints, in Python and Go too.
  const agents = node
    .info()
    .agentTypes.map((t) => `${t.agentType} (${[...t.handledTypes].sort().join(", ") || "no handlers"})`)
    .sort();
  const peerList = Object.entries(peers)
    .map(([name, addr]) => `${name} at ${addr}`)
    .sort();
  process.stdout.write(
    `ravi-node node ${nodeId} serving on ${address}\n  agents: ${agents.join(", ") || "none"}\n  peers: ${peerList.join(", ") || "none"}\n`,
  );
  const signal = await new Promise<string>((resolve) => {
    const stop = (received: string): void => {
      process.off("SIGTERM", stop);
      process.off("SIGINT", stop);
      resolve(received);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
  });
  process.stdout.write(`ravi-node node ${nodeId} stopping (${signal}): calls in flight get up to ${STOP_GRACE_MS / 1000} s\n`);
  await node.stop(STOP_GRACE_MS);
  process.stdout.write(`ravi-node node ${nodeId} stopped\n`);
  // After the node stopped, so the spans of its last calls are flushed too.
  if (tracing !== undefined && !(await tracing.shutdown())) {
    process.stderr.write(`ravi-node ${nodeId} warn: the spans still buffered could not be exported in time\n`);
  }
  return 0;
}

async function runSend(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      ...clientOptions,
      to: { type: "string" },
      type: { type: "string" },
      json: { type: "string" },
      encoding: { type: "string" },
    },
  });
  const to = parseAgentId(required(values.to, "--to"));
  const payload = payloadOf(required(values.type, "--type"), required(values.json, "--json"), values.encoding);
  const { client: c, timeoutMs } = client(values);
  try {
    const reply = await c.sendPayload(to, payload, timeoutMs === undefined ? {} : { timeoutMs }).catch((e: unknown) => {
      throw reachError(e, values.addr ?? "");
    });
    print(reply.payload === undefined ? { nodeId: reply.nodeId } : { nodeId: reply.nodeId, result: printable(reply.payload) });
    return 0;
  } finally {
    c.close();
  }
}

async function runPublish(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      ...clientOptions,
      topic: { type: "string" },
      type: { type: "string" },
      json: { type: "string" },
      scope: { type: "string" },
      encoding: { type: "string" },
    },
  });
  const topic = parseTopicId(required(values.topic, "--topic"));
  const payload = payloadOf(required(values.type, "--type"), required(values.json, "--json"), values.encoding);
  const scope = values.scope ?? "mesh";
  if (scope !== "mesh" && scope !== "node") {
    throw new UsageError(`--scope must be mesh or node, got ${JSON.stringify(scope)}`);
  }
  const { client: c, timeoutMs } = client(values);
  try {
    const result = await c
      .publishPayload(topic, payload, {
        scope: scope === "node" ? PublishScope.NODE : PublishScope.MESH,
        timeoutMs,
      })
      .catch((e: unknown) => {
        throw reachError(e, values.addr ?? "");
      });
    print({ localDeliveries: result.localDeliveries, streamDeliveries: result.streamDeliveries });
    return 0;
  } finally {
    c.close();
  }
}

async function runSubscribe(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      addr: { type: "string" },
      token: { type: "string" },
      "tls-ca": { type: "string" },
      "timeout-ms": { type: "string" },
      "topic-type": { type: "string", multiple: true },
      prefix: { type: "string", multiple: true },
      count: { type: "string" },
      "subscriber-id": { type: "string" },
    },
  });
  const filters: TopicFilterSpec[] = [
    ...(values["topic-type"] ?? []).map((t) => ({ topicType: t })),
    ...(values.prefix ?? []).map((p) => ({ topicTypePrefix: p })),
  ];
  if (filters.length === 0) {
    process.stderr.write("warning: no --topic-type or --prefix: no event matches, only the node's description and its changes are printed\n");
  }
  const count = integer(values.count, "--count");
  const address = required(values.addr, "--addr");
  hostPort(address, "--addr");
  const timeoutMs = integer(values["timeout-ms"], "--timeout-ms");
  const c = new RaviClient({ address, token: values.token, tls: clientTls(values["tls-ca"]) });
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  let events = 0;
  try {
    const stream = c.subscribe(filters, {
      subscriberId: values["subscriber-id"] ?? `ravi-node-cli-${process.pid}`,
      signal: controller.signal,
      timeoutMs,
    });
    let described = false;
    for await (const message of stream) {
      if (message.kind.case === "node") {
        if (!described) {
          described = true;
          process.stderr.write(`subscribed to ${address} (node ${message.kind.value.nodeId}): the events published through this node\n`);
        }
        print({ node: toJson(NodeInfoSchema, message.kind.value, JSON_OPTIONS) });
      } else if (message.kind.case === "event") {
        const event = message.kind.value;
        const printed = toJson(EventSchema, event, JSON_OPTIONS) as { envelope?: { payload?: JsonValue } };
        const payload = event.envelope?.payload;
        if (printed.envelope !== undefined && payload !== undefined) {
          printed.envelope.payload = printable(payload);
        }
        print({ event: printed as JsonValue });
        events += 1;
        if (count !== undefined && events >= count) {
          controller.abort();
        }
      }
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    c.close();
  }
  if (count !== undefined && events < count) {
    throw new RaviError(Code.DeadlineExceeded, `the stream ended after ${events} of ${count} events`);
  }
  return 0;
}

async function runDescribe(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, strict: true, options: { ...clientOptions } });
  const { client: c, timeoutMs } = client(values);
  try {
    const info = await c.describe(undefined, timeoutMs === undefined ? undefined : { timeoutMs }).catch((e: unknown) => {
      throw reachError(e, values.addr ?? "");
    });
    print(toJson(NodeInfoSchema, info, JSON_OPTIONS));
    return 0;
  } finally {
    c.close();
  }
}

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  node: runNode,
  send: runSend,
  publish: runPublish,
  subscribe: runSubscribe,
  describe: runDescribe,
};

/** Runs the command line; resolves with the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "-h" || command === "--help" || command === "help") {
    process.stdout.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  const run = COMMANDS[command];
  if (run === undefined) {
    process.stderr.write(`ravi-node: unknown command ${JSON.stringify(command)}\n${USAGE}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    process.stdout.write(USAGE);
    return 0;
  }
  // Every failure is one line, `ravi-node COMMAND: ...`, as in `ravi` and `ravi-go`.
  try {
    return await run(rest);
  } catch (error) {
    if (error instanceof ConfigError || error instanceof StartupError) {
      process.stderr.write(`ravi-node ${command}: ${error.message}\n`);
      return 2;
    }
    if (error instanceof UsageError || (error instanceof TypeError && "code" in error && String(error.code).startsWith("ERR_PARSE_ARGS"))) {
      process.stderr.write(`ravi-node ${command}: ${error.message} (see ravi-node --help)\n`);
      return 2;
    }
    const failure = asRaviError(error);
    const reason = failure.reason === undefined ? "" : ` (${failure.reason})`;
    process.stderr.write(`ravi-node ${command}: ${codeName(failure.code)}${reason}: ${failure.message}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`ravi-node: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  },
);
