// @ravi-mesh/node/agents: agents built on the library, for the demo and for the
// conformance suite every language runs (proto/ravi/conformance/v1).
export { formatterAgent, toMarkdown } from "./formatter.js";
export {
  CONFORMANCE_TOPIC,
  CONFORMANCE_TYPE,
  conformanceAgent,
  registerConformance,
  type ConformanceState,
} from "./conformance.js";
