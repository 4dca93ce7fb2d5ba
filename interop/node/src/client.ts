// RaviClient: Send, Publish, Subscribe and Describe against one node over gRPC
// (HTTP/2, cleartext or TLS), with deadlines and bearer-token auth.
import { create, type DescMessage, type MessageInitShape, type MessageShape, type Registry } from "@bufbuild/protobuf";
import { Code, createClient, ConnectError, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager, type Http2SessionOptions } from "@connectrpc/connect-node";
import * as net from "node:net";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "@ravi-mesh/contract/grpc/health/v1/health_pb";
import {
  AgentService,
  PublishScope,
  type PublishRequestSchema,
  type SendRequestSchema,
  type SendResponse,
  type SubscribeResponse,
} from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import {
  AgentIdSchema,
  type NodeInfo,
  type NodeInfoSchema,
  type Payload,
  type RouteSchema,
  type TopicFilterSchema,
} from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { randomUUID } from "node:crypto";

import type { PublishResult, SendOptions, SendResult } from "./agent.js";
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_TIMEOUT_MS,
} from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import { decodeAs, encodePayload } from "./codec.js";
import { asRaviError, RaviError } from "./errors.js";
import { checkAgentId, checkTopicId, type AgentAddress, type TopicAddress } from "./ids.js";
import { clientTlsMaterial, connectTls, tlsFailures, type ClientTlsOptions } from "./tls.js";
import { injectActive } from "./tracing.js";

export { PublishScope, ServingStatus };

// The default per-call deadline of clients and nodes, and the default message
// size limit: the contract's shared defaults (proto/ravi/mesh/v1/contract.toml).
export { DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT_MS };

export interface ClientOptions {
  /** host:port of the node. */
  address: string;
  /** Sent as "authorization: Bearer <token>". */
  token?: string | undefined;
  /** The deadline of calls that set none (default 30 s). */
  timeoutMs?: number | undefined;
  /** Client interceptors (for example OpenTelemetry). */
  interceptors?: readonly Interceptor[] | undefined;
  /** The largest message sent or received (default 4 MiB). */
  maxMessageBytes?: number | undefined;
  /** HTTP/2 keep-alive pings and idle timeout. */
  http2?: Http2SessionOptions | undefined;
  /**
   * Dial with TLS (https) instead of cleartext: the CA that signs the node's
   * certificate, an optional client certificate and key (mutual TLS), and the
   * name the certificate must carry when it is not the dialled host.
   */
  tls?: ClientTlsOptions | undefined;
}

/** Options of one raw call. */
export interface CallOptions {
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
  /** Extra gRPC request metadata (for example "traceparent"). */
  headers?: Readonly<Record<string, string>> | undefined;
}

/** Options of a Send made through a client. */
export interface ClientSendOptions extends SendOptions {
  /** The sending agent, when the client sends on an agent's behalf. */
  sender?: AgentAddress | undefined;
  /** The call chain of the envelope. */
  callChain?: readonly AgentAddress[] | undefined;
  /** The route, when forwarding. */
  route?: MessageInitShape<typeof RouteSchema> | undefined;
  /** Extra gRPC request metadata (for example "traceparent"). */
  headers?: Readonly<Record<string, string>> | undefined;
}

/** Options of a Publish made through a client. */
export interface ClientPublishOptions {
  scope?: PublishScope | undefined;
  metadata?: Readonly<Record<string, string>> | undefined;
  messageId?: string | undefined;
  sender?: AgentAddress | undefined;
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
  headers?: Readonly<Record<string, string>> | undefined;
}

/** A filter of a Subscribe request: an exact topic type or a prefix. */
export type TopicFilterSpec = { topicType: string } | { topicTypePrefix: string };

export interface SubscribeOptions {
  subscriberId?: string | undefined;
  signal?: AbortSignal | undefined;
  /** Ends the stream after this long (no deadline when omitted). */
  timeoutMs?: number | undefined;
  headers?: Readonly<Record<string, string>> | undefined;
}

/** The reply of a Send, decoded on demand. */
export class SendReply implements SendResult {
  readonly nodeId: string;
  readonly payload: Payload | undefined;
  private readonly registry: Registry | undefined;

  constructor(nodeId: string, payload: Payload | undefined, registry?: Registry) {
    this.nodeId = nodeId;
    this.payload = payload;
    this.registry = registry;
  }

  decode<O extends DescMessage>(schema: O): MessageShape<O> {
    return decodeAs(schema, this.payload, this.registry);
  }
}

