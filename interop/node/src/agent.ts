// Agent definitions: typed message handlers keyed by message schema, per-key
// state, and the context a handler runs with.
import type { DescMessage, JsonObject, Message, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { Payload } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import type { AgentAddress, TopicAddress } from "./ids.js";

/** Options of a Send made by a handler, a node or a client. */
export interface SendOptions {
  /** The deadline in milliseconds from now (a handler's own remaining time when omitted). */
  timeoutMs?: number;
  /** Cancels the call. */
  signal?: AbortSignal;
  /** Envelope metadata (lower-case keys). */
  metadata?: Readonly<Record<string, string>>;
  /** The message id; a random UUID when omitted. */
  messageId?: string;
  /** The idempotency key of the envelope. */
  idempotencyKey?: string;
}

/** The outcome of a Send: the handling node and the reply payload, if any. */
export interface SendResult {
  /** The id of the node whose agent handled the message. */
  readonly nodeId: string;
  /** The reply, unset when the handler returned nothing. */
  readonly payload: Payload | undefined;
  /** Decodes the reply as `schema`; throws BAD_PAYLOAD when it is absent or another type. */
  decode<O extends DescMessage>(schema: O): MessageShape<O>;
}

/** The outcome of a Publish. */
export interface PublishResult {
  /** The node's own subscriptions that matched and were handed the message. */
  readonly localDeliveries: number;
  /** The Subscribe streams the message was queued on. */
  readonly streamDeliveries: number;
}

/** Options of a Publish. */
export interface PublishOptions {
  metadata?: Readonly<Record<string, string>>;
  messageId?: string;
}

/**
 * AgentContext is what a handler gets with each message: who it is, who sent
 * the message, the call's deadline and cancellation, and the means to send and
 * publish as this agent.
 */
export interface AgentContext<S> {
  /** This agent's id. */
  readonly id: AgentAddress;
  /** The state of this agent instance (created on activation, loaded from the state store). */
  readonly state: S;
  /** The id of the node hosting the agent. */
  readonly nodeId: string;
  /** The sending agent; undefined for a message from outside any agent. */
  readonly sender: AgentAddress | undefined;
  /** The envelope's message id. */
  readonly messageId: string;
  /** The envelope metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The topic, when the message was delivered through a subscription. */
  readonly topic: TopicAddress | undefined;
  /** The agents waiting for this message's reply, outermost first. */
  readonly callChain: readonly AgentAddress[];
  /** The W3C traceparent of the call, when the caller sent one. */
  readonly traceparent: string | undefined;
  /** Aborts when the deadline passes or the caller cancels. */
  readonly signal: AbortSignal;
  /** The deadline as epoch milliseconds. */
  readonly deadline: number;
  /** Milliseconds left before the deadline (never negative). */
  remainingMs(): number;
  /** Sends a message as this agent, with the remaining deadline, traceparent and call chain. */
  send<I extends DescMessage>(
    to: AgentAddress,
    schema: I,
    message: MessageInitShape<I>,
    options?: SendOptions,
  ): Promise<SendResult>;
  /** Sends and decodes the reply as `reply`. */
  call<I extends DescMessage, O extends DescMessage>(
    to: AgentAddress,
    schema: I,
    message: MessageInitShape<I>,
    reply: O,
    options?: SendOptions,
  ): Promise<MessageShape<O>>;
  /**
   * Waits for the named promise to be resolved (ResolvePromise, or
   * node.resolvePromise) and returns its value; a promise resolved earlier
   * returns at once. Bounded by the handler's deadline and `timeoutMs`.
   */
  waitFor(name: string, options?: { timeoutMs?: number }): Promise<Payload>;
  /** Publishes a message as this agent (this agent does not receive it). */
  publish<I extends DescMessage>(
    topic: TopicAddress,
    schema: I,
    message: MessageInitShape<I>,
    options?: PublishOptions,
  ): Promise<PublishResult>;
}

/** A handler's return value: the reply (encoded with `output`), or nothing. */
type Reply<O extends DescMessage | undefined> = O extends DescMessage
  ? MessageInitShape<O> | MessageShape<O> | undefined | void
  : undefined | void;

/** One registered handler, with its types erased. */
export interface HandlerEntry<S> {
  readonly input: DescMessage;
  readonly output: DescMessage | undefined;
  readonly fn: (message: Message, ctx: AgentContext<S>) => Promise<unknown>;
}

export interface AgentDefinitionOptions<S> {
  /** Builds the state of one agent instance, when a message arrives for an agent with none active. */
  state: (id: AgentAddress) => S;
  /** Reentrant agents handle several messages at once, and may be called while waiting. */
  reentrant?: boolean;
  /**
   * Keeps the instances active however idle they are; a state object with
   * `resident: true` decides per instance. Other instances are passivated
   * when idle (NodeOptions.idleTimeoutMs) or beyond NodeOptions.maxActiveAgents:
   * their state saved (`save`) to the node's state store, and loaded (`load`)
   * into a new instance by the next message.
   */
  resident?: boolean;
  /**
   * Returns the state as a JSON object (SaveState). By default an object state
   * is copied through JSON, and any other state saves as {}.
   */
  save?: (state: S, id: AgentAddress) => JsonObject;
  /**
   * Loads a saved JSON object (LoadState) and returns the new state. By
   * default the JSON's fields are assigned onto an object state.
   */
  load?: (saved: JsonObject, state: S, id: AgentAddress) => S;
}

function defaultSave(state: unknown): JsonObject {
  if (typeof state !== "object" || state === null) {
    return {};
  }
  return JSON.parse(JSON.stringify(state)) as JsonObject;
}

function defaultLoad<S>(saved: JsonObject, state: S): S {
  if (typeof state === "object" && state !== null) {
    Object.assign(state, saved);
  }
  return state;
}

/**
 * AgentDefinition holds an agent type's handlers. Build one with `defineAgent`
 * and `.on(...)`, then register it on a node under a type name:
 *
 *     const echo = defineAgent({ state: () => ({ seen: 0 }) })
 *       .on(EchoSchema, EchoedSchema, (msg, ctx) => { ctx.state.seen++; return { text: msg.text }; });
 *     node.register("echo", echo);
 */
export class AgentDefinition<S> {
  readonly reentrant: boolean;
  readonly resident: boolean;
  readonly createState: (id: AgentAddress) => S;
  readonly saveState: (state: S, id: AgentAddress) => JsonObject;
  readonly loadState: (saved: JsonObject, state: S, id: AgentAddress) => S;
  private readonly entries = new Map<string, HandlerEntry<S>>();

  constructor(options: AgentDefinitionOptions<S>) {
    this.reentrant = options.reentrant ?? false;
    this.resident = options.resident ?? false;
    this.createState = options.state;
    this.saveState = options.save ?? defaultSave;
    this.loadState = options.load ?? defaultLoad;
  }

  /** Adds a handler for `input` whose reply is encoded as `output`. */
  on<I extends DescMessage, O extends DescMessage>(
    input: I,
    output: O,
    fn: (message: MessageShape<I>, ctx: AgentContext<S>) => Reply<O> | Promise<Reply<O>>,
  ): this;
  /** Adds a handler for `input` that replies nothing. */
  on<I extends DescMessage>(
    input: I,
    fn: (message: MessageShape<I>, ctx: AgentContext<S>) => void | Promise<void>,
  ): this;
  on<I extends DescMessage>(
    input: I,
    outputOrFn: DescMessage | ((message: MessageShape<I>, ctx: AgentContext<S>) => unknown),
    maybeFn?: (message: MessageShape<I>, ctx: AgentContext<S>) => unknown,
  ): this {
    const output = typeof outputOrFn === "function" ? undefined : outputOrFn;
    const fn = typeof outputOrFn === "function" ? outputOrFn : maybeFn;
    if (fn === undefined) {
      throw new TypeError(`handler for ${input.typeName} is missing`);
    }
    if (this.entries.has(input.typeName)) {
      throw new TypeError(`two handlers for ${input.typeName}`);
    }
    this.entries.set(input.typeName, {
      input,
      output,
      fn: async (message, ctx) => fn(message as MessageShape<I>, ctx),
    });
    return this;
  }

  /** The handler for a message type name, if any. */
  handler(typeName: string): HandlerEntry<S> | undefined {
    return this.entries.get(typeName);
  }

  /** The handled message types, in registration order. */
  handlers(): HandlerEntry<S>[] {
    return [...this.entries.values()];
  }
}

/** Starts an agent definition with per-instance state. */
export function defineAgent(): AgentDefinition<undefined>;
export function defineAgent<S>(options: AgentDefinitionOptions<S>): AgentDefinition<S>;
export function defineAgent<S>(options?: AgentDefinitionOptions<S>): AgentDefinition<S> | AgentDefinition<undefined> {
  if (options === undefined) {
    return new AgentDefinition<undefined>({ state: () => undefined });
  }
  return new AgentDefinition<S>(options);
}

/** Options of `defineAgent` without state. */
export type StatelessOptions = Omit<AgentDefinitionOptions<undefined>, "state">;

/** Starts a stateless agent definition (reentrant or not). */
export function defineStatelessAgent(options: StatelessOptions = {}): AgentDefinition<undefined> {
  return new AgentDefinition<undefined>({ ...options, state: () => undefined });
}
