// Agent lifecycles (Go: lifecycle.go): an instance idle for idleTimeoutMs, or
// the least recently used idle one beyond maxActiveAgents, is passivated (its
// state saved to the StateStore, the instance released), and its next message
// activates it again with its state loaded. An instance with a message queued
// or running, or marked resident, stays.
import { type JsonObject } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  DEFAULT_CHECKPOINT,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_ACTIVE_AGENTS,
} from "@ravi-mesh/contract/ravi/mesh/v1/contract";

import { RaviError } from "./errors.js";
import { formatAgentId, type AgentAddress } from "./ids.js";
import { type Logger } from "./peers.js";
import { MemoryStore, type StateStore, type StoredState } from "./store.js";

/** Saves after every handled message, before the reply goes out. */
export const CHECKPOINT_EACH_MESSAGE = "each_message";
export const CHECKPOINTS: readonly string[] = [DEFAULT_CHECKPOINT, CHECKPOINT_EACH_MESSAGE];

/** The lifecycle options of a node (NodeOptions). */
export interface LifecycleOptions {
  /** Milliseconds without a message before an instance is passivated (default 10 min; 0: never). */
  idleTimeoutMs?: number | undefined;
  /** Active instances at most (default 100,000; 0: no bound). */
  maxActiveAgents?: number | undefined;
  /** "passivation" (default) or "each_message". */
  checkpoint?: string | undefined;
  /** Where agent state goes (default a MemoryStore). */
  stateStore?: StateStore | undefined;
}

/** One active instance, as the lifecycle sees it. */
export interface LiveInstance {
  readonly agent: AgentAddress;
  /** Stateless instances are released without a save. */
  readonly stateful: boolean;
  /** Messages queued or running. */
  pending: number;
  lastUsed: number;
  /** The version of its state in the store; -1 once stale. */
  version: number;
  retired: boolean;
  resident(): boolean;
  /** The instance's state as a JSON object. */
  snapshot(): JsonObject;
  /** Takes the instance out of its registration. */
  forget(): void;
}

