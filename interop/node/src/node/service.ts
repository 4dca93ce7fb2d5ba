// The node's gRPC server: AgentService, health and reflection on one listener,
// tokens, graceful stop (Go: node.go, service.go).
import { type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Health } from "@ravi-mesh/contract/grpc/health/v1/health_pb";
import * as reflectionV1Pb from "@ravi-mesh/contract/grpc/reflection/v1/reflection_pb";
import * as reflectionV1alphaPb from "@ravi-mesh/contract/grpc/reflection/v1alpha/reflection_pb";
import { AgentService } from "@ravi-mesh/contract/ravi/mesh/v1/agent_service_pb";
import { createHash, timingSafeEqual } from "node:crypto";
import * as http2 from "node:http2";
import type { Socket } from "node:net";
import type { AddressInfo } from "node:net";
import { asRaviError, RaviError, toConnectError } from "../errors.js";
import { healthService, ServingStatus } from "../health.js";
import { ReflectionIndex, reflectionV1, reflectionV1alpha } from "../reflection.js";
import { sleep } from "../util.js";
import { handleConnect } from "./connect.js";
import { NodeCore, traceOf } from "./core.js";
import { AGENT_SERVICE_NAME } from "./options.js";
import { handlePublish } from "./publish.js";
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
  const index = new ReflectionIndex(
    () => services(node),
    () => node.types.allFiles(),
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
    interceptors: [...(node.options.interceptors ?? []), ...serverInterceptors(node)],
  });
  const server =
    node.serverTls === undefined ? http2.createServer({}, handler) : http2.createSecureServer(node.serverTls, handler);
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
  for (const [name, address] of Object.entries(node.options.peers ?? {})) {
    addPeer(node, name, address);
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
  node.state = "stopped";
}

// --- server-side plumbing ---------------------------------------------------
export function serverInterceptors(node: NodeCore): Interceptor[] {
  const token = node.options.token;
  const healthWithoutAuth = node.options.healthWithoutAuth ?? false;
  const interceptors: Interceptor[] = [];
  if (token !== undefined) {
    const expected = sha256(token);
    interceptors.push((next) => async (req) => {
      if (healthWithoutAuth && req.service.typeName === Health.typeName) {
        return next(req);
      }
      const match = /^Bearer\s+(.+)$/i.exec(req.header.get("authorization") ?? "");
      if (match?.[1] === undefined || !timingSafeEqual(sha256(match[1].trim()), expected)) {
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
    send: (request, ctx) =>
      serve(node, () =>
        dispatchSend(node, request, {
          deadline: node.deadlineOf(ctx),
          signal: ctx.signal,
          trace: traceOf(ctx),
          received: true,
        }),
      ),
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
    connect: (requests, ctx) => handleConnect(node, requests, ctx),
  };
}
