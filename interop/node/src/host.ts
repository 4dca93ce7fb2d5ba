// The in-process agent engine of a node: per-AgentId state and mailboxes,
// handler calls under a deadline, and named promises.
import type { DescMessage, JsonObject, Message, MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { randomUUID } from "node:crypto";
import { context as otelContext, type Context } from "@opentelemetry/api";
import { DEFAULT_TIMEOUT_MS } from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import type { Envelope, Payload } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import type {
  AgentContext,
  AgentDefinition,
  HandlerEntry,
  PublishOptions,
  PublishResult,
  SendOptions,
  SendResult,
} from "./agent.js";
import { encodePayload } from "./codec.js";
import { errors, handlerFailure, RaviError } from "./errors.js";
import { formatAgentId, type AgentAddress, type TopicAddress } from "./ids.js";
import { type Lifecycle, type LiveInstance } from "./lifecycle.js";
import { MAX_TIMER_MS } from "./util.js";

/** W3C trace context of a call. */
export interface TraceContext {
  readonly traceparent?: string | undefined;
  readonly tracestate?: string | undefined;
}

/** The gRPC metadata that carries a trace context. */
export function traceHeaders(trace: TraceContext): Record<string, string> | undefined {
  const headers: Record<string, string> = {};
  if (trace.traceparent !== undefined) {
    headers["traceparent"] = trace.traceparent;
  }
  if (trace.tracestate !== undefined) {
    headers["tracestate"] = trace.tracestate;
  }
  return Object.keys(headers).length === 0 ? undefined : headers;
}

/** Maps an abort reason to the failure of the call it aborted. */
export function failureOf(reason: unknown, what: string): RaviError {
  if (reason instanceof RaviError) {
    return reason;
  }
  if (reason instanceof ConnectError && reason.code === Code.DeadlineExceeded) {
    return errors.deadlineExceeded(what);
  }
  return errors.cancelled(what);
}

/** CallScope aborts its signal when the deadline passes or the parent signal aborts. */
export class CallScope {
  readonly deadline: number;
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout | undefined;
  private readonly parent: AbortSignal | undefined;
  private readonly onParentAbort: () => void;

  constructor(deadline: number, parent: AbortSignal | undefined, what: string) {
    this.deadline = deadline;
    this.parent = parent;
    this.onParentAbort = (): void => this.abort(failureOf(parent?.reason, what));
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      this.controller.abort(errors.deadlineExceeded(what));
    } else {
      this.timer = setTimeout(() => this.abort(errors.deadlineExceeded(what)), Math.min(remaining, MAX_TIMER_MS));
    }
    if (parent?.aborted === true) {
      this.onParentAbort();
    } else if (!this.controller.signal.aborted) {
      parent?.addEventListener("abort", this.onParentAbort, { once: true });
    }
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  private abort(reason: RaviError): void {
    this.controller.abort(reason);
    this.dispose();
  }

  dispose(): void {
    clearTimeout(this.timer);
    this.parent?.removeEventListener("abort", this.onParentAbort);
  }
}

/** Resolves with the promise's value, or rejects with the reason the signal aborts with. */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    promise.catch(() => undefined);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

interface Job {
  readonly signal: AbortSignal;
  /** Runs the handler; resolves once it settled (or the abort grace passed). Never rejects. */
  run(): Promise<void>;
}

/** A publish delivery waiting for room in a full mailbox. */
interface Waiter {
  readonly job: Job;
  /** Called once the job is in the queue. */
  admitted(): void;
}

/**
 * Mailbox delivers one agent's messages one at a time, in order. It holds at
 * most `capacity` queued messages: a send to a full mailbox fails at once
 * (push), a publish delivery waits for room (pushWait), first come first
 * served, so memory stays bounded however fast events arrive.
 */
class Mailbox {
  private readonly queue: Job[] = [];
  /** Publish deliveries waiting for room, oldest first. Non-empty only while the queue is full. */
  private readonly waiting: Waiter[] = [];
  private busy = false;
  private readonly capacity: number;
  private readonly agent: string;

  constructor(agent: string, capacity: number) {
    this.agent = agent;
    this.capacity = capacity;
  }

  get idle(): boolean {
    return !this.busy && this.queue.length === 0 && this.waiting.length === 0;
  }

  /** True when a message pushed now would have to wait (or fail). */
  private get full(): boolean {
    // Waiters count too: a newcomer must not overtake a publish that waits.
    return this.queue.length >= this.capacity || this.waiting.length > 0;
  }

  /** Queues a job (synchronously); throws MAILBOX_FULL at capacity. */
  push(job: Job): void {
    if (this.full) {
      throw errors.mailboxFull(this.agent, this.capacity);
    }
    this.enqueue(job);
  }

  /**
   * Queues a job, synchronously when there is room (returns undefined);
   * otherwise returns a promise that resolves once the job is queued, after
   * the waiters before it. It rejects with MAILBOX_FULL ("stayed full") when
   * `room` aborts first, or with the job's abort reason when the job is
   * cancelled while it waits; the job then never runs.
   */
  pushWait(job: Job, room: AbortSignal): Promise<void> | undefined {
    if (!this.full) {
      this.enqueue(job);
      return undefined;
    }
    if (room.aborted) {
      return Promise.reject(errors.mailboxStayedFull(this.agent, this.capacity));
    }
    if (job.signal.aborted) {
      return Promise.reject(job.signal.reason);
    }
    return new Promise<void>((resolve, reject) => {
      const stopListening = (): void => {
        room.removeEventListener("abort", onAbort);
        job.signal.removeEventListener("abort", onAbort);
      };
      const waiter: Waiter = {
        job,
        admitted: () => {
          stopListening();
          resolve();
        },
      };
      const onAbort = (): void => {
        stopListening();
        const at = this.waiting.indexOf(waiter);
        if (at >= 0) {
          this.waiting.splice(at, 1);
        }
        reject(room.aborted ? errors.mailboxStayedFull(this.agent, this.capacity) : job.signal.reason);
      };
      room.addEventListener("abort", onAbort, { once: true });
      job.signal.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private enqueue(job: Job): void {
    this.queue.push(job);
    if (!this.busy) {
      void this.drain();
    }
  }

  /** Takes the next job, moving the oldest waiters into the room it frees. */
  private take(): Job | undefined {
    const job = this.queue.shift();
    while (this.queue.length < this.capacity) {
      const waiter = this.waiting.shift();
      if (waiter === undefined) {
        break;
      }
      this.queue.push(waiter.job);
      waiter.admitted();
    }
    return job;
  }

  private async drain(): Promise<void> {
    this.busy = true;
    try {
      for (let job = this.take(); job !== undefined; job = this.take()) {
        if (!job.signal.aborted) {
          await job.run();
        }
      }
    } finally {
      this.busy = false;
    }
  }
}

/** What a delivery needs besides the message. */
export interface Delivery {
  readonly envelope: Envelope;
  /** The metadata the handler sees: the envelope's, plus the call's trace context. */
  readonly metadata: Readonly<Record<string, string>>;
  readonly topic: TopicAddress | undefined;
  readonly deadline: number;
  readonly signal: AbortSignal | undefined;
  /** The trace context the message arrived with. */
  readonly trace: TraceContext;
  /** The OpenTelemetry context of the handle or deliver span: the handler runs in it. */
  readonly context: Context;
}

/** Where a handler's nested sends come from. */
export interface Origin {
  readonly agent: AgentAddress | undefined;
  readonly callChain: readonly AgentAddress[];
  readonly deadline: number | undefined;
  readonly signal: AbortSignal | undefined;
  /** The parent of the send span (the handler's span); the active context when unset. */
  readonly context: Context | undefined;
}

/** Everything a registration needs from its node. */
export interface RegistrationHost {
  readonly nodeId: string;
  readonly mailboxCapacity: number;
  /** Activations, passivations and the state store. */
  readonly lifecycle: Lifecycle;
  readonly abortGraceMs: number;
  readonly promises: PromiseStore;
  sendFrom(origin: Origin, to: AgentAddress, payload: Payload, options: SendOptions): Promise<SendResult>;
  /** Publishes; waits for room in full local mailboxes until the publish deadline, bounded by `within`. */
  publishFrom(
    sender: AgentAddress | undefined,
    parent: Context | undefined,
    topic: TopicAddress,
    payload: Payload,
    options: PublishOptions,
    within?: { readonly deadline: number; readonly signal: AbortSignal | undefined },
  ): Promise<PublishResult>;
}

/** A registered agent type with its state type erased. */
export interface Registration {
  readonly type: string;
  readonly reentrant: boolean;
  handledTypes(): string[];
  hasHandler(typeName: string): boolean;
  /**
   * Runs the handler in the agent's mailbox; resolves with the encoded reply,
   * if any. A full mailbox fails it at once with MAILBOX_FULL (a send).
   */
  deliver(key: string, typeName: string, message: Message, delivery: Delivery): Promise<Payload | undefined>;
  /**
   * Delivers a published message: like deliver, but a full mailbox makes it
   * wait for room until `room` aborts (the publish deadline). `waiting` is
   * undefined when the message was queued at once, else it settles once it is
   * queued, or rejects with MAILBOX_FULL when `room` aborted first (`done`
   * then rejects with the same error).
   */
  deliverEvent(
    key: string,
    typeName: string,
    message: Message,
    delivery: Delivery,
    room: AbortSignal,
  ): { readonly waiting: Promise<void> | undefined; readonly done: Promise<Payload | undefined> };
  /** The keys of the active instances. */
  keys(): string[];
  /** The state of one instance (activated if needed) as a JSON object. */
  saveState(key: string): Promise<JsonObject>;
  /** Loads a JSON object into one instance (activated if needed). */
  loadState(key: string, saved: JsonObject): Promise<void>;
  /** True when no instance has a message queued or running. */
  idle(): boolean;
}

/** Builds the Registration of an agent definition under a type name. */
export function makeRegistration<S>(host: RegistrationHost, type: string, definition: AgentDefinition<S>): Registration {
  interface Instance extends LiveInstance {
    readonly id: AgentAddress;
    state: S;
    readonly mailbox: Mailbox;
  }
  const lifecycle = host.lifecycle;
  const instances = new Map<string, Instance>();
  const activating = new Map<string, Promise<Instance>>();

  const activate = async (key: string, deadline: number): Promise<Instance> => {
    const id = { type, key };
    // The state this activation loads is the one a passivation still saves.
    await lifecycle.left(id);
    const state = definition.createState(id);
    const target: Instance = {
      id,
      agent: id,
      state,
      mailbox: new Mailbox(formatAgentId(id), host.mailboxCapacity),
      stateful: state !== undefined,
      pending: 0,
      lastUsed: Date.now(),
      version: 0,
      retired: false,
      resident: () => definition.resident || (typeof state === "object" && state !== null && (state as { resident?: unknown }).resident === true),
      snapshot: () => definition.saveState(target.state, id),
      forget: () => {
        if (instances.get(key) === target) {
          instances.delete(key);
        }
      },
    };
    if (target.stateful) {
      const stored = await lifecycle.load(id, deadline);
      if (stored.state !== undefined) {
        target.state = definition.loadState(stored.state, target.state, id);
      }
      target.version = stored.version;
    }
    instances.set(key, target);
    lifecycle.activated(target);
    return target;
  };

  /** The active instance of `key`: at once when there is one, else once activated. */
  const instance = (key: string, deadline: number): Instance | Promise<Instance> => {
    const found = instances.get(key);
    if (found !== undefined) {
      lifecycle.touch(found);
      return found;
    }
    let pending = activating.get(key);
    if (pending === undefined) {
      pending = activate(key, deadline).finally(() => activating.delete(key));
      activating.set(key, pending);
    }
    return pending.then((target) => (target.retired ? instance(key, deadline) : target));
  };

  const context = (target: Instance, scope: CallScope, delivery: Delivery): AgentContext<S> => {
    const envelope = delivery.envelope;
    const sender = envelope.sender === undefined ? undefined : { type: envelope.sender.type, key: envelope.sender.key };
    const callChain = envelope.callChain.map((a) => ({ type: a.type, key: a.key }));
    // A message delivered through a subscription has nobody waiting on it.
    const nestedChain = delivery.topic === undefined ? [...callChain, target.id] : [target.id];
    const ctx: AgentContext<S> = {
      id: target.id,
      state: target.state,
      nodeId: host.nodeId,
      sender,
      // An envelope without a message id gets a fresh one (types.proto).
      messageId: envelope.messageId === "" ? randomUUID() : envelope.messageId,
      metadata: delivery.metadata,
      topic: delivery.topic,
      callChain,
      traceparent: delivery.trace.traceparent,
      signal: scope.signal,
      deadline: delivery.deadline,
      remainingMs: () => Math.max(0, delivery.deadline - Date.now()),
      send: (to, schema, msg, options) =>
        host.sendFrom(
          {
            agent: target.id,
            callChain: nestedChain,
            deadline: delivery.deadline,
            signal: scope.signal,
            context: delivery.context,
          },
          to,
          encodePayload(schema, msg),
          options ?? {},
        ),
      call: async (to, schema, msg, reply, options) => (await ctx.send(to, schema, msg, options)).decode(reply),
      waitFor: (name, options) => {
        const deadline = Math.min(delivery.deadline, Date.now() + (options?.timeoutMs ?? MAX_TIMER_MS));
        const wait = new CallScope(deadline, scope.signal, `while waiting for promise "${name}"`);
        return host.promises.wait(name, wait.signal).finally(() => wait.dispose());
      },
      publish: async (topic, schema, msg, options) =>
        // A handler's publish waits for room no longer than the handler may run.
        host.publishFrom(target.id, delivery.context, topic, encodePayload(schema, msg), options ?? {}, {
          deadline: delivery.deadline,
          signal: scope.signal,
        }),
    };
    return ctx;
  };

  /** Queues a delivery: with `room`, waiting for room in a full mailbox until it aborts; without, failing at once. */
  const start = (
    key: string,
    typeName: string,
    message: Message,
    delivery: Delivery,
    room: AbortSignal | undefined,
  ): { waiting: Promise<void> | undefined; done: Promise<Payload | undefined> } => {
    const entry = definition.handler(typeName);
    if (entry === undefined) {
      const handled = definition.handlers().map((h) => h.input.typeName);
      return { waiting: undefined, done: Promise.reject(errors.noHandler(type, typeName, handled)) };
    }
    const found = instance(key, delivery.deadline);
    if (!(found instanceof Promise)) {
      return startOn(found, entry, typeName, message, delivery, room);
    }
    // Activated first (its state loaded): the message counts as waiting until then.
    const started = found.then((target) => startOn(target, entry, typeName, message, delivery, room));
    const done = started.then((s) => s.done);
    const waiting = started.then((s) => s.waiting);
    waiting.catch(() => undefined);
    return { waiting, done };
  };

  const startOn = (
    target: Instance,
    entry: HandlerEntry<S>,
    typeName: string,
    message: Message,
    delivery: Delivery,
    room: AbortSignal | undefined,
  ): { waiting: Promise<void> | undefined; done: Promise<Payload | undefined> } => {
    const scope = new CallScope(delivery.deadline, delivery.signal, `while ${formatAgentId(target.id)} handled ${typeName}`);
    let waiting: Promise<void> | undefined;
    const done = new Promise<Payload | undefined>((resolve, reject) => {
      const onAbort = (): void => reject(scope.signal.reason);
      scope.signal.addEventListener("abort", onAbort, { once: true });
      const job: Job = {
        signal: scope.signal,
        run: async () => {
          if (scope.signal.aborted) {
            return;
          }
          const settled = (async () => {
            try {
              // The handler runs in its span's context: its own spans are children of it.
              const value = await otelContext.with(delivery.context, () =>
                entry.fn(message, context(target, scope, delivery)),
              );
              if (lifecycle.checkpointEachMessage) {
                // Saved before the reply goes out: an acknowledged message is durable.
                await lifecycle.checkpoint(target);
              }
              if (entry.output !== undefined && value !== undefined && value !== null) {
                resolve(encodePayload(entry.output, value as MessageInitShape<DescMessage>));
              } else {
                resolve(undefined);
              }
            } catch (error) {
              reject(scope.signal.aborted ? scope.signal.reason : handlerFailure(error, type));
            }
          })();
          // A cancelled handler that ignores its signal holds the mailbox for
          // abortGraceMs at most.
          let graceTimer: NodeJS.Timeout | undefined;
          const grace = new Promise<void>((done) => {
            const start = (): void => {
              graceTimer = setTimeout(done, host.abortGraceMs);
            };
            if (scope.signal.aborted) {
              start();
            } else {
              scope.signal.addEventListener("abort", start, { once: true });
              void settled.then(() => scope.signal.removeEventListener("abort", start));
            }
          });
          await Promise.race([settled, grace]);
          clearTimeout(graceTimer);
          scope.signal.removeEventListener("abort", onAbort);
          scope.dispose();
        },
      };
      const unqueued = (error: unknown): void => {
        scope.signal.removeEventListener("abort", onAbort);
        scope.dispose();
        reject(error);
      };
      try {
        if (definition.reentrant) {
          void job.run();
        } else if (room === undefined) {
          target.mailbox.push(job);
        } else {
          waiting = target.mailbox.pushWait(job, room);
          waiting?.catch(unqueued);
        }
      } catch (error) {
        unqueued(error);
      }
    });
    // Queued or running until it settles: the instance is not passivated meanwhile.
    target.pending += 1;
    void done.then(
      () => (target.pending -= 1),
      () => (target.pending -= 1),
    );
    return { waiting, done };
  };

  const deliver = (key: string, typeName: string, message: Message, delivery: Delivery): Promise<Payload | undefined> =>
    start(key, typeName, message, delivery, undefined).done;

  return {
    type,
    reentrant: definition.reentrant,
    handledTypes: () => definition.handlers().map((h) => h.input.typeName),
    hasHandler: (typeName) => definition.handler(typeName) !== undefined,
    deliver,
    deliverEvent: start,
    keys: () => [...instances.keys()],
    saveState: async (key) => {
      const target = await instance(key, Date.now() + DEFAULT_TIMEOUT_MS);
      return definition.saveState(target.state, target.id);
    },
    loadState: async (key, saved) => {
      const target = await instance(key, Date.now() + DEFAULT_TIMEOUT_MS);
      target.state = definition.loadState(saved, target.state, target.id);
      if (lifecycle.checkpointEachMessage) {
        await lifecycle.checkpoint(target);
      }
    },
    idle: () => activating.size === 0 && [...instances.values()].every((i) => i.mailbox.idle && i.pending === 0),
  };
}

/**
 * PromiseStore keeps named promises: handlers wait for them, ResolvePromise
 * resolves them once (a second resolution is ALREADY_EXISTS), and a value
 * resolved before anyone waits is kept for the first waiter.
 */
export class PromiseStore {
  private readonly entries = new Map<
    string,
    { value: Payload | undefined; waiters: Set<(value: Payload) => void> }
  >();

  private entry(name: string): { value: Payload | undefined; waiters: Set<(value: Payload) => void> } {
    let found = this.entries.get(name);
    if (found === undefined) {
      found = { value: undefined, waiters: new Set() };
      this.entries.set(name, found);
    }
    return found;
  }

  /** True when a handler waits for the promise and it is not resolved yet. */
  awaited(name: string): boolean {
    const found = this.entries.get(name);
    return found !== undefined && found.value === undefined && found.waiters.size > 0;
  }

  /** True when the promise was resolved. */
  resolved(name: string): boolean {
    return this.entries.get(name)?.value !== undefined;
  }

  /** Resolves the promise; throws ALREADY_EXISTS when it was resolved already. Returns whether anyone waited. */
  resolve(name: string, value: Payload): boolean {
    const found = this.entry(name);
    if (found.value !== undefined) {
      throw new RaviError(Code.AlreadyExists, `promise "${name}" is resolved already`);
    }
    found.value = value;
    const waited = found.waiters.size > 0;
    for (const waiter of found.waiters) {
      waiter(value);
    }
    found.waiters.clear();
    return waited;
  }

  /** Waits for the promise's value; rejects with the signal's reason when it aborts first. */
  wait(name: string, signal: AbortSignal): Promise<Payload> {
    const found = this.entry(name);
    if (found.value !== undefined) {
      return Promise.resolve(found.value);
    }
    if (signal.aborted) {
      return Promise.reject(signal.reason);
    }
    return new Promise<Payload>((resolve, reject) => {
      const onAbort = (): void => {
        found.waiters.delete(waiter);
        reject(signal.reason);
      };
      const waiter = (value: Payload): void => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      };
      found.waiters.add(waiter);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }
}
