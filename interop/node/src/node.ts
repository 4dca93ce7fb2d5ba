// RaviNode: hosts agent types and serves ravi.mesh.v1.AgentService, gRPC
// health and server reflection over gRPC (HTTP/2, cleartext or TLS), and joins
// the mesh through its peers. docs/protocol.md, "Mesh behaviour", is the spec.
import {
  create,
  type DescFile,
  type DescMessage,
  type DescService,
  type JsonObject,
  type JsonValue,
  type Message,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { file_google_protobuf_struct } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { context as otelContext, type Context, type TracerProvider } from "@opentelemetry/api";
import {
  CONTRACT_VERSION,
  DEFAULT_MAILBOX_CAPACITY,
  HOP_LIMIT,
} from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import { Health } from "@ravi-mesh/contract/grpc/health/v1/health_pb";
import * as reflectionV1Pb from "@ravi-mesh/contract/grpc/reflection/v1/reflection_pb";
import * as reflectionV1alphaPb from "@ravi-mesh/contract/grpc/reflection/v1alpha/reflection_pb";
import {
  AgentService,
  EventSchema,
  PublishScope,
  SendRequestSchema,
  SendResponseSchema,
  type ConnectRequest,
  type CallOutcomeSchema,
  type ConnectResponseSchema,
  type Event,
  type LoadStateRequest,
  type PublishRequest,
  type ResolvePromiseRequest,
  type SaveStateRequest,
  type SendRequest,
  type SendResponse,
  type SubscribeRequest,
  type SubscribeResponseSchema,
} from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import {
  AgentIdSchema,
  EnvelopeSchema,
  NodeInfoSchema,
  PayloadSchema,
  TopicIdSchema,
  type Envelope,
  type NodeInfo,
  type Payload,
  type TopicFilter,
} from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import { EventEmitter } from "node:events";
import * as http2 from "node:http2";
import type { Socket } from "node:net";
import type { AddressInfo } from "node:net";
import type { TlsOptions } from "node:tls";

import type { AgentDefinition, PublishOptions, PublishResult, SendOptions } from "./agent.js";
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_TIMEOUT_MS,
  RaviClient,
  SendReply,
  type TopicFilterSpec,
} from "./client.js";
import { checkPayloadShape, CONTENT_TYPE_JSON, encodePayload, TypeRegistry } from "./codec.js";
import { asRaviError, errors, RaviError, toConnectError } from "./errors.js";
import { HealthState, healthService, ServingStatus } from "./health.js";
import {
  CallScope,
  makeRegistration,
  PromiseStore,
  raceAbort,
  traceHeaders,
  type Origin,
  type Registration,
  type RegistrationHost,
  type TraceContext,
} from "./host.js";
import {
  checkAgentId,
  checkAgentType,
  checkTopicId,
  checkTopicType,
  formatAgentId,
  parseAgentId,
  sameAgent,
  type AgentAddress,
  type TopicAddress,
} from "./ids.js";
import { PeerLink, type Logger, type PeerHost } from "./peers.js";
import { ReflectionIndex, reflectionV1, reflectionV1alpha } from "./reflection.js";
import { rendezvousPick } from "./rendezvous.js";
import {
  clientTlsMaterial,
  serverTlsOptions,
  type ClientTlsMaterial,
  type ClientTlsOptions,
  type ServerTlsOptions,
} from "./tls.js";
import {
  extractContext,
  injectContext,
  NodeTracing,
  recordFailure,
  traceOfCarrier,
  traced,
  type Started,
} from "./tracing.js";
import { AsyncQueue, sleep } from "./util.js";

// The contract version this node implements and the most forwarding hops a
// Send may take: recorded once for every language (proto/ravi/mesh/v1/contract.toml).
export { CONTRACT_VERSION, HOP_LIMIT };
/** NodeInfo.language of this implementation. */
export const LANGUAGE = "node";

const AGENT_SERVICE_NAME = AgentService.typeName;

export interface NodeOptions {
  /** The node's id, unique in the mesh. */
  nodeId: string;
  /** The interface to listen on (default 127.0.0.1: loopback only). */
  host?: string | undefined;
  /** The port (default 0: any free port). */
  port?: number | undefined;
  /** The host:port peers should dial (default host:port as bound). */
  advertiseAddress?: string | undefined;
  /** Peers to connect to: name -> host:port. */
  peers?: Readonly<Record<string, string>> | undefined;
  /** When set, every call must carry "authorization: Bearer <token>"; also sent to peers. */
  token?: string | undefined;
  /** Lets health checks through without a token. */
  healthWithoutAuth?: boolean | undefined;
  /**
   * Serve TLS with this certificate and key (`--tls-cert`, `--tls-key`);
   * with `clientCaFile` (`--tls-client-ca`) every client must present a
   * certificate signed by that CA (mutual TLS). AgentService, health and
   * reflection are all served on the TLS listener. Cleartext when unset.
   */
  tls?: ServerTlsOptions | undefined;
  /**
   * Dial peers with TLS (`--peer-tls-ca`, `--peer-tls-cert`, `--peer-tls-key`,
   * `--peer-tls-server-name`): the CA of the peers' certificates (Node's
   * built-in roots when unset), a client certificate for peers requiring
   * mutual TLS, and the name peer certificates must carry when it is not the
   * dialled host. Cleartext when unset.
   */
  peerTls?: ClientTlsOptions | undefined;
  /** The largest request or response (default 4 MiB); larger is RESOURCE_EXHAUSTED. */
  maxMessageBytes?: number | undefined;
  /** The deadline of calls that arrive without one (default 60 s). */
  defaultTimeoutMs?: number | undefined;
  /** The deadline of handlers that receive a published event (default 60 s). */
  eventTimeoutMs?: number | undefined;
  /** Messages one agent's mailbox holds before MAILBOX_FULL (default 10,000). */
  mailboxCapacity?: number | undefined;
  /** Events one Subscribe stream may have queued before it is ended (default 10000). */
  streamQueueCapacity?: number | undefined;
  /** How long stop() lets calls in flight finish (default 5 s). */
  shutdownGraceMs?: number | undefined;
  /** How long a mailbox waits for a cancelled handler that ignores its signal (default 1 s). */
  abortGraceMs?: number | undefined;
  /** Server interceptors, outermost first (for example OpenTelemetry). */
  interceptors?: readonly Interceptor[] | undefined;
  /** Interceptors of the node's calls to peers. */
  clientInterceptors?: readonly Interceptor[] | undefined;
  /**
   * The OpenTelemetry TracerProvider of the node's spans (docs/operations.md,
   * "Tracing"); the global one by default, a no-op unless one is registered.
   * Handler code sees its handle or deliver span as the active context when a
   * context manager is registered (NodeTracerProvider.register() installs one);
   * sends and publishes made through the handler's context are its children either way.
   */
  tracerProvider?: TracerProvider | undefined;
  /** Extra message types the node can decode (files or messages). */
  types?: readonly (DescFile | DescMessage)[] | undefined;
  /** Where log lines go (default: warnings and errors to stderr). */
  logger?: Logger | undefined;
}

