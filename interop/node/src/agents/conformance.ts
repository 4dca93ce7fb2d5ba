// The conformance agent of proto/ravi/conformance/v1/conformance.proto.
import { create } from "@bufbuild/protobuf";
import {
  EchoSchema,
  EchoedSchema,
  FailSchema,
  ForwardSchema,
  ObservedSchema,
  ReportSchema,
  SleepSchema,
  SleptSchema,
  file_ravi_conformance_v1_conformance,
} from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";
import { AgentIdSchema } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";

import { defineAgent, type AgentDefinition } from "../agent.js";
import { Code, RaviError } from "../errors.js";
import { LANGUAGE, type RaviNode } from "../node.js";
import { sleep } from "../util.js";

/** The default agent type of the conformance agent. */
export const CONFORMANCE_TYPE = "conformance";
/** The topic type conformance agents subscribe to. */
export const CONFORMANCE_TOPIC = "conformance.events";
/** The conformance messages' file (so Unhandled is a known type). */
export const conformanceFile = file_ravi_conformance_v1_conformance;

/** What one conformance agent instance observed. */
export interface ConformanceState {
  /** Texts of the Echo messages received through the subscription, in order. */
  readonly events: string[];
  /** Tags of the Sleep calls whose handlers were cancelled. */
  readonly cancelled: string[];
}

/**
 * The conformance agent: Echo -> Echoed, Fail, Sleep -> Slept (cancellable),
 * Forward -> the target's Echoed, Report -> Observed; no handler for
 * Unhandled. Echo messages delivered through a subscription are remembered.
 */
export function conformanceAgent(): AgentDefinition<ConformanceState> {
  return defineAgent<ConformanceState>({ state: () => ({ events: [], cancelled: [] }) })
    .on(EchoSchema, EchoedSchema, (echo, ctx) => {
      if (ctx.topic !== undefined) {
        ctx.state.events.push(echo.text);
        return undefined;
      }
      return {
        text: echo.text,
        agent: create(AgentIdSchema, ctx.id),
        nodeId: ctx.nodeId,
        language: LANGUAGE,
        ...(ctx.sender === undefined ? {} : { sender: create(AgentIdSchema, ctx.sender) }),
        metadata: { ...ctx.metadata },
        messageId: ctx.messageId,
      };
    })
    .on(FailSchema, (fail) => {
      if (fail.code === 0) {
        throw new Error(fail.message);
      }
      // Any code, in range or not: the node maps what a status cannot carry to UNKNOWN.
      throw new RaviError(fail.code as Code, fail.message);
    })
    .on(SleepSchema, SleptSchema, async (request, ctx) => {
      try {
        await sleep(request.millis, ctx.signal);
      } catch (error) {
        ctx.state.cancelled.push(request.tag);
        throw error;
      }
      return { tag: request.tag };
    })
    .on(ForwardSchema, EchoedSchema, async (forward, ctx) => {
      if (forward.target === undefined) {
        throw new RaviError(Code.InvalidArgument, "Forward.target is missing", { reason: "BAD_ID" });
      }
      return ctx.call(forward.target, EchoSchema, { text: forward.text }, EchoedSchema);
    })
    .on(ReportSchema, ObservedSchema, (_report, ctx) => ({
      events: [...ctx.state.events],
      cancelled: [...ctx.state.cancelled],
    }));
}

/** Registers the conformance agent on a node under `type` and subscribes it to "conformance.events". */
export function registerConformance(node: RaviNode, type: string = CONFORMANCE_TYPE): void {
  node.registry.add(conformanceFile);
  node.register(type, conformanceAgent());
  node.subscribe(type, { topicType: CONFORMANCE_TOPIC });
}
