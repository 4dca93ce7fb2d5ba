// RaviNode: hosts agent types and serves ravi.mesh.v1.AgentService, gRPC
// health and server reflection over gRPC (HTTP/2, cleartext or TLS), and joins
// the mesh through its peers. docs/protocol.md, "Mesh behaviour", is the spec.
//
// This class is the node's public face; its features live one per file under
// node/, over the state they share (node/core.ts), as in the Go member:
//   node/send.ts      Send: one dispatcher for sends made here and received ones, forwarding
//   node/publish.ts   Publish: local subscribers, hand-over to peers, peers' events
//   node/deliver.ts   deliveries into mailboxes (the wait for room, published events)
//   node/streams.ts   Subscribe streams this node serves
//   node/connect.ts   Connect: Sends multiplexed on one stream
//   node/state.ts     ResolvePromise, SaveState, LoadState
//   node/routing.ts   peers, the routing table, rendezvous placement
//   node/service.ts   the gRPC server: AgentService, health, reflection, tokens, stop
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { Context } from "@opentelemetry/api";
import type { Event } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import type { NodeInfo, Payload } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import type { AgentDefinition, PublishOptions, PublishResult, SendOptions } from "./agent.js";
import type { RaviClient, SendReply, TopicFilterSpec } from "./client.js";
import { encodePayload, type TypeRegistry } from "./codec.js";
import type { Origin, PromiseStore, RegistrationHost } from "./host.js";
import type { AgentAddress, TopicAddress } from "./ids.js";
import type { Logger, PeerHost, PeerLink } from "./peers.js";
import { extractContext } from "./tracing.js";
import { NodeCore } from "./node/core.js";
import type { NodeOptions, SubscriptionInfo } from "./node/options.js";
import { onPeerEvent, publishFrom } from "./node/publish.js";
import {
  addPeer,
  onPeerDown,
  onPeerInfo,
  peerClient,
  peers,
  route,
  routingTable,
  streamFilters,
  waitForRoute,
  waitForRoutes,
} from "./node/routing.js";
import { sendFrom } from "./node/send.js";
import { shutdown, start } from "./node/service.js";
import { loadState, resolvePromise, saveState } from "./node/state.js";

