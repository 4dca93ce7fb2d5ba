// NodeCore: the state every feature of a node shares (registrations,
// subscriptions, streams, peers and routes, health, tracing) and the node's
// description. Internal: the public class is RaviNode (../node.ts), whose
// features live one per file next to this one.
import { create } from "@bufbuild/protobuf";
import { file_google_protobuf_struct } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { CONTRACT_VERSION, DEFAULT_MAILBOX_CAPACITY } from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import { NodeInfoSchema, type Envelope, type NodeInfo } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import * as http2 from "node:http2";
import type { TlsOptions } from "node:tls";
import type { AgentDefinition } from "../agent.js";
import { DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT_MS, type TopicFilterSpec } from "../client.js";
import { TypeRegistry } from "../codec.js";
import { errors, RaviError } from "../errors.js";
import { HealthState, ServingStatus } from "../health.js";
import {
  makeRegistration,
  PromiseStore,
  type Registration,
  type RegistrationHost,
  type TraceContext,
} from "../host.js";
import { checkAgentType, checkTopicType } from "../ids.js";
import { PeerLink, type Logger, type PeerHost } from "../peers.js";
import { clientTlsMaterial, serverTlsOptions, type ClientTlsMaterial } from "../tls.js";
import { NodeTracing } from "../tracing.js";
import { AGENT_SERVICE_NAME, LANGUAGE, NodeOptions, SubscriptionInfo, stderrLogger } from "./options.js";
import { StreamSubscriber, filterProto } from "./streams.js";

export interface RouteEntry {
  readonly info: NodeInfo;
  readonly link: PeerLink;
}

/** How a Send reached the dispatcher. */
export interface CallInfo {
  readonly deadline: number;
  readonly signal: AbortSignal | undefined;
  readonly trace: TraceContext;
  /** True for a Send received over gRPC (forwarding it extends its route). */
  readonly received: boolean;
}

export function traceOf(ctx: HandlerContext): TraceContext {
  return {
    traceparent: ctx.requestHeader.get("traceparent") ?? undefined,
    tracestate: ctx.requestHeader.get("tracestate") ?? undefined,
  };
}

/** The envelope metadata plus the trace context of the call, as a handler sees it. */
export function handlerMetadata(envelope: Envelope, trace: TraceContext): Record<string, string> {
  const metadata: Record<string, string> = { ...envelope.metadata };
  if (trace.traceparent !== undefined && metadata["traceparent"] === undefined) {
    metadata["traceparent"] = trace.traceparent;
  }
  if (trace.tracestate !== undefined && metadata["tracestate"] === undefined) {
    metadata["tracestate"] = trace.tracestate;
  }
  return metadata;
}

/** The state of one node, shared by its feature modules. */
export class NodeCore {
  /** The public node: what peer links and registrations call back. */
  readonly host: PeerHost & RegistrationHost;
  readonly nodeId: string;
  readonly incarnation: string = randomUUID();
  readonly logger: Logger;
  readonly mailboxCapacity: number;
  readonly abortGraceMs: number;
  readonly promises = new PromiseStore();
  readonly options: NodeOptions;
  readonly maxMessageBytes: number;
  readonly defaultTimeoutMs: number;
  readonly eventTimeoutMs: number;
  readonly streamQueueCapacity: number;
  readonly registrations = new Map<string, Registration>();
  readonly subscriptionsById = new Map<string, SubscriptionInfo>();
  readonly streams = new Set<StreamSubscriber>();
  readonly links: PeerLink[] = [];
  readonly routes = new Map<string, RouteEntry>();
  readonly events = new EventEmitter();
  readonly types = new TypeRegistry();
  readonly health = new HealthState();
  readonly tracing: NodeTracing;
  readonly shutdownController = new AbortController();
  readonly sessions = new Set<http2.ServerHttp2Session>();
  readonly background = new Set<Promise<unknown>>();
  server: http2.Http2Server | http2.Http2SecureServer | undefined;
  readonly serverTls: TlsOptions | undefined;
  readonly peerTls: ClientTlsMaterial | undefined;
  revision = 0n;
  advertised = "";
  inflight = 0;
  state: "new" | "serving" | "stopping" | "stopped" = "new";
  stopping: Promise<void> | undefined;

  constructor(options: NodeOptions, host: PeerHost & RegistrationHost) {
    this.host = host;
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
    this.registrations.set(type, makeRegistration(this.host, type, definition));
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

  changed(subscriptions: boolean): void {
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

  refuseWhenStopping(): void {
    if (this.state !== "serving") {
      throw new ConnectError(`node ${this.nodeId} is shutting down`, Code.Unavailable);
    }
  }

  deadlineOf(ctx: HandlerContext): number {
    const timeout = ctx.timeoutMs();
    return Date.now() + (timeout ?? this.defaultTimeoutMs);
  }
}
