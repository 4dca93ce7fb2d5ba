// @ravi-mesh/node: a ravi mesh node and client for Node.js. The demo's formatter
// and the conformance agent are agents built on it, not part of it: they are
// exported from "@ravi-mesh/node/agents".
export {
  AgentDefinition,
  defineAgent,
  defineStatelessAgent,
  type AgentContext,
  type AgentDefinitionOptions,
  type HandlerEntry,
  type PublishOptions,
  type PublishResult,
  type SendOptions,
  type SendResult,
  type StatelessOptions,
} from "./agent.js";
export {
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_TIMEOUT_MS,
  PublishScope,
  RaviClient,
  SendReply,
  ServingStatus,
  topicFilter,
  type CallOptions,
  type ClientOptions,
  type ClientPublishOptions,
  type ClientSendOptions,
  type SubscribeOptions,
  type TopicFilterSpec,
} from "./client.js";
export {
  CONTENT_TYPE_JSON,
  CONTENT_TYPE_PROTOBUF,
  TypeRegistry,
  decodeAs,
  encodeJsonPayload,
  encodePayload,
} from "./codec.js";
export {
  Code,
  ERROR_DOMAIN,
  RaviError,
  asRaviError,
  codeName,
  fromConnectError,
  isReasonName,
  toConnectError,
  type RaviErrorOptions,
  type ReasonName,
} from "./errors.js";
export {
  checkAgentId,
  checkTopicId,
  formatAgentId,
  parseAgentId,
  parseTopicId,
  type AgentAddress,
  type TopicAddress,
} from "./ids.js";
export {
  CONTRACT_VERSION,
  HOP_LIMIT,
  LANGUAGE,
  RaviNode,
  stderrLogger,
  type NodeOptions,
  type SubscriptionInfo,
} from "./node.js";
export { BACKOFF_INITIAL_MS, BACKOFF_MAX_MS, type Logger } from "./peers.js";
export { rendezvousPick, rendezvousScore } from "./rendezvous.js";
export { TRACER_NAME, extractContext, injectContext } from "./tracing.js";
export { type ClientTlsOptions, type ServerTlsOptions } from "./tls.js";
export {
  OTLP_ENDPOINT_VARIABLES,
  setupTracing,
  tracingConfigured,
  type InstalledTracing,
  type TracingSetupOptions,
} from "./telemetry.js";
