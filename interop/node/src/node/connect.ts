// Connect: Send calls multiplexed on one stream, answered in completion order
// (Go: connect.go).
import { type MessageInitShape } from "@bufbuild/protobuf";
import { Code, type HandlerContext } from "@connectrpc/connect";
import {
  type ConnectRequest,
  type CallOutcomeSchema,
  type ConnectResponseSchema,
  type SendRequest,
} from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { asRaviError, errors } from "../errors.js";
import { AsyncQueue } from "../util.js";
import { NodeCore, traceOf } from "./core.js";
import { dispatchSend } from "./send.js";

/**
 * Connect: Send calls multiplexed on one stream. Each call frame of a
 * ConnectRequest is handled exactly as a unary Send; its outcome goes back
 * with the same call id, in completion order. A cancel frame cancels the call and suppresses its
 * response. The stream ends once the caller's side ended and every call
 * finished.
 */
export async function* handleConnect(
  node: NodeCore,
  requests: AsyncIterable<ConnectRequest>,
  ctx: HandlerContext,
): AsyncGenerator<MessageInitShape<typeof ConnectResponseSchema>> {
  node.refuseWhenStopping();
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
    node.inflight += 1;
    const call = dispatchSend(node, request, {
      deadline: Date.now() + (timeoutMillis > 0 ? timeoutMillis : node.defaultTimeoutMs),
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
      node.inflight -= 1;
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
