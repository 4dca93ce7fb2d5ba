// Multiplexer: a node's Sends to one peer, multiplexed on one Multiplex stream
// (docs/protocol.md, "Multiplex"), as Python and Go nodes send them. The
// serving side is node/multiplex.ts.
import { type MessageInitShape } from "@bufbuild/protobuf";
import { Code, type Client } from "@connectrpc/connect";
import {
  type AgentService,
  type CallFrameSchema,
  type CallOutcome,
  type MultiplexRequestSchema,
  type MultiplexResponse,
  type SendRequestSchema,
  type SendResponse,
} from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";

import { asRaviError, isReasonName, RaviError, wireCode } from "./errors.js";

/** The longest timeout a frame carries (uint32 milliseconds, about 49 days). */
const MAX_FRAME_TIMEOUT_MS = 4_294_967_295;

type Frame = MessageInitShape<typeof CallFrameSchema>;

/** What a stream's calls fail with when the peer does not serve Multiplex. */
const USE_UNARY = Symbol("use unary Send");

interface Waiter {
  resolve(outcome: CallOutcome): void;
  reject(reason: unknown): void;
}

/**
 * Multiplexer sends Send calls to one peer over one Multiplex stream: each call
 * is a frame with its own call id and timeout, the frames queued together go
 * out as one message, and a call whose signal aborts sends a cancel frame so
 * the peer cancels its handler. The stream opens on first use and again after
 * it breaks; calls in flight when it breaks fail UNAVAILABLE. A peer that
 * answers the stream with UNIMPLEMENTED (a contract 1.1.0 member) is called
 * with unary Send from then on.
 */
export class Multiplexer {
  private readonly service: Client<typeof AgentService>;
  private stream: MultiplexStream | undefined;
  private nextId = 0n;
  private unary = false;
  /** Calls in flight, on the stream or unary. */
  private calls = 0;
  private idle: (() => void)[] = [];

  constructor(service: Client<typeof AgentService>) {
    this.service = service;
  }

  /** Resolves once no call is in flight, `timeoutMs` at most. */
  drained(timeoutMs: number): Promise<void> {
    if (this.calls === 0) {
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.idle.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /**
   * Sends `request` with `timeoutMs` left; `signal` (which must abort when the
   * deadline passes) cancels the call. Failures are RaviErrors.
   */
  async send(
    request: MessageInitShape<typeof SendRequestSchema>,
    timeoutMs: number,
    signal: AbortSignal,
    headers: Record<string, string> | undefined,
  ): Promise<SendResponse> {
    this.calls += 1;
    try {
      if (!this.unary) {
        try {
          return await this.sendFrame(request, timeoutMs, signal);
        } catch (error) {
          if (error !== USE_UNARY) {
            throw error;
          }
        }
      }
      try {
        return await this.service.send(request, {
          timeoutMs: Math.max(1, Math.ceil(timeoutMs)),
          signal,
          ...(headers === undefined ? {} : { headers }),
        });
      } catch (error) {
        throw signal.aborted ? signal.reason : asRaviError(error);
      }
    } finally {
      this.calls -= 1;
      if (this.calls === 0 && this.idle.length > 0) {
        const idle = this.idle;
        this.idle = [];
        idle.forEach((wake) => wake());
      }
    }
  }

  private sendFrame(request: MessageInitShape<typeof SendRequestSchema>, timeoutMs: number, signal: AbortSignal): Promise<SendResponse> {
    if (signal.aborted) {
      return Promise.reject(signal.reason);
    }
    const stream = (this.stream ??= new MultiplexStream(this.service, (ended, unsupported) => {
      if (this.stream === ended) {
        this.stream = undefined;
      }
      this.unary ||= unsupported;
    }));
    this.nextId += 1n;
    const callId = this.nextId;
    return new Promise<SendResponse>((resolve, reject) => {
      const onAbort = (): void => {
        stream.cancel(callId);
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      stream.start(
        {
          callId,
          kind: { case: "send", value: request },
          timeoutMillis: Math.min(Math.max(1, Math.ceil(timeoutMs)), MAX_FRAME_TIMEOUT_MS),
        },
        {
          resolve: (outcome) => {
            signal.removeEventListener("abort", onAbort);
            if (outcome.outcome.case === "result") {
              resolve(outcome.outcome.value);
              return;
            }
            const failure = outcome.outcome.value;
            const reason = failure?.reason ?? "";
            reject(
              new RaviError(wireCode(failure?.code ?? Code.Unknown), failure?.message ?? "the call ended without an outcome", {
                reason: isReasonName(reason) ? reason : undefined,
                metadata: failure?.metadata ?? {},
                remote: true,
              }),
            );
          },
          reject: (reason) => {
            signal.removeEventListener("abort", onAbort);
            reject(reason);
          },
        },
      );
    });
  }

  /** Ends the stream; its calls fail UNAVAILABLE. */
  close(): void {
    this.stream?.end(new RaviError(Code.Unavailable, "the connection to the peer was closed"));
  }
}

/** One Multiplex stream and the calls in flight on it. */
class MultiplexStream {
  private readonly pending = new Map<bigint, Waiter>();
  private frames: Frame[] = [];
  private wake: (() => void) | undefined;
  private ended = false;
  private readonly controller = new AbortController();
  private readonly onEnd: (stream: MultiplexStream, unsupported: boolean) => void;

  constructor(service: Client<typeof AgentService>, onEnd: (stream: MultiplexStream, unsupported: boolean) => void) {
    this.onEnd = onEnd;
    const responses = service.multiplex(this.requests(), { signal: this.controller.signal });
    void this.read(responses);
  }

  start(frame: Frame, waiter: Waiter): void {
    if (this.ended) {
      waiter.reject(new RaviError(Code.Unavailable, "the Multiplex stream to the peer ended"));
      return;
    }
    this.pending.set(frame.callId as bigint, waiter);
    this.push(frame);
  }

  cancel(callId: bigint): void {
    if (this.pending.delete(callId) && !this.ended) {
      this.push({ callId, kind: { case: "cancel", value: {} } });
    }
  }

  private push(frame: Frame): void {
    this.frames.push(frame);
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** The stream's requests: every frame queued since the last write, as one message. */
  private async *requests(): AsyncGenerator<MessageInitShape<typeof MultiplexRequestSchema>> {
    while (!this.ended) {
      if (this.frames.length === 0) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        continue;
      }
      const calls = this.frames;
      this.frames = [];
      yield { calls };
    }
  }

  private async read(responses: AsyncIterable<MultiplexResponse>): Promise<void> {
    let failure: unknown = new RaviError(Code.Unavailable, "the peer ended the Multiplex stream");
    try {
      for await (const response of responses) {
        for (const outcome of response.calls) {
          const waiter = this.pending.get(outcome.callId);
          if (waiter !== undefined) {
            this.pending.delete(outcome.callId);
            waiter.resolve(outcome);
          }
        }
      }
    } catch (error) {
      const cause = asRaviError(error);
      failure =
        cause.code === Code.Unimplemented && !this.ended
          ? USE_UNARY
          : new RaviError(Code.Unavailable, `the Multiplex stream to the peer broke: ${cause.message}`, { cause });
    }
    this.end(failure);
  }

  end(failure: unknown): void {
    if (this.ended) {
      return;
    }
    this.ended = true;
    this.onEnd(this, failure === USE_UNARY);
    this.controller.abort();
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.frames = [];
    for (const waiter of pending) {
      waiter.reject(failure);
    }
  }
}
