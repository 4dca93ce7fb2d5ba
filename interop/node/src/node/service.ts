// The node's gRPC server: AgentService, health and reflection on one listener,
// tokens, graceful stop (Go: node.go, service.go).
import { type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { file_google_rpc_error_details } from "@ravi-mesh/contract/google/rpc/error_details_pb";
import { file_google_rpc_status } from "@ravi-mesh/contract/google/rpc/status_pb";
import { Health } from "@ravi-mesh/contract/grpc/health/v1/health_pb";
import * as reflectionV1Pb from "@ravi-mesh/contract/grpc/reflection/v1/reflection_pb";
import * as reflectionV1alphaPb from "@ravi-mesh/contract/grpc/reflection/v1alpha/reflection_pb";
import { AgentService } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { file_ravi_mesh_v1_errors } from "@ravi-mesh/contract/ravi/mesh/v1/errors_pb";
import { createHash, timingSafeEqual } from "node:crypto";
import * as http2 from "node:http2";
import type { Socket } from "node:net";
import type { AddressInfo } from "node:net";
import { annotated, asRaviError, RaviError, toConnectError } from "../errors.js";
import { healthService, ServingStatus } from "../health.js";
import { ReflectionIndex, reflectionV1, reflectionV1alpha } from "../reflection.js";
import { rpcServerInterceptor } from "../tracing.js";
import { MAX_TIMER_MS, sleep } from "../util.js";
import { handleMultiplex } from "./multiplex.js";
import { CALLER, NodeCore, traceOf } from "./core.js";
import { AGENT_SERVICE_NAME } from "./options.js";
import { handlePublish } from "./publish.js";
import { discoverPeers, dnsTarget, type DnsGroup } from "./discovery.js";
import { addPeer, learn } from "./routing.js";
import { dispatchSend } from "./send.js";
import { handleLoadState, handleResolvePromise, handleSaveState } from "./state.js";
import { handleSubscribe } from "./streams.js";

function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

// --- lifecycle --------------------------------------------------------------
/** Starts serving and connects to the peers; resolves with the address once listening. */
export async function start(node: NodeCore): Promise<string> {
  if (node.state !== "new") {
    throw new RaviError(Code.FailedPrecondition, `node ${node.nodeId} was started already`);
  }
  // The store knows the node by its id; it opens before anything is served.
  await node.lifecycle.start(node.nodeId);
  // Reflection describes every type a client needs (agent_service.proto): the
  // handled message types, ErrorReason, and google.rpc.Status / ErrorInfo, so
  // grpcurl prints error details decoded.
  const index = new ReflectionIndex(
    () => services(node),
    () => [...node.types.allFiles(), file_ravi_mesh_v1_errors, file_google_rpc_status, file_google_rpc_error_details],
  );
  const handler = connectNodeAdapter({
    routes: (router) => {
      router.service(AgentService, agentService(node));
      router.service(Health, healthService(node.health));
      router.service(reflectionV1Pb.ServerReflection, reflectionV1(index));
      router.service(reflectionV1alphaPb.ServerReflection, reflectionV1alpha(index));
    },
    grpc: true,
    grpcWeb: false,
    connect: false,
    readMaxBytes: node.maxMessageBytes,
    writeMaxBytes: node.maxMessageBytes,
    shutdownSignal: node.shutdownController.signal,
    contextValues: (req) =>
      createContextValues().set(CALLER, `${req.socket.remoteAddress ?? "unknown"}:${req.socket.remotePort ?? 0}`),
    interceptors: [...(node.options.interceptors ?? []), ...serverInterceptors(node)],
  });
  const guarded = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse): void => {
    if (guardCredentials(node, req, res) && guardDeadline(req, res)) {
      handler(req, res);
    }
  };
  const server =
    node.serverTls === undefined ? http2.createServer({}, guarded) : http2.createSecureServer(node.serverTls, guarded);
  // Nagle's algorithm holds small frames back for an ACK; gRPC servers in
  // other languages turn it off, and so do we.
  server.on("connection", (socket: Socket) => socket.setNoDelay(true));
  // A refused handshake (no client certificate, a cleartext client) only
  // closes that connection.
  server.on("tlsClientError", (error: Error) => node.logger.info(`refused a TLS connection: ${error.message}`));
  server.on("session", (session) => {
    node.sessions.add(session);
    session.on("close", () => node.sessions.delete(session));
  });
  node.server = server;
  const host = node.options.host ?? "127.0.0.1";
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(node.options.port ?? 0, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  const shownHost = bound.family === "IPv6" ? `[${bound.address}]` : bound.address;
  node.advertised = node.options.advertiseAddress ?? `${shownHost}:${bound.port}`;
  node.state = "serving";
  node.changed(false);
  node.health.set("", ServingStatus.SERVING);
  node.health.set(AGENT_SERVICE_NAME, ServingStatus.SERVING);
  const groups: DnsGroup[] = [];
  for (const [name, address] of Object.entries(node.options.peers ?? {})) {
    const target = dnsTarget(address);
    if (target === undefined) {
      addPeer(node, name, address);
    } else {
      groups.push({ name, ...target, members: new Map() });
    }
  }
  if (groups.length > 0) {
    node.discovery = discoverPeers(node, groups, node.discoveryController.signal);
  }
  return node.advertised;
}

export function services(node: NodeCore): DescService[] {
  return [AgentService, Health, reflectionV1Pb.ServerReflection, reflectionV1alphaPb.ServerReflection];
}

export async function shutdown(node: NodeCore, graceMs: number): Promise<void> {
  const wasServing = node.state === "serving";
  node.state = "stopping";
  node.health.set("", ServingStatus.NOT_SERVING);
  node.health.set(AGENT_SERVICE_NAME, ServingStatus.NOT_SERVING);
  node.health.closeWatchers();
  for (const stream of node.streams) {
    stream.end();
  }
  node.discoveryController.abort();
  await node.discovery;
  await Promise.all(node.links.map((l) => l.stop()));
  node.routes.clear();
  node.events.emit("routes");
  const drainUntil = Date.now() + graceMs;
  while (Date.now() < drainUntil && (node.inflight > 0 || ![...node.registrations.values()].every((r) => r.idle()))) {
    await sleep(10);
  }
  node.shutdownController.abort(new ConnectError("the node is shutting down", Code.Unavailable));
  const server = node.server;
  if (wasServing && server !== undefined) {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const session of node.sessions) {
      session.close();
    }
    // Sessions that do not close by themselves (a client holding a stream
    // open) are destroyed after a short wait.
    const force = setTimeout(() => {
      for (const session of node.sessions) {
        session.destroy();
      }
    }, Math.min(1_000, Math.max(100, graceMs)));
    await closed;
    clearTimeout(force);
  }
  // A stop saves every agent: the calls had their grace period.
  await node.lifecycle.stop();
  node.state = "stopped";
}