/** A subscription: events on matching topics go to agent (agentType, topic.source). */
export interface SubscriptionInfo {
  readonly id: string;
  readonly agentType: string;
  readonly filter: TopicFilterSpec;
}

/** The default logger: warnings and errors to stderr, prefixed with the node id. */
export function stderrLogger(nodeId: string, verbose = false): Logger {
  const line = (level: string, message: string): void => {
    process.stderr.write(`ravi-node ${nodeId} ${level}: ${message}\n`);
  };
  return {
    debug: (m) => verbose && line("debug", m),
    info: (m) => verbose && line("info", m),
    warn: (m) => line("warn", m),
    error: (m) => line("error", m),
  };
}

// --- streams -----------------------------------------------------------------

type StreamItem = MessageInitShape<typeof SubscribeResponseSchema>;

/** One open Subscribe stream on this node. */
class StreamSubscriber {
  readonly subscriberId: string;
  readonly filters: readonly TopicFilterSpec[];
  private readonly items: StreamItem[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;
  private failure: RaviError | undefined;

  constructor(subscriberId: string, filters: readonly TopicFilterSpec[]) {
    this.subscriberId = subscriberId;
    this.filters = filters;
  }

  get queued(): number {
    return this.items.length;
  }

  matches(topicType: string): boolean {
    return this.filters.some((f) => matchesFilter(f, topicType));
  }

  push(item: StreamItem): void {
    if (!this.ended) {
      this.items.push(item);
      this.wake();
    }
  }

  end(failure?: RaviError): void {
    this.failure ??= failure;
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  async *iterate(signal: AbortSignal): AsyncGenerator<StreamItem> {
    const onAbort = (): void => this.wake();
    signal.addEventListener("abort", onAbort);
    try {
      for (;;) {
        if (this.failure !== undefined) {
          throw this.failure;
        }
        const item = this.items.shift();
        if (item !== undefined) {
          yield item;
          continue;
        }
        if (this.ended || signal.aborted) {
          return;
        }
        await new Promise<void>((resolve) => {
          this.waiter = resolve;
        });
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}

function matchesFilter(filter: TopicFilterSpec, topicType: string): boolean {
  return "topicType" in filter ? filter.topicType === topicType : topicType.startsWith(filter.topicTypePrefix);
}

/** A stream filter as a spec; filters that set nothing match nothing and are dropped (as Python and Go do). */
function filterSpec(filter: TopicFilter): TopicFilterSpec | undefined {
  switch (filter.kind.case) {
    case "topicType":
      return { topicType: filter.kind.value };
    case "topicTypePrefix":
      return { topicTypePrefix: filter.kind.value };
    default:
      return undefined;
  }
}

function filterProto(filter: TopicFilterSpec): TopicFilter["kind"] {
  return "topicType" in filter
    ? { case: "topicType", value: filter.topicType }
    : { case: "topicTypePrefix", value: filter.topicTypePrefix };
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

// --- the node ----------------------------------------------------------------

interface RouteEntry {
  readonly info: NodeInfo;
  readonly link: PeerLink;
}

/** How a Send reached the dispatcher. */
interface CallInfo {
  readonly deadline: number;
  readonly signal: AbortSignal | undefined;
  readonly trace: TraceContext;
  /** True for a Send received over gRPC (forwarding it extends its route). */
  readonly received: boolean;
}

/** The payload type and content type of JSON-object agent state. */
const STATE_TYPE = "google.protobuf.Struct";

function jsonObjectPayload(value: JsonObject): Payload {
  return create(PayloadSchema, {
    type: STATE_TYPE,
    contentType: CONTENT_TYPE_JSON,
    data: new TextEncoder().encode(JSON.stringify(value)),
  });
}

function jsonObjectOf(payload: Payload | undefined, key: string): JsonObject {
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

function traceOf(ctx: HandlerContext): TraceContext {
  return {
    traceparent: ctx.requestHeader.get("traceparent") ?? undefined,
    tracestate: ctx.requestHeader.get("tracestate") ?? undefined,
  };
}

/** The envelope metadata plus the trace context of the call, as a handler sees it. */
function handlerMetadata(envelope: Envelope, trace: TraceContext): Record<string, string> {
  const metadata: Record<string, string> = { ...envelope.metadata };
  if (trace.traceparent !== undefined && metadata["traceparent"] === undefined) {
    metadata["traceparent"] = trace.traceparent;
  }
  if (trace.tracestate !== undefined && metadata["tracestate"] === undefined) {
    metadata["tracestate"] = trace.tracestate;
  }
  return metadata;
}

/**
 * RaviNode hosts agent types and serves them to the mesh.
 *
 *     const node = new RaviNode({ nodeId: "node-a", peers: { b: "127.0.0.1:50052" } });
 *     node.register("formatter", formatterAgent());
 *     await node.start();          // node.address is "127.0.0.1:PORT"
 *     ...
 *     await node.stop();
 */
export class RaviNode implements PeerHost, RegistrationHost {
  readonly nodeId: string;
  readonly incarnation: string = randomUUID();
  readonly logger: Logger;
  readonly mailboxCapacity: number;
  readonly abortGraceMs: number;
  readonly promises = new PromiseStore();
  private readonly options: NodeOptions;
  private readonly maxMessageBytes: number;
  private readonly defaultTimeoutMs: number;
  private readonly eventTimeoutMs: number;
  private readonly streamQueueCapacity: number;
  private readonly registrations = new Map<string, Registration>();
  private readonly subscriptionsById = new Map<string, SubscriptionInfo>();
  private readonly streams = new Set<StreamSubscriber>();
  private readonly links: PeerLink[] = [];
  private readonly routes = new Map<string, RouteEntry>();
  private readonly events = new EventEmitter();
  private readonly types = new TypeRegistry();
  private readonly health = new HealthState();
  private readonly tracing: NodeTracing;
  private readonly shutdownController = new AbortController();
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  private readonly background = new Set<Promise<unknown>>();
  private server: http2.Http2Server | http2.Http2SecureServer | undefined;
  private readonly serverTls: TlsOptions | undefined;
  private readonly peerTls: ClientTlsMaterial | undefined;
  private revision = 0n;
  private advertised = "";
  private inflight = 0;
  private state: "new" | "serving" | "stopping" | "stopped" = "new";
  private stopping: Promise<void> | undefined;

  constructor(options: NodeOptions) {
    checkAgentType(options.nodeId);
    this.options = options;
    this.nodeId = options.nodeId;
    this.logger = options.logger ?? stderrLogger(options.nodeId);
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.defaultTimeoutMs = options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.eventTimeoutMs = options.eventTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.streamQueueCapacity = options.streamQueueCapacity ?? 10_000;
    this.mailboxCapacity = options.mailboxCapacity ?? DEFAULT_MAILBOX_CAPACITY;
    this.abortGraceMs = options.abortGraceMs ?? 1000;
    this.tracing = new NodeTracing(options.nodeId, LANGUAGE, options.tracerProvider);
    this.types.add(file_google_protobuf_struct, ...(options.types ?? []));
    // Read and checked now: a missing or unusable file fails here, not at the first call.
    this.serverTls = options.tls === undefined ? undefined : serverTlsOptions(options.tls);
    this.peerTls = options.peerTls === undefined ? undefined : clientTlsMaterial(options.peerTls);
    this.events.setMaxListeners(0);
    this.health.set("", ServingStatus.NOT_SERVING);
    this.health.set(AGENT_SERVICE_NAME, ServingStatus.NOT_SERVING);
  }

  /** host:port as peers should dial it; empty before start(). */
  get address(): string {
    return this.advertised;
  }

  /** The message types this node can decode. */
  get registry(): TypeRegistry {
    return this.types;
  }

  // --- registration -----------------------------------------------------------

  /** Registers an agent type; throws ALREADY_EXISTS when the name is taken. */
  register<S>(type: string, definition: AgentDefinition<S>): void {
    checkAgentType(type);
    if (this.registrations.has(type)) {
      throw new RaviError(Code.AlreadyExists, `agent type "${type}" is registered already`);
    }
    for (const entry of definition.handlers()) {
      this.types.add(entry.input);
      if (entry.output !== undefined) {
        this.types.add(entry.output);
      }
    }
    this.registrations.set(type, makeRegistration(this, type, definition));
    this.changed(false);
  }

  /** Removes an agent type (its subscriptions stay: events then go to peers hosting it). */
  unregister(type: string): void {
    if (this.registrations.delete(type)) {
      this.changed(false);
    }
  }

  /** True when this node hosts the agent type. */
  hosts(type: string): boolean {
    return this.registrations.has(type);
  }

  /**
   * Routes events on matching topics to agents of `agentType` (key = topic
   * source), hosted here or on a peer; returns the subscription id.
   */
  subscribe(agentType: string, filter: TopicFilterSpec): string {
    checkAgentType(agentType);
    if ("topicType" in filter) {
      checkTopicType(filter.topicType);
    } else if (filter.topicTypePrefix === "") {
      throw errors.badId("a topic type prefix must not be empty");
    } else {
      checkTopicType(filter.topicTypePrefix);
    }
    const id = "topicType" in filter ? `${agentType}:${filter.topicType}` : `${agentType}:${filter.topicTypePrefix}*`;
    if (!this.subscriptionsById.has(id)) {
      this.subscriptionsById.set(id, { id, agentType, filter });
      this.changed(true);
    }
    return id;
  }

  /** Removes a subscription by id. */
  unsubscribe(id: string): void {
    if (this.subscriptionsById.delete(id)) {
      this.changed(true);
    }
  }

  /** The node's subscriptions. */
  subscriptions(): SubscriptionInfo[] {
    return [...this.subscriptionsById.values()];
  }

  private changed(subscriptions: boolean): void {
    this.revision += 1n;
    const info = this.info();
    for (const stream of this.streams) {
      stream.push({ kind: { case: "node", value: info } });
    }
    if (subscriptions) {
      this.links.forEach((l) => l.refilter());
    }
  }

  /** The node's description, as Describe and Subscribe return it. */
  info(): NodeInfo {
    return create(NodeInfoSchema, {
      nodeId: this.nodeId,
      contractVersion: CONTRACT_VERSION,
      agentTypes: [...this.registrations.values()].map((r) => ({ agentType: r.type, handledTypes: r.handledTypes() })),
      subscriptions: [...this.subscriptionsById.values()].map((s) => ({
        id: s.id,
        agentType: s.agentType,
        filter: { kind: filterProto(s.filter) },
      })),
      language: LANGUAGE,
      address: this.advertised,
      incarnation: this.incarnation,
      revision: this.revision,
    });
  }

  // --- lifecycle --------------------------------------------------------------

  /** Starts serving and connects to the peers; resolves with the address once listening. */
  async start(): Promise<string> {
    if (this.state !== "new") {
      throw new RaviError(Code.FailedPrecondition, `node ${this.nodeId} was started already`);
    }
    const index = new ReflectionIndex(
      () => this.services(),
      () => this.types.allFiles(),
    );
    const handler = connectNodeAdapter({
      routes: (router) => {
        router.service(AgentService, this.agentService());
        router.service(Health, healthService(this.health));
        router.service(reflectionV1Pb.ServerReflection, reflectionV1(index));
        router.service(reflectionV1alphaPb.ServerReflection, reflectionV1alpha(index));
      },
      grpc: true,
      grpcWeb: false,
      connect: false,
      readMaxBytes: this.maxMessageBytes,
      writeMaxBytes: this.maxMessageBytes,
      shutdownSignal: this.shutdownController.signal,
      interceptors: [...(this.options.interceptors ?? []), ...this.serverInterceptors()],
    });
    const server =
      this.serverTls === undefined ? http2.createServer({}, handler) : http2.createSecureServer(this.serverTls, handler);
    // Nagle's algorithm holds small frames back for an ACK; gRPC servers in
    // other languages turn it off, and so do we.
    server.on("connection", (socket: Socket) => socket.setNoDelay(true));
    // A refused handshake (no client certificate, a cleartext client) only
    // closes that connection.
    server.on("tlsClientError", (error: Error) => this.logger.info(`refused a TLS connection: ${error.message}`));
    server.on("session", (session) => {
      this.sessions.add(session);
      session.on("close", () => this.sessions.delete(session));
    });
    this.server = server;
    const host = this.options.host ?? "127.0.0.1";
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.options.port ?? 0, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const bound = server.address() as AddressInfo;
    const shownHost = bound.family === "IPv6" ? `[${bound.address}]` : bound.address;
    this.advertised = this.options.advertiseAddress ?? `${shownHost}:${bound.port}`;
    this.state = "serving";
    this.changed(false);
    this.health.set("", ServingStatus.SERVING);
    this.health.set(AGENT_SERVICE_NAME, ServingStatus.SERVING);
    for (const [name, address] of Object.entries(this.options.peers ?? {})) {
      this.addPeer(name, address);
    }
    return this.advertised;
  }

  private services(): DescService[] {
    return [AgentService, Health, reflectionV1Pb.ServerReflection, reflectionV1alphaPb.ServerReflection];
  }

  /** Adds a peer and starts connecting to it (a no-op if that address is a peer already). */
  addPeer(label: string, address: string): void {
    if (this.state === "stopping" || this.state === "stopped") {
      return;
    }
    if (address === this.advertised || this.links.some((l) => l.address === address && !l.stopped)) {
      return;
    }
    const link = new PeerLink(this, label, address);
    this.links.push(link);
    if (this.state === "serving") {
      link.start();
    }
  }

  /** The peers, as configured or learned. */
  peers(): { label: string; address: string; nodeId: string | undefined; connected: boolean }[] {
    return this.links.map((l) => ({
      label: l.label,
      address: l.address,
      nodeId: l.nodeId,
      connected: l.nodeId !== undefined && this.routes.get(l.nodeId)?.link === l,
    }));
  }

  /** The routing table: each reachable peer's latest NodeInfo, by node id. */
  routingTable(): ReadonlyMap<string, NodeInfo> {
    return new Map([...this.routes].map(([id, entry]) => [id, entry.info]));
  }

  /**
   * Resolves once `predicate` holds for the routing table (checked on every
   * change); rejects with DEADLINE_EXCEEDED after `timeoutMs`.
   */
  waitForRoutes(predicate: (routes: ReadonlyMap<string, NodeInfo>) => boolean, timeoutMs = 5_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (predicate(this.routingTable())) {
          clearTimeout(timer);
          this.events.off("routes", check);
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.events.off("routes", check);
        reject(errors.deadlineExceeded(`waiting for the routes of node ${this.nodeId}`));
      }, timeoutMs);
      this.events.on("routes", check);
      check();
    });
  }

  /** Resolves once `agentType` is hosted here or by a connected peer (optionally a given node). */
  waitForRoute(agentType: string, options: { nodeId?: string; timeoutMs?: number } = {}): Promise<void> {
    if (options.nodeId === undefined && this.hosts(agentType)) {
      return Promise.resolve();
    }
    return this.waitForRoutes(
      (routes) =>
        [...routes.values()].some(
          (info) =>
            (options.nodeId === undefined || info.nodeId === options.nodeId) &&
            info.agentTypes.some((t) => t.agentType === agentType),
        ),
      options.timeoutMs,
    );
  }

  /**
   * Stops gracefully: health turns NOT_SERVING, peers and streams close, calls
   * in flight get `graceMs` to finish, then the server closes.
   */
  stop(graceMs = this.options.shutdownGraceMs ?? 5_000): Promise<void> {
    this.stopping ??= this.shutdown(graceMs);
    return this.stopping;
  }

  private async shutdown(graceMs: number): Promise<void> {
    const wasServing = this.state === "serving";
    this.state = "stopping";
    this.health.set("", ServingStatus.NOT_SERVING);
    this.health.set(AGENT_SERVICE_NAME, ServingStatus.NOT_SERVING);
    this.health.closeWatchers();
    for (const stream of this.streams) {
      stream.end();
    }
    await Promise.all(this.links.map((l) => l.stop()));
    this.routes.clear();
    this.events.emit("routes");
    const drainUntil = Date.now() + graceMs;
    while (Date.now() < drainUntil && (this.inflight > 0 || ![...this.registrations.values()].every((r) => r.idle()))) {
      await sleep(10);
    }
    this.shutdownController.abort(new ConnectError("the node is shutting down", Code.Unavailable));
    const server = this.server;
    if (wasServing && server !== undefined) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const session of this.sessions) {
        session.close();
      }
      // Sessions that do not close by themselves (a client holding a stream
      // open) are destroyed after a short wait.
      const force = setTimeout(() => {
        for (const session of this.sessions) {
          session.destroy();
        }
      }, Math.min(1_000, Math.max(100, graceMs)));
      await closed;
      clearTimeout(force);
    }
    this.state = "stopped";
  }

  // --- server-side plumbing ---------------------------------------------------

  private serverInterceptors(): Interceptor[] {
    const token = this.options.token;
    const healthWithoutAuth = this.options.healthWithoutAuth ?? false;
    const interceptors: Interceptor[] = [];
    if (token !== undefined) {
      const expected = sha256(token);
      interceptors.push((next) => async (req) => {
        if (healthWithoutAuth && req.service.typeName === Health.typeName) {
          return next(req);
        }
        const match = /^Bearer\s+(.+)$/i.exec(req.header.get("authorization") ?? "");
        if (match?.[1] === undefined || !timingSafeEqual(sha256(match[1].trim()), expected)) {
          throw new ConnectError("missing or invalid credentials", Code.Unauthenticated);
        }
        return next(req);
      });
    }
    interceptors.push((next) => async (req) => {
      if (req.stream) {
        return next(req);
      }
      this.inflight += 1;
      try {
        return await next(req);
      } finally {
        this.inflight -= 1;
      }
    });
    return interceptors;
  }

  private refuseWhenStopping(): void {
    if (this.state !== "serving") {
      throw new ConnectError(`node ${this.nodeId} is shutting down`, Code.Unavailable);
    }
  }

  /** Runs a unary method body, turning every failure into a ConnectError with ErrorInfo. */
  private async serve<T>(body: () => T | Promise<T>): Promise<T> {
    this.refuseWhenStopping();
    try {
      return await body();
    } catch (error) {
      throw toConnectError(asRaviError(error));
    }
  }

  private agentService(): ServiceImpl<typeof AgentService> {
    return {
      send: (request, ctx) =>
        this.serve(() =>
          this.dispatchSend(request, {
            deadline: this.deadlineOf(ctx),
            signal: ctx.signal,
            trace: traceOf(ctx),
            received: true,
          }),
        ),
      publish: (request, ctx) => this.serve(() => this.handlePublish(request, ctx)),
      subscribe: (request, ctx) => this.handleSubscribe(request, ctx),
      describe: (request) => {
        const caller = request.caller;
        if (caller !== undefined) {
          this.learn(caller);
        }
        return { node: this.info() };
      },
      resolvePromise: (request) => this.serve(() => this.handleResolvePromise(request)),
      saveState: (request) => this.serve(() => this.handleSaveState(request)),
      loadState: (request) => this.serve(() => this.handleLoadState(request)),
      connect: (requests, ctx) => this.handleConnect(requests, ctx),
    };
  }

  /**
   * Connect: Send calls multiplexed on one stream. Each call frame of a
   * ConnectRequest is handled exactly as a unary Send; its outcome goes back
   * with the same call id, in completion order. A cancel frame cancels the call and suppresses its
   * response. The stream ends once the caller's side ended and every call
   * finished.
   */
  private async *handleConnect(
    requests: AsyncIterable<ConnectRequest>,
    ctx: HandlerContext,
  ): AsyncGenerator<MessageInitShape<typeof ConnectResponseSchema>> {
    this.refuseWhenStopping();
    const trace = traceOf(ctx);
    const out = new AsyncQueue<MessageInitShape<typeof CallOutcomeSchema>>();
    const calls = new Map<bigint, AbortController>();
    const pending = new Set<Promise<void>>();
    const start = (callId: bigint, request: SendRequest, timeoutMillis: number): void => {
      if (calls.has(callId)) {
        out.push({
          callId,
          outcome: { case: "failure", value: { code: Code.InvalidArgument, message: `call id ${callId} is in flight already` } },
        });
        return;
      }
      const controller = new AbortController();
      calls.set(callId, controller);
      this.inflight += 1;
      const call = this.dispatchSend(request, {
        deadline: Date.now() + (timeoutMillis > 0 ? timeoutMillis : this.defaultTimeoutMs),
        signal: AbortSignal.any([controller.signal, ctx.signal]),
        trace,
        received: true,
      }).then(
        (result) => {
          if (!controller.signal.aborted) {
            out.push({ callId, outcome: { case: "result", value: result } });
          }
        },
        (error: unknown) => {
          if (!controller.signal.aborted) {
            const failure = asRaviError(error);
            out.push({
              callId,
              outcome: {
                case: "failure",
                value: { code: failure.code, message: failure.message, reason: failure.reason ?? "", metadata: { ...failure.metadata } },
              },
            });
          }
        },
      );
      const done = call.finally(() => {
        this.inflight -= 1;
        if (calls.get(callId) === controller) {
          calls.delete(callId);
        }
        pending.delete(done);
      });
      pending.add(done);
    };
    const reading = (async () => {
      try {
        for await (const request of requests) {
          for (const frame of request.calls) {
            if (frame.kind.case === "send") {
              start(frame.callId, frame.kind.value, frame.timeoutMillis);
            } else if (frame.kind.case === "cancel") {
              calls.get(frame.callId)?.abort(errors.cancelled("by the caller's cancel frame"));
              calls.delete(frame.callId);
            }
          }
        }
        while (pending.size > 0) {
          await Promise.all(pending);
        }
        out.end();
      } catch (error) {
        out.fail(error);
      }
    })();
    try {
      for await (const outcome of out.iterate(ctx.signal)) {
        yield { calls: [outcome] };
      }
    } finally {
      for (const controller of calls.values()) {
        controller.abort(errors.cancelled("the Connect stream ended"));
      }
      void reading;
    }
  }

  private deadlineOf(ctx: HandlerContext): number {
    const timeout = ctx.timeoutMs();
    return Date.now() + (timeout ?? this.defaultTimeoutMs);
  }

  /** A node that described us: peer with it, or reconnect to it now if it is a peer already. */
  private learn(caller: NodeInfo): void {
    if (caller.address === "" || caller.nodeId === "" || caller.nodeId === this.nodeId || this.state !== "serving") {
      return;
    }
    const known = this.links.find((l) => !l.stopped && l.address === caller.address);
    if (known !== undefined) {
      // A peer we lost calls us: it is back, so reconnect now instead of after the backoff.
      if (known.nodeId === undefined || this.routes.get(known.nodeId)?.link !== known) {
        known.wake();
      }
      return;
    }
    this.logger.info(`learned peer ${caller.nodeId} at ${caller.address} from its Describe`);
    this.addPeer(caller.nodeId, caller.address);
  }

  // --- Send -------------------------------------------------------------------

  /**
   * Handles a Send in the order of the spec: id, local type or forward,
   * payload, call chain, handler, then the handler under the deadline. The
   * checks and the mailbox push happen synchronously, so Sends made in order
   * are delivered in order.
   */
  private async dispatchSend(request: SendRequest, call: CallInfo): Promise<SendResponse> {
    const recipient = checkAgentId(request.recipient);
    const registration = this.registrations.get(recipient.type);
    if (registration === undefined) {
      return this.forward(request, recipient, call);
    }
    const envelope = request.envelope ?? create(EnvelopeSchema);
    if (request.topic !== undefined) {
      // A published message handed over by the node where it was published.
      const { schema, message } = this.types.decode(envelope.payload);
      const topic = checkTopicId(request.topic);
      // A delivery of a publication: it waits for room in a full mailbox
      // until the Send's deadline and then fails with MAILBOX_FULL, as in Go.
      await this.withRoom(call.deadline, call.signal, (room) =>
        this.deliverEvent(registration, recipient.key, schema, message, envelope, topic, room, call.trace),
      );
      return create(SendResponseSchema, { nodeId: this.nodeId });
    }
    // The handle span's parent: the envelope's trace context, else the call's gRPC metadata.
    const handling = this.tracing.handle(recipient, envelope, extractContext(envelope.metadata, call.trace));
    // The span ends here rather than in a wrapper: a wrapper would delay every
    // outcome by a few microtasks and change the order of calls that complete together.
    try {
      const { schema, message } = this.types.decode(envelope.payload);
      const metadata = handlerMetadata(envelope, call.trace);
      const trace: TraceContext = envelope.metadata["traceparent"] !== undefined ? traceOfCarrier(envelope.metadata) : call.trace;
      if (!registration.reentrant && envelope.callChain.some((a) => sameAgent(a, recipient))) {
        throw errors.reentrantCall(formatAgentId(recipient));
      }
      if (!registration.hasHandler(schema.typeName)) {
        throw errors.noHandler(recipient.type, schema.typeName);
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
      return create(SendResponseSchema, { nodeId: this.nodeId, ...(result === undefined ? {} : { result }) });
    } catch (error) {
      recordFailure(handling.span, error);
      throw error;
    } finally {
      handling.span.end();
    }
  }

  /** Picks the peer for an agent type and key: the only one, or the rendezvous winner. */
  route(agentType: string, key: string, exclude: readonly string[] = []): string | undefined {
    const candidates = [...this.routes.values()]
      .filter((e) => !exclude.includes(e.info.nodeId) && e.info.agentTypes.some((t) => t.agentType === agentType))
      .map((e) => e.info.nodeId);
    return candidates.length <= 1 ? candidates[0] : rendezvousPick(candidates, agentType, key);
  }

  /**
   * Sends a request for a type this node does not host to the peer hosting
   * it. A Send received from outside is forwarded under a forward span.
   */
  private async forward(request: SendRequest, recipient: AgentAddress, call: CallInfo): Promise<SendResponse> {
    const forwarding = call.received
      ? this.tracing.forward(recipient, (request.route?.hopCount ?? 0) + 1, extractContext(request.envelope?.metadata, call.trace))
      : undefined;
    try {
      return await this.forwardTo(request, recipient, call, forwarding);
    } catch (error) {
      if (forwarding !== undefined) {
        recordFailure(forwarding.span, error);
      }
      throw error;
    } finally {
      forwarding?.span.end();
    }
  }

  private async forwardTo(
    request: SendRequest,
    recipient: AgentAddress,
    call: CallInfo,
    forwarding: Started | undefined,
  ): Promise<SendResponse> {
    const visited = request.route?.visitedNodeIds ?? [];
    const hops = request.route?.hopCount ?? 0;
    if (visited.includes(this.nodeId)) {
      throw errors.forwardingLoop(this.nodeId);
    }
    if (hops >= HOP_LIMIT) {
      throw errors.hopLimit(this.nodeId, HOP_LIMIT);
    }
    const target = this.route(recipient.type, recipient.key, visited);
    const client = target === undefined ? undefined : this.routes.get(target)?.link.client;
    if (target === undefined || client === undefined) {
      throw errors.agentTypeNotFound(recipient.type, this.nodeId);
    }
    forwarding?.span.setAttribute("ravi.route.next_node", target);
    const route = call.received ? { hopCount: hops + 1, visitedNodeIds: [...visited, this.nodeId] } : request.route;
    const scope = new CallScope(call.deadline, call.signal, `while forwarding to ${target}`);
    try {
      // The envelope travels unchanged, with the message's own trace context, and
      // the unary call's gRPC metadata carries the same (as Python's nodes do).
      const headers = traceHeaders(
        request.envelope?.metadata["traceparent"] !== undefined ? traceOfCarrier(request.envelope.metadata) : call.trace,
      );
      const pending = client.sendRequest(
        {
          recipient: request.recipient,
          ...(request.envelope === undefined ? {} : { envelope: request.envelope }),
          ...(route === undefined ? {} : { route }),
          ...(request.topic === undefined ? {} : { topic: request.topic }),
        },
        {
          timeoutMs: call.deadline - Date.now(),
          signal: scope.signal,
          ...(headers === undefined ? {} : { headers }),
        },
      );
      return await raceAbort(pending, scope.signal);
    } catch (error) {
      const failure = asRaviError(error);
      if (failure.reason === undefined && failure.code === Code.Unavailable) {
        throw errors.peerUnavailable(target, failure.message);
      }
      throw failure;
    } finally {
      scope.dispose();
    }
  }

  /** Sends from an agent (or from the node itself when origin.agent is unset). */
  async sendFrom(origin: Origin, to: AgentAddress, payload: Payload, options: SendOptions): Promise<SendReply> {
    const envelope = create(EnvelopeSchema, {
      messageId: options.messageId ?? randomUUID(),
      ...(origin.agent === undefined ? {} : { sender: create(AgentIdSchema, origin.agent) }),
      payload,
      metadata: { ...(options.metadata ?? {}) },
      idempotencyKey: options.idempotencyKey ?? "",
      callChain: origin.callChain.map((a) => create(AgentIdSchema, a)),
    });
    const sending = this.tracing.send(to, envelope, origin.context ?? otelContext.active());
    try {
      const now = Date.now();
      let deadline = now + (options.timeoutMs ?? (origin.deadline === undefined ? this.defaultTimeoutMs : origin.deadline - now));
      if (origin.deadline !== undefined) {
        deadline = Math.min(deadline, origin.deadline);
      }
      if (deadline <= now) {
        throw errors.deadlineExceeded(`before sending to ${formatAgentId(to)}`);
      }
      const signals = [origin.signal, options.signal].filter((s): s is AbortSignal => s !== undefined);
      // The send span's W3C context travels in the envelope (and in gRPC metadata to a peer).
      injectContext(sending.context, envelope.metadata);
      const response = await this.dispatchSend(create(SendRequestSchema, { recipient: create(AgentIdSchema, to), envelope }), {
        deadline,
        signal: signals.length === 0 ? undefined : AbortSignal.any(signals),
        trace: traceOfCarrier(envelope.metadata),
        received: false,
      });
      return new SendReply(response.nodeId, response.result, this.types.protobuf);
    } catch (error) {
      recordFailure(sending.span, error);
      throw error;
    } finally {
      sending.span.end();
    }
  }

  /**
   * Sends a message from outside any agent (routed like any Send). Its send
   * span is a child of the active span, or of `traceparent` when given.
   */
  send<I extends DescMessage>(
    to: AgentAddress,
    schema: I,
    message: MessageInitShape<I>,
    options: SendOptions & { traceparent?: string } = {},
  ): Promise<SendReply> {
    return this.sendFrom(
      {
        agent: undefined,
        callChain: [],
        deadline: undefined,
        signal: undefined,
        context: options.traceparent === undefined ? undefined : extractContext({ traceparent: options.traceparent }),
      },
      to,
      encodePayload(schema, message),
      options,
    );
  }

  /** Sends from outside any agent and decodes the reply as `reply`. */
  async call<I extends DescMessage, O extends DescMessage>(
    to: AgentAddress,
    schema: I,
    message: MessageInitShape<I>,
    reply: O,
    options: SendOptions & { traceparent?: string } = {},
  ): Promise<MessageShape<O>> {
    return (await this.send(to, schema, message, options)).decode(reply);
  }

  // --- Publish and Subscribe --------------------------------------------------

  private handlePublish(request: PublishRequest, ctx: HandlerContext): Promise<PublishResult> {
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
    return this.withRoom(this.deadlineOf(ctx), ctx.signal, (room) =>
      this.publishEnvelope(topic, envelope, request.scope === PublishScope.NODE, true, room),
    );
  }

  /**
   * Runs a publication with the signal its deliveries wait on for room in a
   * full mailbox: it aborts at `deadline`, or with `signal`. A wait is never
   * unbounded, so memory stays bounded and a stuck agent cannot hold a
   * publisher forever.
   */
  private async withRoom<T>(
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

  /** Publishes as an agent (or as the node): local subscribers and every matching stream. */
  publishFrom(
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
    const publishing = this.tracing.publish(topic, envelope, parent ?? otelContext.active());
    // Full local mailboxes are waited for until the default deadline, or the
    // publishing handler's own deadline when that comes first.
    const deadline = Math.min(Date.now() + this.defaultTimeoutMs, within?.deadline ?? Number.POSITIVE_INFINITY);
    return traced(publishing.span, () => {
      // Every event and delivery carries the publish span's W3C context.
      injectContext(publishing.context, envelope.metadata);
      return this.withRoom(deadline, within?.signal, (room) => this.publishEnvelope(topic, envelope, false, true, room));
    });
  }

  /**
   * Publishes a message from outside any agent. Its publish span is a child
   * of the active span, or of `traceparent` when given.
   */
  async publish<I extends DescMessage>(
    topic: TopicAddress,
    schema: I,
    message: MessageInitShape<I>,
    options: PublishOptions & { traceparent?: string } = {},
  ): Promise<PublishResult> {
    const parent = options.traceparent === undefined ? undefined : extractContext({ traceparent: options.traceparent });
    return this.publishFrom(undefined, parent, topic, encodePayload(schema, message), options);
  }

  /**
   * Delivers to local subscribers, waiting on `room` for full mailboxes, then
   * queues the event on every matching stream (unless `nodeOnly`). A local
   * delivery that got no room fails the publication before any stream sees
   * it, as in Go. When nothing had to wait, everything happens synchronously,
   * so publications made in order reach mailboxes and streams in order.
   */
  private publishEnvelope(
    topic: TopicAddress,
    envelope: Envelope,
    nodeOnly: boolean,
    strict: boolean,
    room: AbortSignal,
  ): PublishResult | Promise<PublishResult> {
    const local = this.deliverLocally(topic, envelope, strict, room);
    const result = (localDeliveries: number): PublishResult => ({
      localDeliveries,
      streamDeliveries: nodeOnly ? 0 : this.offerToStreams(topic, envelope),
    });
    return typeof local === "number" ? result(local) : local.then(result);
  }

  /** Queues a published message on every matching Subscribe stream; returns how many took it. */
  private offerToStreams(topic: TopicAddress, envelope: Envelope): number {
    let streamDeliveries = 0;
    const event = create(EventSchema, {
      topic: create(TopicIdSchema, { type: topic.type, source: topic.source }),
      envelope,
      originNodeId: this.nodeId,
    });
    for (const stream of this.streams) {
      if (!stream.matches(topic.type)) {
        continue;
      }
      if (stream.queued >= this.streamQueueCapacity) {
        this.logger.warn(`subscriber ${stream.subscriberId} fell ${this.streamQueueCapacity} events behind: its stream is ended`);
        stream.end(
          new RaviError(
            Code.ResourceExhausted,
            `subscriber ${stream.subscriberId || "(anonymous)"} fell more than ${this.streamQueueCapacity} events behind; events were dropped`,
          ),
        );
        this.streams.delete(stream);
        continue;
      }
      stream.push({ kind: { case: "event", value: event } });
      streamDeliveries += 1;
    }
    return streamDeliveries;
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
  private deliverLocally(
    topic: TopicAddress,
    envelope: Envelope,
    strict: boolean,
    room: AbortSignal,
  ): number | Promise<number> {
    const agentTypes = new Set<string>();
    for (const sub of this.subscriptionsById.values()) {
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
      const registration = this.registrations.get(agentType);
      if (registration === undefined) {
        deliveries.push(() => this.deliverRemote(recipient, topic, envelope));
        continue;
      }
      if (decoded === undefined) {
        try {
          decoded = this.types.decode(envelope.payload);
        } catch (error) {
          if (strict) {
            throw error;
          }
          this.logger.warn(`dropped an event on ${topic.type}/${topic.source}: ${asRaviError(error).message}`);
          return 0;
        }
      }
      const { schema, message } = decoded;
      deliveries.push(() => this.deliverEvent(registration, topic.source, schema, message, envelope, topic, room));
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

  /**
   * Queues a published message for one local agent, waiting for room in a
   * full mailbox until `room` aborts. Returns whether it was delivered: a
   * boolean when that is known at once, else a promise that rejects with
   * MAILBOX_FULL when no room came in time (the caller reports that).
   * Handler failures are logged.
   */
  private deliverEvent(
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
      this.logger.warn(`${agent} has no handler for ${schema.typeName} published on ${topic.type}/${topic.source}`);
      return false;
    }
    const trace =
      envelope.metadata["traceparent"] !== undefined || fallback === undefined ? traceOfCarrier(envelope.metadata) : fallback;
    // The deliver span's parent is the event's trace context, and it links to it too.
    const delivering = this.tracing.deliver({ type: registration.type, key }, topic, envelope, extractContext(envelope.metadata, fallback));
    const { waiting, done } = registration.deliverEvent(
      key,
      schema.typeName,
      message,
      {
        envelope,
        metadata: { ...envelope.metadata },
        topic,
        deadline: Date.now() + this.eventTimeoutMs,
        signal: undefined,
        trace,
        context: delivering.context,
      },
      room,
    );
    const handled = traced(delivering.span, () => done);
    const report = (error: unknown): void => {
      this.logger.warn(`${agent} failed on ${schema.typeName} published on ${topic.type}/${topic.source}: ${asRaviError(error).message}`);
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

  /** Hands a published message to the peer hosting a subscribed type (in the background). */
  private deliverRemote(recipient: AgentAddress, topic: TopicAddress, envelope: Envelope): boolean {
    if (this.route(recipient.type, recipient.key) === undefined) {
      this.logger.warn(`a subscription to ${topic.type} names agent type "${recipient.type}", which no node hosts`);
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
    const pending = this.forward(request, recipient, {
      deadline: Date.now() + this.eventTimeoutMs,
      signal: undefined,
      trace: traceOfCarrier(envelope.metadata),
      received: false,
    }).catch((error: unknown) => {
      this.logger.warn(
        `could not deliver ${envelope.payload?.type ?? "a message"} published on ${topic.type}/${topic.source} to ${formatAgentId(recipient)}: ${asRaviError(error).message}`,
      );
    });
    this.background.add(pending);
    void pending.finally(() => this.background.delete(pending));
    return true;
  }

  private async *handleSubscribe(request: SubscribeRequest, ctx: HandlerContext): AsyncGenerator<StreamItem> {
    this.refuseWhenStopping();
    const filters = request.filters.map(filterSpec).filter((f): f is TopicFilterSpec => f !== undefined);
    const stream = new StreamSubscriber(request.subscriberId, filters);
    this.streams.add(stream);
    try {
      yield { kind: { case: "node", value: this.info() } };
      for await (const item of stream.iterate(ctx.signal)) {
        yield item;
      }
    } catch (error) {
      throw error instanceof RaviError ? toConnectError(error) : error;
    } finally {
      this.streams.delete(stream);
    }
  }

  // --- promises and state -----------------------------------------------------

  private handleResolvePromise(request: ResolvePromiseRequest): { waiting: boolean } {
    if (request.name === "") {
      throw errors.badId("the promise name is empty");
    }
    this.types.decode(request.value);
    const waiting = this.promises.resolve(request.name, checkPayloadShape(request.value));
    return { waiting };
  }

  /**
   * Resolves a named promise here and on every connected peer (the waiting
   * handler may be anywhere). Throws ALREADY_EXISTS when any node had it
   * resolved already.
   */
  async resolvePromise(name: string, value: Payload, options: { timeoutMs?: number } = {}): Promise<void> {
    let already = false;
    try {
      this.promises.resolve(name, value);
    } catch (error) {
      if (!(error instanceof RaviError && error.code === Code.AlreadyExists)) {
        throw error;
      }
      already = true;
    }
    const clients = [...this.routes.values()].map((e) => e.link.client).filter((c): c is RaviClient => c !== undefined);
    const results = await Promise.allSettled(
      clients.map((c) =>
        c.agentService.resolvePromise({ name, value }, { timeoutMs: options.timeoutMs ?? this.defaultTimeoutMs }),
      ),
    );
    for (const result of results) {
      if (result.status === "rejected") {
        const failure = asRaviError(result.reason);
        if (failure.code === Code.AlreadyExists) {
          already = true;
        } else if (failure.code !== Code.Unimplemented) {
          this.logger.warn(`a peer could not resolve promise "${name}": ${failure.message}`);
        }
      }
    }
    if (already) {
      throw new RaviError(Code.AlreadyExists, `promise "${name}" is resolved already`);
    }
  }

  private handleSaveState(request: SaveStateRequest): { states: Record<string, Payload> } {
    return { states: this.saveState(request.agent) };
  }

  /** The JSON state of one local agent, or of every local agent instance, by "type/key". */
  saveState(agent?: AgentAddress): Record<string, Payload> {
    const states: Record<string, Payload> = {};
    if (agent !== undefined) {
      const id = checkAgentId(agent);
      const registration = this.registrations.get(id.type);
      if (registration === undefined) {
        throw errors.agentTypeNotFound(id.type, this.nodeId);
      }
      states[formatAgentId(id)] = jsonObjectPayload(registration.saveState(id.key));
      return states;
    }
    for (const registration of this.registrations.values()) {
      for (const key of registration.keys()) {
        states[`${registration.type}/${key}`] = jsonObjectPayload(registration.saveState(key));
      }
    }
    return states;
  }

  private handleLoadState(request: LoadStateRequest): Record<string, never> {
    this.loadState(request.states);
    return {};
  }

  /** Loads JSON states ("type/key" -> Struct JSON payload) into local agents, creating them as needed. */
  loadState(states: Readonly<Record<string, Payload>>): void {
    const parsed = Object.entries(states).map(([key, payload]) => {
      const id = parseAgentId(key);
      const registration = this.registrations.get(id.type);
      if (registration === undefined) {
        throw errors.agentTypeNotFound(id.type, this.nodeId);
      }
      return { registration, key: id.key, saved: jsonObjectOf(payload, key) };
    });
    for (const { registration, key, saved } of parsed) {
      registration.loadState(key, saved);
    }
  }

  // --- PeerHost ---------------------------------------------------------------

  peerClient(address: string): RaviClient {
    return new RaviClient({
      address,
      token: this.options.token,
      interceptors: this.options.clientInterceptors,
      maxMessageBytes: this.maxMessageBytes,
      http2: { pingIntervalMs: 10_000, pingTimeoutMs: 5_000 },
      tls: this.peerTls,
    });
  }

  selfInfo(): NodeInfo {
    return this.info();
  }

  streamFilters(): TopicFilterSpec[] {
    const seen = new Set<string>();
    const filters: TopicFilterSpec[] = [];
    for (const sub of this.subscriptionsById.values()) {
      const key = "topicType" in sub.filter ? `=${sub.filter.topicType}` : `^${sub.filter.topicTypePrefix}`;
      if (!seen.has(key)) {
        seen.add(key);
        filters.push(sub.filter);
      }
    }
    return filters;
  }

  onPeerInfo(link: PeerLink, info: NodeInfo): void {
    if (link.stopped || this.state !== "serving") {
      return;
    }
    if (link.incarnation !== undefined && link.incarnation !== info.incarnation) {
      this.logger.info(`peer ${info.nodeId} restarted (incarnation ${info.incarnation})`);
    }
    link.nodeId = info.nodeId;
    link.incarnation = info.incarnation;
    this.routes.set(info.nodeId, { info, link });
    this.events.emit("routes");
  }

  onPeerDown(link: PeerLink): void {
    let removed = false;
    for (const [nodeId, entry] of this.routes) {
      if (entry.link === link) {
        this.routes.delete(nodeId);
        removed = true;
      }
    }
    if (removed) {
      this.events.emit("routes");
    }
  }

  async onPeerEvent(link: PeerLink, event: Event, signal: AbortSignal): Promise<void> {
    try {
      const topic = checkTopicId(event.topic);
      const envelope = event.envelope ?? create(EnvelopeSchema);
      // An event carries no deadline of its own: it waits for room in a full
      // mailbox as long as a handler of an event may run (eventTimeoutMs), or
      // until the stream ends. The peer link awaits this before it reads the
      // next event, so a slow agent slows the stream (HTTP/2 flow control)
      // instead of events piling up here.
      await this.withRoom(Date.now() + this.eventTimeoutMs, signal, (room) =>
        this.deliverLocally(topic, envelope, false, room),
      );
    } catch (error) {
      this.logger.warn(`dropped an event from peer ${link.label}: ${asRaviError(error).message}`);
    }
  }
}
