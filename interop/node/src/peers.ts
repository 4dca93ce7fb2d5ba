// PeerLink: one node's connection to one peer. It calls Describe with the
// node's own description, opens a Subscribe stream with the node's filters,
// feeds the routing table from every NodeInfo, and reconnects with backoff
// (100 ms doubling to 2 s) when the stream ends.
import type { Event } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import type { NodeInfo } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import { RaviClient, type TopicFilterSpec } from "./client.js";
import { sleep } from "./util.js";

export const BACKOFF_INITIAL_MS = 100;
export const BACKOFF_MAX_MS = 2_000;
const DESCRIBE_TIMEOUT_MS = 5_000;

/** Receives log lines; the node's default writes warnings and errors to stderr. */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** What a PeerLink needs from its node. */
export interface PeerHost {
  readonly nodeId: string;
  readonly logger: Logger;
  peerClient(address: string): RaviClient;
  selfInfo(): NodeInfo;
  streamFilters(): TopicFilterSpec[];
  onPeerInfo(link: PeerLink, info: NodeInfo): void;
  onPeerDown(link: PeerLink): void;
  /**
   * Delivers an event from the peer's stream; the link reads the next event
   * only once this settled (back-pressure). `signal` aborts when the stream ends.
   */
  onPeerEvent(link: PeerLink, event: Event, signal: AbortSignal): Promise<void>;
}

const REFILTER = Symbol("refilter");

export class PeerLink {
  readonly address: string;
  /** The name the peer was configured under, or the node id it was learned as. */
  readonly label: string;
  /** The peer's node id, once it answered Describe. */
  nodeId: string | undefined;
  /** The peer's incarnation, from its last NodeInfo. */
  incarnation: string | undefined;
  /** The peer's last NodeInfo, kept while it is unreachable. */
  lastInfo: NodeInfo | undefined;
  /** The client of the current connection. */
  client: RaviClient | undefined;
  /** Connections made so far (1 after the first successful Subscribe). */
  connections = 0;
  /** The dns: peer name this peer was resolved from, if any. */
  group: string | undefined;
  private readonly host: PeerHost;
  private readonly stopController = new AbortController();
  private streamController: AbortController | undefined;
  private wakeController = new AbortController();
  private running: Promise<void> | undefined;
  /** How long retire() lets the calls in flight finish. */
  private drainMs = 0;

  constructor(host: PeerHost, label: string, address: string) {
    this.host = host;
    this.label = label;
    this.address = address;
  }

  get stopped(): boolean {
    return this.stopController.signal.aborted;
  }

  start(): void {
    this.running ??= this.loop();
  }

  /** Reopens the Subscribe stream (the node's subscriptions changed), keeping the routes meanwhile. */
  refilter(): void {
    this.streamController?.abort(REFILTER);
  }

  /** Cuts a reconnect backoff short (the peer called us: it is back). */
  wake(): void {
    this.wakeController.abort();
  }

  async stop(): Promise<void> {
    this.stopController.abort();
    this.client?.close();
    await this.running;
  }

  /**
   * Stops the link, the peer no longer wanted (its address left a dns: pool):
   * the calls in flight on its connection get `drainMs` to finish before it closes.
   */
  async retire(drainMs: number): Promise<void> {
    this.drainMs = drainMs;
    this.stopController.abort();
    await this.running;
  }

  private async loop(): Promise<void> {
    const log = this.host.logger;
    let backoff = BACKOFF_INITIAL_MS;
    let unreachable = false; // logged once per outage
    while (!this.stopped) {
      const client = this.host.peerClient(this.address);
      this.client = client;
      const streamController = new AbortController();
      this.streamController = streamController;
      let established = false;
      let failure: string | undefined;
      try {
        const info = await client.describe(this.host.selfInfo(), {
          timeoutMs: DESCRIBE_TIMEOUT_MS,
          signal: this.stopController.signal,
        });
        if (info.nodeId === this.host.nodeId) {
          // A node of the pool a dns: peer names finds itself there as a matter of course.
          (this.group === undefined ? log.warn : log.debug).call(log, `peer ${this.label} at ${this.address} is this node itself: ignored`);
          this.stopController.abort();
          break;
        }
        this.host.onPeerInfo(this, info);
        const streamSignal = AbortSignal.any([this.stopController.signal, streamController.signal]);
        const stream = client.subscribe(this.host.streamFilters(), {
          subscriberId: this.host.nodeId,
          signal: streamSignal,
        });
        for await (const message of stream) {
          if (message.kind.case === "node") {
            if (!established) {
              established = true;
              unreachable = false;
              this.connections += 1;
              const hosted = message.kind.value.agentTypes.map((t) => t.agentType).sort();
              log.info(`peer ${this.label} connected at ${this.address} (node ${message.kind.value.nodeId}, hosts ${hosted.join(", ") || "no agent types"})`);
            }
            this.host.onPeerInfo(this, message.kind.value);
          } else if (message.kind.case === "event") {
            // Not reading ahead while an event waits for room in a full mailbox.
            await this.host.onPeerEvent(this, message.kind.value, streamSignal);
          }
        }
      } catch (error) {
        failure = peerFailure(error);
      }
      if (!this.stopped && streamController.signal.reason !== REFILTER) {
        // The same lines as the Python and Go nodes write.
        if (established) {
          log.info(`peer ${this.label} at ${this.address} dropped: ${failure ?? "its stream ended"}; reconnecting`);
        } else if (!unreachable) {
          unreachable = true;
          log.info(`peer ${this.label} at ${this.address} unreachable: ${failure ?? "no answer"}; retrying every ${BACKOFF_MAX_MS / 1000} s at most`);
        } else {
          log.debug(`peer ${this.label} at ${this.address} still unreachable: ${failure ?? "no answer"}`);
        }
      }
      const refilter = streamController.signal.reason === REFILTER && !this.stopped;
      if (!refilter) {
        this.host.onPeerDown(this);
      }
      if (this.drainMs > 0) {
        await client.multiplexer.drained(this.drainMs);
      }
      client.close();
      if (this.stopped) {
        break;
      }
      if (refilter) {
        continue;
      }
      if (established) {
        backoff = BACKOFF_INITIAL_MS;
      }
      try {
        await sleep(backoff, AbortSignal.any([this.stopController.signal, this.wakeController.signal]));
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      } catch {
        if (this.stopped) {
          break;
        }
      }
      this.wakeController = new AbortController();
    }
    this.host.onPeerDown(this);
  }
}

/** The gist of why a peer link failed: the operating system's words when connecting failed. */
function peerFailure(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  const refused = /\b(ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT)\b/.exec(text);
  if (refused !== null) {
    return { ECONNREFUSED: "connection refused", ENOTFOUND: "no such host", EHOSTUNREACH: "no route to host", ETIMEDOUT: "timed out" }[refused[1] as "ECONNREFUSED"];
  }
  return text;
}