/** Converts a TopicFilterSpec into the protobuf init shape. */
export function topicFilter(spec: TopicFilterSpec): MessageInitShape<typeof TopicFilterSchema> {
  return "topicType" in spec
    ? { kind: { case: "topicType", value: spec.topicType } }
    : { kind: { case: "topicTypePrefix", value: spec.topicTypePrefix } };
}

function authInterceptor(token: string): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/**
 * The envelope metadata and gRPC metadata of a call, with the active span's W3C
 * trace context added where the caller set no traceparent.
 */
function withActiveTrace(
  metadata: Readonly<Record<string, string>> | undefined,
  headers: Readonly<Record<string, string>> | undefined,
): { metadata: Record<string, string>; headers: Record<string, string> | undefined } {
  const outMetadata = { ...(metadata ?? {}) };
  const outHeaders = { ...(headers ?? {}) };
  injectActive(outMetadata);
  injectActive(outHeaders);
  return { metadata: outMetadata, headers: Object.keys(outHeaders).length === 0 ? undefined : outHeaders };
}

/**
 * RaviClient calls one node. Create it once and `close()` it when done. A
 * Send or Publish made while a span is active carries its W3C trace context
 * (in the envelope metadata and the gRPC metadata) unless the caller set one.
 */
export class RaviClient {
  readonly address: string;
  readonly agentService: Client<typeof AgentService>;
  readonly health: Client<typeof Health>;
  private readonly sessions: Http2SessionManager;
  private readonly timeoutMs: number;

  constructor(options: ClientOptions) {
    this.address = options.address;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    // Read (and checked) once: a bad file fails here, not on the first call.
    const tls = options.tls === undefined ? undefined : clientTlsMaterial(options.tls);
    const baseUrl = `${tls === undefined ? "http" : "https"}://${options.address}`;
    // Nagle's algorithm would hold small gRPC frames back for an ACK: dial with
    // it off, as gRPC clients in other languages do. (The session manager owns
    // the connection, so TLS is set up here rather than in the transport's nodeOptions.)
    this.sessions = new Http2SessionManager(baseUrl, options.http2 ?? {}, {
      createConnection: (authority: URL) => {
        const host = authority.hostname.replace(/^\[(.*)\]$/, "$1");
        const port = Number(authority.port || (tls === undefined ? 80 : 443));
        return tls === undefined ? net.connect({ host, port, noDelay: true }) : connectTls(tls, host, port);
      },
    });
    const interceptors = [...(options.interceptors ?? [])];
    if (options.token !== undefined) {
      interceptors.push(authInterceptor(options.token));
    }
    if (tls !== undefined) {
      interceptors.push(tlsFailures());
    }
    const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    const transport = createGrpcTransport({
      baseUrl,
      sessionManager: this.sessions,
      interceptors,
      readMaxBytes: maxBytes,
      writeMaxBytes: maxBytes,
    });
    this.agentService = createClient(AgentService, transport);
    this.health = createClient(Health, transport);
  }

  private callOptions(options: CallOptions | undefined, stream = false): {
    timeoutMs?: number;
    signal?: AbortSignal;
    headers?: Record<string, string>;
  } {
    const out: { timeoutMs?: number; signal?: AbortSignal; headers?: Record<string, string> } = {};
    const timeoutMs = options?.timeoutMs ?? (stream ? undefined : this.timeoutMs);
    if (timeoutMs !== undefined) {
      // connect treats 0 as "no deadline": keep an already-passed deadline passed.
      out.timeoutMs = Math.max(1, Math.ceil(timeoutMs));
    }
    if (options?.signal !== undefined) {
      out.signal = options.signal;
    }
    if (options?.headers !== undefined) {
      out.headers = { ...options.headers };
    }
    return out;
  }

  /** Calls Send with a raw request; failures are RaviErrors. */
  async sendRequest(request: MessageInitShape<typeof SendRequestSchema>, options?: CallOptions): Promise<SendResponse> {
    try {
      return await this.agentService.send(request, this.callOptions(options));
    } catch (error) {
      throw asRaviError(error);
    }
  }

  /** Sends an already-encoded payload to an agent. */
  async sendPayload(to: AgentAddress, payload: Payload, options: ClientSendOptions = {}): Promise<SendReply> {
    const { metadata, headers } = withActiveTrace(options.metadata, options.headers);
    const response = await this.sendRequest(
      {
        recipient: { type: to.type, key: to.key },
        envelope: {
          messageId: options.messageId ?? randomUUID(),
          ...(options.sender === undefined ? {} : { sender: create(AgentIdSchema, options.sender) }),
          payload,
          metadata,
          idempotencyKey: options.idempotencyKey ?? "",
          callChain: (options.callChain ?? []).map((a) => create(AgentIdSchema, a)),
        },
        ...(options.route === undefined ? {} : { route: options.route }),
      },
      { ...options, headers },
    );
    return new SendReply(response.nodeId, response.result);
  }