export { CONTRACT_VERSION, HOP_LIMIT } from "@ravi-mesh/contract/ravi/mesh/v1/contract";
export { LANGUAGE, stderrLogger, type NodeOptions, type SubscriptionInfo } from "./node/options.js";

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
  readonly incarnation: string;
  readonly logger: Logger;
  readonly mailboxCapacity: number;
  readonly abortGraceMs: number;
  readonly promises: PromiseStore;
  private readonly core: NodeCore;

  constructor(options: NodeOptions) {
    const core = new NodeCore(options, this);
    this.core = core;
    this.nodeId = core.nodeId;
    this.incarnation = core.incarnation;
    this.logger = core.logger;
    this.mailboxCapacity = core.mailboxCapacity;
    this.abortGraceMs = core.abortGraceMs;
    this.promises = core.promises;
  }

  /** host:port as peers should dial it; empty before start(). */
  get address(): string {
    return this.core.address;
  }

  /** The message types this node can decode. */
  get registry(): TypeRegistry {
    return this.core.registry;
  }

  // --- registration -----------------------------------------------------------

  /** Registers an agent type; throws ALREADY_EXISTS when the name is taken. */
  register<S>(type: string, definition: AgentDefinition<S>): void {
    this.core.register(type, definition);
  }

  /** Removes an agent type (its subscriptions stay: events then go to peers hosting it). */
  unregister(type: string): void {
    this.core.unregister(type);
  }

  /** True when this node hosts the agent type. */
  hosts(type: string): boolean {
    return this.core.hosts(type);
  }

  /**
   * Routes events on matching topics to agents of `agentType` (key = topic
   * source), hosted here or on a peer; returns the subscription id.
   */
  subscribe(agentType: string, filter: TopicFilterSpec): string {
    return this.core.subscribe(agentType, filter);
  }

  /** Removes a subscription by id. */
  unsubscribe(id: string): void {
    this.core.unsubscribe(id);
  }

  /** The node's subscriptions. */
  subscriptions(): SubscriptionInfo[] {
    return this.core.subscriptions();
  }

  /** The node's description, as Describe and Subscribe return it. */
  info(): NodeInfo {
    return this.core.info();
  }

  // --- lifecycle --------------------------------------------------------------

  /** Starts serving and connects to the peers; resolves with the address once listening. */
  start(): Promise<string> {
    return start(this.core);
  }

  /**
   * Stops gracefully: health turns NOT_SERVING, peers and streams close, calls
   * in flight get `graceMs` to finish, then the server closes.
   */
  stop(graceMs = this.core.options.shutdownGraceMs ?? 5_000): Promise<void> {
    this.core.stopping ??= shutdown(this.core, graceMs);
    return this.core.stopping;
  }

  // --- peers and routes -------------------------------------------------------

  /** Adds a peer and starts connecting to it (a no-op if that address is a peer already). */
  addPeer(label: string, address: string): void {
    addPeer(this.core, label, address);
  }

  /** The peers, as configured or learned. */
  peers(): { label: string; address: string; nodeId: string | undefined; connected: boolean }[] {
    return peers(this.core);
  }

  /** The routing table: each reachable peer's latest NodeInfo, by node id. */
  routingTable(): ReadonlyMap<string, NodeInfo> {
    return routingTable(this.core);
  }

  /**
   * Resolves once `predicate` holds for the routing table (checked on every
   * change); rejects with DEADLINE_EXCEEDED after `timeoutMs`.
   */
  waitForRoutes(predicate: (routes: ReadonlyMap<string, NodeInfo>) => boolean, timeoutMs = 5_000): Promise<void> {
    return waitForRoutes(this.core, predicate, timeoutMs);
  }

  /** Resolves once `agentType` is hosted here or by a connected peer (optionally a given node). */
  waitForRoute(agentType: string, options: { nodeId?: string; timeoutMs?: number } = {}): Promise<void> {
    return waitForRoute(this.core, agentType, options);
  }

  /** Picks the peer for an agent type and key: the only one, or the rendezvous winner. */
  route(agentType: string, key: string, exclude: readonly string[] = []): string | undefined {
    return route(this.core, agentType, key, exclude);
  }

  // --- sending and publishing -------------------------------------------------

  /** Sends from an agent (or from the node itself when origin.agent is unset). */
  sendFrom(origin: Origin, to: AgentAddress, payload: Payload, options: SendOptions): Promise<SendReply> {
    return sendFrom(this.core, origin, to, payload, options);
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

  /** Publishes as an agent (or as the node): local subscribers and every matching stream. */
  publishFrom(
    sender: AgentAddress | undefined,
    parent: Context | undefined,
    topic: TopicAddress,
    payload: Payload,
    options: PublishOptions,
    within?: { readonly deadline: number; readonly signal: AbortSignal | undefined },
  ): Promise<PublishResult> {
    return publishFrom(this.core, sender, parent, topic, payload, options, within);
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

  // --- promises and state -----------------------------------------------------

  /**
   * Resolves a named promise here and on every connected peer (the waiting
   * handler may be anywhere). Throws ALREADY_EXISTS when any node had it
   * resolved already.
   */
  resolvePromise(name: string, value: Payload, options: { timeoutMs?: number } = {}): Promise<void> {
    return resolvePromise(this.core, name, value, options);
  }

  /** The JSON state of one local agent, or of every local agent instance, by "type/key". */
  saveState(agent?: AgentAddress): Record<string, Payload> {
    return saveState(this.core, agent);
  }

  /** Loads JSON states ("type/key" -> Struct JSON payload) into local agents, creating them as needed. */
  loadState(states: Readonly<Record<string, Payload>>): void {
    loadState(this.core, states);
  }

  // --- PeerHost: what the node's peer links call ------------------------------

  peerClient(address: string): RaviClient {
    return peerClient(this.core, address);
  }

  selfInfo(): NodeInfo {
    return this.core.info();
  }

  streamFilters(): TopicFilterSpec[] {
    return streamFilters(this.core);
  }

  onPeerInfo(link: PeerLink, info: NodeInfo): void {
    onPeerInfo(this.core, link, info);
  }

  onPeerDown(link: PeerLink): void {
    onPeerDown(this.core, link);
  }

  onPeerEvent(link: PeerLink, event: Event, signal: AbortSignal): Promise<void> {
    return onPeerEvent(this.core, link, event, signal);
  }
}