export class Lifecycle {
  readonly idleTimeoutMs: number;
  readonly maxActiveAgents: number;
  readonly checkpointEachMessage: boolean;
  readonly store: StateStore;
  /** Active instances per agent type. */
  readonly active = new Map<string, number>();
  /** Active instances, least recently used first. */
  private readonly order = new Map<string, LiveInstance>();
  /** Passivations saving the state a new activation of their agent must load. */
  private readonly leaving = new Map<string, Promise<void>>();
  /** Saves in progress, chained per instance. */
  private readonly saving = new WeakMap<LiveInstance, Promise<unknown>>();
  private opened: Promise<void> | undefined;
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    options: LifecycleOptions,
    private readonly logger: Logger,
  ) {
    const idle = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    const bound = options.maxActiveAgents ?? DEFAULT_MAX_ACTIVE_AGENTS;
    const checkpoint = options.checkpoint ?? DEFAULT_CHECKPOINT;
    if (!(idle >= 0)) {
      throw new RaviError(Code.InvalidArgument, `idleTimeoutMs must not be negative (0: never), got ${idle}`);
    }
    if (!(Number.isInteger(bound) && bound >= 0)) {
      throw new RaviError(Code.InvalidArgument, `maxActiveAgents must not be negative (0: no bound), got ${bound}`);
    }
    if (!CHECKPOINTS.includes(checkpoint)) {
      throw new RaviError(Code.InvalidArgument, `checkpoint must be one of ${CHECKPOINTS.join(", ")}; got ${JSON.stringify(checkpoint)}`);
    }
    this.idleTimeoutMs = idle;
    this.maxActiveAgents = bound;
    this.checkpointEachMessage = checkpoint === CHECKPOINT_EACH_MESSAGE;
    this.store = options.stateStore ?? new MemoryStore();
  }

  /** Opens the store for the node `holder` and starts the idle sweeps. */
  start(holder: string): Promise<void> {
    this.opened ??= this.store.open(holder);
    if (this.idleTimeoutMs > 0 && this.sweeper === undefined) {
      this.sweeper = setInterval(() => this.sweep(), Math.max(1, this.idleTimeoutMs / 4));
      this.sweeper.unref();
    }
    return this.opened;
  }

  /** Marks a message for an active instance (the most recently used now). */
  touch(instance: LiveInstance): void {
    instance.lastUsed = Date.now();
    const id = formatAgentId(instance.agent);
    this.order.delete(id);
    this.order.set(id, instance);
  }

  /** What a new activation of `agent` waits for first: the save of its passivation, if any. */
  left(agent: AgentAddress): Promise<void> | undefined {
    return this.leaving.get(formatAgentId(agent));
  }

  /**
   * The stored state of an agent being activated. A shared store answers that
   * another node holds it while it hands it over: wait, until `deadline`.
   */
  async load(agent: AgentAddress, deadline: number): Promise<StoredState> {
    await this.opened;
    let delay = 5;
    for (;;) {
      const stored = await this.store.load(agent);
      if (stored.heldBy === "") {
        return stored;
      }
      if (Date.now() + delay >= deadline) {
        throw new RaviError(
          Code.Unavailable,
          `${formatAgentId(agent)} is held by node ${JSON.stringify(stored.heldBy)}, which did not let it go before the deadline`,
          { metadata: { agent_type: agent.type, node_id: stored.heldBy } },
        );
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 100);
    }
  }

  /** Takes note of an activated instance, passivating others beyond the bound. */
  activated(instance: LiveInstance): void {
    this.active.set(instance.agent.type, (this.active.get(instance.agent.type) ?? 0) + 1);
    this.touch(instance);
    if (this.maxActiveAgents === 0) {
      return;
    }
    for (const candidate of this.order.values()) {
      if (this.order.size <= this.maxActiveAgents) {
        break;
      }
      if (candidate !== instance && this.passivatable(candidate)) {
        this.passivate(candidate, "capacity");
      }
    }
  }

  private passivatable(instance: LiveInstance): boolean {
    return instance.pending === 0 && !instance.retired && !instance.resident();
  }

  private sweep(): void {
    const now = Date.now();
    for (const instance of this.order.values()) {
      if (now - instance.lastUsed < this.idleTimeoutMs) {
        break; // the rest were used more recently
      }
      if (this.passivatable(instance)) {
        this.passivate(instance, "idle");
      }
    }
  }

  private retire(instance: LiveInstance): void {
    instance.retired = true;
    instance.forget();
    const id = formatAgentId(instance.agent);
    if (this.order.get(id) === instance) {
      this.order.delete(id);
      this.active.set(instance.agent.type, (this.active.get(instance.agent.type) ?? 1) - 1);
    }
  }

  /** Lets an idle instance go: saves its state (releasing it in a shared store). */
  private passivate(instance: LiveInstance, reason: string): void {
    this.retire(instance);
    if (!instance.stateful) {
      return;
    }
    const id = formatAgentId(instance.agent);
    const saved = this.save(instance, true).then(
      () => undefined,
      (error: unknown) => this.logger.warn(`${id} was not saved on ${reason}: ${error instanceof Error ? error.message : String(error)}`),
    );
    this.leaving.set(id, saved);
    void saved.finally(() => {
      if (this.leaving.get(id) === saved) {
        this.leaving.delete(id);
      }
    });
  }

  /** Writes the instance's state over its version (one save at a time per instance). */
  save(instance: LiveInstance, release: boolean): Promise<void> {
    const previous = this.saving.get(instance) ?? Promise.resolve();
    const next = previous.then(
      () => this.write(instance, release),
      () => this.write(instance, release),
    );
    this.saving.set(instance, next);
    return next;
  }

  private async write(instance: LiveInstance, release: boolean): Promise<void> {
    if (instance.version < 0) {
      throw new RaviError(Code.Aborted, `${formatAgentId(instance.agent)} was discarded: its state is stale`, { reason: "STALE_STATE" });
    }
    await this.opened;
    instance.version = await this.store.save(instance.agent, instance.snapshot(), instance.version, release);
  }

  /**
   * Saves after a message (checkpoint "each_message"). When the store refused
   * the write, or its outcome is unknown, the instance is discarded: the next
   * message loads the agent from the store afresh.
   */
  async checkpoint(instance: LiveInstance): Promise<void> {
    if (!instance.stateful) {
      return;
    }
    try {
      await this.save(instance, false);
    } catch (error) {
      instance.version = -1;
      this.retire(instance);
      throw error;
    }
  }

  /** Saves every active instance (a stopping node), then closes the store. */
  async stop(): Promise<void> {
    clearInterval(this.sweeper);
    this.sweeper = undefined;
    const all = [...this.order.values()];
    for (const instance of all) {
      this.passivate(instance, "stop");
    }
    await Promise.all(this.leaving.values());
    if (this.opened !== undefined) {
      await this.opened.catch(() => undefined);
      await this.store.close();
    }
  }
}
