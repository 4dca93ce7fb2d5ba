// Subscribe: the streams this node serves and the events queued on them
// (Go: publish.go).
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { EventSchema, type SubscribeRequest, type SubscribeResponseSchema } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { TopicIdSchema, type Envelope, type TopicFilter } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { type TopicFilterSpec } from "../client.js";
import { RaviError, toConnectError } from "../errors.js";
import { type TopicAddress } from "../ids.js";
import { DEFAULT_MAX_STREAMS_PER_CALLER } from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import { CALLER, NodeCore } from "./core.js";

export type StreamItem = MessageInitShape<typeof SubscribeResponseSchema>;

/** One open Subscribe stream on this node. */
export class StreamSubscriber {
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

export function matchesFilter(filter: TopicFilterSpec, topicType: string): boolean {
  return "topicType" in filter ? filter.topicType === topicType : topicType.startsWith(filter.topicTypePrefix);
}

/** A stream filter as a spec; filters that set nothing match nothing and are dropped (as Python and Go do). */
export function filterSpec(filter: TopicFilter): TopicFilterSpec | undefined {
  switch (filter.kind.case) {
    case "topicType":
      return { topicType: filter.kind.value };
    case "topicTypePrefix":
      return { topicTypePrefix: filter.kind.value };
    default:
      return undefined;
  }
}

export function filterProto(filter: TopicFilterSpec): TopicFilter["kind"] {
  return "topicType" in filter
    ? { case: "topicType", value: filter.topicType }
    : { case: "topicTypePrefix", value: filter.topicTypePrefix };
}

/** Queues a published message on every matching Subscribe stream; returns how many took it. */
export function offerToStreams(node: NodeCore, topic: TopicAddress, envelope: Envelope): number {
  let streamDeliveries = 0;
  const event = create(EventSchema, {
    topic: create(TopicIdSchema, { type: topic.type, source: topic.source }),
    envelope,
    originNodeId: node.nodeId,
  });
  for (const stream of node.streams) {
    if (!stream.matches(topic.type)) {
      continue;
    }
    if (stream.queued >= node.streamQueueCapacity) {
      node.logger.warn(`subscriber ${stream.subscriberId} fell ${node.streamQueueCapacity} events behind: its stream is ended`);
      stream.end(
        new RaviError(
          Code.ResourceExhausted,
          `subscriber ${stream.subscriberId || "(anonymous)"} fell more than ${node.streamQueueCapacity} events behind; events were dropped`,
        ),
      );
      node.streams.delete(stream);
      continue;
    }
    stream.push({ kind: { case: "event", value: event } });
    streamDeliveries += 1;
  }
  return streamDeliveries;
}

/** Events queued on a stream from which its writer counts as behind (Python's batch size). */
const BACKED_UP = 256;
/** Event-loop turns an in-process publish gives backed-up streams, at most. */
const CATCH_UP_TURNS = 8;

/**
 * Gives the writers of backed-up streams on the topic event-loop turns, a
 * bounded number. A loop of in-process publishes awaits only promises that
 * are already settled, which never lets the HTTP/2 session write: every
 * event would wait for the loop's end, and a loop longer than the stream
 * queue would end a subscriber that keeps up. The bound keeps a stuck
 * subscriber from holding the publisher: its stream still fills up and ends
 * (as the Python node does).
 */
export async function catchUp(node: NodeCore, topic: TopicAddress): Promise<void> {
  // The caller found a stream backed up: a turn first, then the check.
  for (let turn = 0; turn < CATCH_UP_TURNS; turn++) {
    await new Promise((resolve) => setImmediate(resolve));
    if (!backedUp(node, topic)) {
      return;
    }
  }
}

/** Whether a stream on the topic holds BACKED_UP events or more: its writer is behind. */
export function backedUp(node: NodeCore, topic: TopicAddress): boolean {
  for (const stream of node.streams) {
    if (stream.queued >= BACKED_UP && stream.matches(topic.type)) {
      return true;
    }
  }
  return false;
}

export async function* handleSubscribe(node: NodeCore, request: SubscribeRequest, ctx: HandlerContext): AsyncGenerator<StreamItem> {
  node.refuseWhenStopping();
  // At most DEFAULT_MAX_STREAMS_PER_CALLER open streams per caller (agent_service.proto).
  const caller = ctx.values.get(CALLER);
  const held = node.streamsByCaller.get(caller) ?? 0;
  if (held >= DEFAULT_MAX_STREAMS_PER_CALLER) {
    throw new ConnectError(
      `${caller} holds ${held} Subscribe streams on this node already (at most ${DEFAULT_MAX_STREAMS_PER_CALLER} per caller)`,
      Code.ResourceExhausted,
    );
  }
  node.streamsByCaller.set(caller, held + 1);
  try {
    yield* followStream(node, request, ctx);
  } finally {
    const left = (node.streamsByCaller.get(caller) ?? 1) - 1;
    if (left > 0) {
      node.streamsByCaller.set(caller, left);
    } else {
      node.streamsByCaller.delete(caller);
    }
  }
}

async function* followStream(node: NodeCore, request: SubscribeRequest, ctx: HandlerContext): AsyncGenerator<StreamItem> {
  const filters = request.filters.map(filterSpec).filter((f): f is TopicFilterSpec => f !== undefined);
  const stream = new StreamSubscriber(request.subscriberId, filters);
  node.streams.add(stream);
  try {
    yield { kind: { case: "node", value: node.info() } };
    for await (const item of stream.iterate(ctx.signal)) {
      yield item;
    }
  } catch (error) {
    throw error instanceof RaviError ? toConnectError(error) : error;
  } finally {
    node.streams.delete(stream);
  }
}
