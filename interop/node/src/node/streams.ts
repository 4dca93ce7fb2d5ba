// Subscribe: the streams this node serves and the events queued on them
// (Go: publish.go).
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, type HandlerContext } from "@connectrpc/connect";
import { EventSchema, type SubscribeRequest, type SubscribeResponseSchema } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { TopicIdSchema, type Envelope, type TopicFilter } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { type TopicFilterSpec } from "../client.js";
import { RaviError, toConnectError } from "../errors.js";
import { type TopicAddress } from "../ids.js";
import { NodeCore } from "./core.js";

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

export async function* handleSubscribe(node: NodeCore, request: SubscribeRequest, ctx: HandlerContext): AsyncGenerator<StreamItem> {
  node.refuseWhenStopping();
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
