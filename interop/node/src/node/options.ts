// The options of a node, its logger, and the constants it reports.
import { type DescFile, type DescMessage } from "@bufbuild/protobuf";
import { type Interceptor } from "@connectrpc/connect";
import { type TracerProvider } from "@opentelemetry/api";
import { AgentService } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { type TopicFilterSpec } from "../client.js";
import { type Logger } from "../peers.js";
import { type ClientTlsOptions, type ServerTlsOptions } from "../tls.js";


/** NodeInfo.language of this implementation. */
export const LANGUAGE = "node";

export const AGENT_SERVICE_NAME = AgentService.typeName;

export interface NodeOptions {
  /** The node's id, unique in the mesh. */
  nodeId: string;
  /** The interface to listen on (default 127.0.0.1: loopback only). */
  host?: string | undefined;
  /** The port (default 0: any free port). */
  port?: number | undefined;
  /** The host:port peers should dial (default host:port as bound). */
  advertiseAddress?: string | undefined;
  /** Peers to connect to: name -> host:port. */
  peers?: Readonly<Record<string, string>> | undefined;
  /** When set, every call must carry "authorization: Bearer <token>"; also sent to peers. */
  token?: string | undefined;
  /** Lets health checks through without a token. */
  healthWithoutAuth?: boolean | undefined;
  /**
   * Serve TLS with this certificate and key (`--tls-cert`, `--tls-key`);
   * with `clientCaFile` (`--tls-client-ca`) every client must present a
   * certificate signed by that CA (mutual TLS). AgentService, health and
   * reflection are all served on the TLS listener. Cleartext when unset.
   */
  tls?: ServerTlsOptions | undefined;
  /**
   * Dial peers with TLS (`--peer-tls-ca`, `--peer-tls-cert`, `--peer-tls-key`,
   * `--peer-tls-server-name`): the CA of the peers' certificates (Node's
   * built-in roots when unset), a client certificate for peers requiring
   * mutual TLS, and the name peer certificates must carry when it is not the
   * dialled host. Cleartext when unset.
   */
  peerTls?: ClientTlsOptions | undefined;
  /** The largest request or response (default 4 MiB); larger is RESOURCE_EXHAUSTED. */
  maxMessageBytes?: number | undefined;
  /** The deadline of calls that arrive without one (default 60 s). */
  defaultTimeoutMs?: number | undefined;
  /** The deadline of handlers that receive a published event (default 60 s). */
  eventTimeoutMs?: number | undefined;
  /** Messages one agent's mailbox holds before MAILBOX_FULL (default 10,000). */
  mailboxCapacity?: number | undefined;
  /** Events one Subscribe stream may have queued before it is ended (default 10000). */
  streamQueueCapacity?: number | undefined;
  /** How long stop() lets calls in flight finish (default 5 s). */
  shutdownGraceMs?: number | undefined;
  /** How long a mailbox waits for a cancelled handler that ignores its signal (default 1 s). */
  abortGraceMs?: number | undefined;
  /** Server interceptors, outermost first (for example OpenTelemetry). */
  interceptors?: readonly Interceptor[] | undefined;
  /** Interceptors of the node's calls to peers. */
  clientInterceptors?: readonly Interceptor[] | undefined;
  /**
   * The OpenTelemetry TracerProvider of the node's spans (docs/operations.md,
   * "Tracing"); the global one by default, a no-op unless one is registered.
   * Handler code sees its handle or deliver span as the active context when a
   * context manager is registered (NodeTracerProvider.register() installs one);
   * sends and publishes made through the handler's context are its children either way.
   */
  tracerProvider?: TracerProvider | undefined;
  /** Extra message types the node can decode (files or messages). */
  types?: readonly (DescFile | DescMessage)[] | undefined;
  /** Where log lines go (default: warnings and errors to stderr). */
  logger?: Logger | undefined;
}

/** A subscription: events on matching topics go to agent (agentType, topic.source). */
export interface SubscriptionInfo {
  readonly id: string;
  readonly agentType: string;
  readonly filter: TopicFilterSpec;
}

/** The default logger: warnings and errors to stderr, prefixed with the node id. */
export function stderrLogger(nodeId: string, verbose = false): Logger {
  const line = (level: string, message: string): void => {
    process.stderr.write(`ravi-node ${nodeId} ${level}: ${message}\n`);
  };
  return {
    debug: (m) => verbose && line("debug", m),
    info: (m) => verbose && line("info", m),
    warn: (m) => line("warn", m),
    error: (m) => line("error", m),
  };
}