// --- server-side plumbing ---------------------------------------------------
/** How close to its deadline a call is answered DEADLINE_EXCEEDED at once, as on Go. */
const DEADLINE_MARGIN_MS = 5;
const TIMEOUT_UNITS_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1_000, m: 1, u: 1e-3, n: 1e-6 };

/** Answers a call with a status of its own, as a trailers-only response. */
function answer(res: http2.Http2ServerResponse, code: Code, message: string): void {
  res.stream.respond(
    { ":status": 200, "content-type": "application/grpc", "grpc-status": String(code), "grpc-message": encodeURIComponent(message) },
    { endStream: true },
  );
}

/**
 * Refuses a call with more than one authorization entry when the node needs a
 * token (agent_service.proto). Node's http2 keeps only the first entry of a
 * repeated authorization header, so the interceptor cannot see the second.
 */
function guardCredentials(node: NodeCore, req: http2.Http2ServerRequest, res: http2.Http2ServerResponse): boolean {
  if (node.options.token === undefined) {
    return true;
  }
  if ((node.options.healthWithoutAuth ?? false) && req.url.startsWith(`/${Health.typeName}/`)) {
    return true;
  }
  let entries = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]?.toLowerCase() === "authorization") {
      entries += 1;
    }
  }
  if (entries > 1) {
    answer(res, Code.Unauthenticated, "missing or invalid credentials");
    return false;
  }
  return true;
}