  /** Sends a protobuf message to an agent (encoded as binary protobuf). */
  send<I extends DescMessage>(
    to: AgentAddress,
    schema: I,
    message: MessageInitShape<I>,
    options: ClientSendOptions = {},
  ): Promise<SendReply> {
    checkAgentId(to);
    return this.sendPayload(to, encodePayload(schema, message), options);
  }

  /** Sends and decodes the reply as `reply`. */
  async call<I extends DescMessage, O extends DescMessage>(
    to: AgentAddress,
    schema: I,
    message: MessageInitShape<I>,
    reply: O,
    options: ClientSendOptions = {},
  ): Promise<MessageShape<O>> {
    return (await this.send(to, schema, message, options)).decode(reply);
  }

  /** Publishes an already-encoded payload. */
  async publishPayload(topic: TopicAddress, payload: Payload, options: ClientPublishOptions = {}): Promise<PublishResult> {
    const { metadata, headers } = withActiveTrace(options.metadata, options.headers);
    const request: MessageInitShape<typeof PublishRequestSchema> = {
      topic: { type: topic.type, source: topic.source },
      envelope: {
        messageId: options.messageId ?? randomUUID(),
        ...(options.sender === undefined ? {} : { sender: create(AgentIdSchema, options.sender) }),
        payload,
        metadata,
      },
      scope: options.scope ?? PublishScope.MESH,
    };
    try {
      const response = await this.agentService.publish(request, this.callOptions({ ...options, headers }));
      return { localDeliveries: response.localDeliveries, streamDeliveries: response.streamDeliveries };
    } catch (error) {
      throw asRaviError(error);
    }
  }

  /** Publishes a protobuf message (encoded as binary protobuf). */
  publish<I extends DescMessage>(
    topic: TopicAddress,
    schema: I,
    message: MessageInitShape<I>,
    options: ClientPublishOptions = {},
  ): Promise<PublishResult> {
    checkTopicId(topic);
    return this.publishPayload(topic, encodePayload(schema, message), options);
  }

  /**
   * Opens a Subscribe stream. The first message is the node's description;
   * iteration ends when the node ends the stream, the signal aborts or the
   * timeout passes (a passed timeout or an abort ends it without error).
   */
  async *subscribe(filters: readonly TopicFilterSpec[], options: SubscribeOptions = {}): AsyncGenerator<SubscribeResponse> {
    const controller = new AbortController();
    const signals = [controller.signal, ...(options.signal === undefined ? [] : [options.signal])];
    const timer =
      options.timeoutMs === undefined ? undefined : setTimeout(() => controller.abort(), Math.max(0, options.timeoutMs));
    try {
      const stream = this.agentService.subscribe(
        { filters: filters.map(topicFilter), subscriberId: options.subscriberId ?? "" },
        this.callOptions({ signal: AbortSignal.any(signals), headers: options.headers }, true),
      );
      for await (const message of stream) {
        yield message;
      }
    } catch (error) {
      if (controller.signal.aborted || options.signal?.aborted === true) {
        return;
      }
      throw asRaviError(error);
    } finally {
      clearTimeout(timer);
      controller.abort();
    }
  }

  /** Calls Describe, optionally describing the caller. */
  async describe(caller?: MessageInitShape<typeof NodeInfoSchema>, options?: CallOptions): Promise<NodeInfo> {
    try {
      const response = await this.agentService.describe(caller === undefined ? {} : { caller }, this.callOptions(options));
      if (response.node === undefined) {
        throw new RaviError(Code.Unknown, "Describe returned no node");
      }
      return response.node;
    } catch (error) {
      throw asRaviError(error);
    }
  }

  /** Calls grpc.health.v1.Health/Check. */
  async checkHealth(service = "", options?: CallOptions): Promise<ServingStatus> {
    try {
      return (await this.health.check({ service }, this.callOptions(options))).status;
    } catch (error) {
      throw asRaviError(error);
    }
  }

  /** Closes the HTTP/2 connection. */
  close(): void {
    this.sessions.abort();
  }
}

/** True when an error is a ConnectError or RaviError with this code. */
export function hasCode(error: unknown, code: number): boolean {
  return (error instanceof RaviError || error instanceof ConnectError) && error.code === code;
}
