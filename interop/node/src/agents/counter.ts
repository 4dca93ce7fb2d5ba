// The counter agent of proto/ravi/conformance/v1/conformance.proto: its state,
// the ids of the increments it applied, goes to the node's state store, so a
// test can tell a lost increment from a doubled one across passivation, kills
// and restarts, as with the Python and Go nodes.
import { CountSchema, CountedSchema, ReadCountSchema } from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";

import { defineAgent, type AgentDefinition } from "../agent.js";
import { type RaviNode } from "../node.js";

/** The default agent type of the counter agent. */
export const COUNTER_TYPE = "counter";

/** The state of one counter agent: {"ids": [...]}, as every language saves it. */
export interface CounterState {
  ids: string[];
}

/** The counter agent; `resident` keeps its instances active however idle. */
export function counterAgent(options: { resident?: boolean } = {}): AgentDefinition<CounterState> {
  return defineAgent<CounterState>({
    resident: options.resident ?? false,
    state: () => ({ ids: [] }),
    save: (state) => ({ ids: state.ids }),
    load: (saved) => ({ ids: Array.isArray(saved["ids"]) ? saved["ids"].map(String) : [] }),
  })
    .on(CountSchema, CountedSchema, (message, ctx) => {
      ctx.state.ids.push(message.id);
      return { total: BigInt(ctx.state.ids.length), nodeId: ctx.nodeId };
    })
    .on(ReadCountSchema, CountedSchema, (_message, ctx) => ({
      total: BigInt(ctx.state.ids.length),
      nodeId: ctx.nodeId,
      ids: ctx.state.ids,
    }));
}

/** Registers the counter agent under `type`. */
export function registerCounter(node: RaviNode, type: string = COUNTER_TYPE): void {
  node.register(type, counterAgent());
}