/**
 * Handles a call's grpc-timeout before connect does (agent_service.proto): a
 * call with less than DEADLINE_MARGIN_MS left is answered DEADLINE_EXCEEDED
 * here (connect-node leaves such calls unanswered), and a deadline beyond what
 * a Node timer can hold (about 24.8 days) is clamped to it instead of firing at
 * once. Returns false when it answered the call itself.
 */
function guardDeadline(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse): boolean {
  const header = req.headers["grpc-timeout"];
  const match = typeof header === "string" ? /^(\d{1,8})([HMSmun])$/.exec(header) : null;
  if (match === null) {
    return true;
  }
  const ms = Number(match[1]) * (TIMEOUT_UNITS_MS[match[2] ?? "S"] ?? 1_000);
  if (ms <= DEADLINE_MARGIN_MS) {
    answer(res, Code.DeadlineExceeded, "the call's deadline passed before it was handled");
    return false;
  }
  if (ms > MAX_TIMER_MS) {
    req.headers["grpc-timeout"] = `${Math.floor(MAX_TIMER_MS / 1_000)}S`;
  }
  return true;
}

export function serverInterceptors(node: NodeCore): Interceptor[] {
  const token = node.options.token;
  const healthWithoutAuth = node.options.healthWithoutAuth ?? false;
  const interceptors: Interceptor[] = [rpcServerInterceptor(node.tracing)];
  if (token !== undefined) {
    const expected = sha256(token);
    interceptors.push((next) => async (req) => {
      if (healthWithoutAuth && req.service.typeName === Health.typeName) {
        return next(req);
      }
      // Exactly one authorization entry, its scheme in any case (RFC 7235):
      // Headers joins repeated entries with ", ", which never matches.
      const match = /^bearer +(\S+) *$/i.exec(req.header.get("authorization") ?? "");
      if (match?.[1] === undefined || !timingSafeEqual(sha256(match[1]), expected)) {
        throw new ConnectError("missing or invalid credentials", Code.Unauthenticated);
      }
      return next(req);
    });
  }
  interceptors.push((next) => async (req) => {
    if (req.stream) {
      return next(req);
    }
    node.inflight += 1;
    try {
      return await next(req);
    } finally {
      node.inflight -= 1;
    }
  });
  return interceptors;
}

/** Runs a unary method body, turning every failure into a ConnectError with ErrorInfo. */
export async function serve<T>(node: NodeCore, body: () => T | Promise<T>): Promise<T> {
  node.refuseWhenStopping();
  try {
    return await body();
  } catch (error) {
    throw toConnectError(asRaviError(error));
  }
}

export function agentService(node: NodeCore): ServiceImpl<typeof AgentService> {
  return {
    send: async (request, ctx) => {
      node.refuseWhenStopping();
      try {
        return await dispatchSend(node, request, {
          deadline: node.deadlineOf(ctx),
          signal: ctx.signal,
          trace: traceOf(ctx),
          received: true,
        });
      } catch (error) {
        throw toConnectError(annotated(asRaviError(error), node.nodeId, request.recipient?.type ?? "", request.envelope?.payload?.type ?? ""));
      }
    },
    publish: (request, ctx) => serve(node, () => handlePublish(node, request, ctx)),
    subscribe: (request, ctx) => handleSubscribe(node, request, ctx),
    describe: (request) => {
      const caller = request.caller;
      if (caller !== undefined) {
        learn(node, caller);
      }
      return { node: node.info() };
    },
    resolvePromise: (request) => serve(node, () => handleResolvePromise(node, request)),
    saveState: (request) => serve(node, () => handleSaveState(node, request)),
    loadState: (request) => serve(node, () => handleLoadState(node, request)),
    multiplex: (requests, ctx) => handleMultiplex(node, requests, ctx),
  };
}
