// Routing: the peers a node keeps, the routing table their NodeInfo builds, and
// rendezvous placement of an agent id (Go: routing.go, peer.go).
import { type NodeInfo } from "@ravi-mesh/contract/ravi/mesh/v1/types_pb";
import { RaviClient, type TopicFilterSpec } from "../client.js";
import { errors } from "../errors.js";
import { PeerLink } from "../peers.js";
import { rendezvousPick } from "../rendezvous.js";
import { rpcClientInterceptor } from "../tracing.js";
import { NodeCore } from "./core.js";

/**
 * Adds a peer and starts connecting to it; returns its link (the existing one
 * if that address is a peer already), or undefined for this node's own address
 * or a node that stops.
 */
export function addPeer(node: NodeCore, label: string, address: string): PeerLink | undefined {
  if (node.state === "stopping" || node.state === "stopped" || address === node.advertised) {
    return undefined;
  }
  const known = node.links.find((l) => l.address === address && !l.stopped);
  if (known !== undefined) {
    return known;
  }
  const link = new PeerLink(node.host, label, address);
  node.links.push(link);
  if (node.state === "serving") {
    link.start();
  }
  return link;
}

/** The peers, as configured or learned. */
export function peers(node: NodeCore): { label: string; address: string; nodeId: string | undefined; connected: boolean }[] {
  return node.links.map((l) => ({
    label: l.label,
    address: l.address,
    nodeId: l.nodeId,
    connected: l.nodeId !== undefined && node.routes.get(l.nodeId)?.link === l,
  }));
}

/** The agent types this node can reach, its own and its connected peers', for error messages. */
export function knownTypes(node: NodeCore): string[] {
  const known = new Set(node.registrations.keys());
  for (const entry of node.routes.values()) {
    for (const t of entry.info.agentTypes) {
      known.add(t.agentType);
    }
  }
  return [...known].sort();
}

/** The routing table: each reachable peer's latest NodeInfo, by node id. */
export function routingTable(node: NodeCore): ReadonlyMap<string, NodeInfo> {
  return new Map([...node.routes].map(([id, entry]) => [id, entry.info]));
}

/**
 * Resolves once `predicate` holds for the routing table (checked on every
 * change); rejects with DEADLINE_EXCEEDED after `timeoutMs`.
 */
export function waitForRoutes(node: NodeCore, predicate: (routes: ReadonlyMap<string, NodeInfo>) => boolean, timeoutMs = 5_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (predicate(routingTable(node))) {
        clearTimeout(timer);
        node.events.off("routes", check);
        resolve();
      }
    };
    const timer = setTimeout(() => {
      node.events.off("routes", check);
      reject(errors.deadlineExceeded(`waiting for the routes of node ${node.nodeId}`));
    }, timeoutMs);
    node.events.on("routes", check);
    check();
  });
}

/** Resolves once `agentType` is hosted here or by a connected peer (optionally a given node). */
export function waitForRoute(node: NodeCore, agentType: string, options: { nodeId?: string; timeoutMs?: number } = {}): Promise<void> {
  if (options.nodeId === undefined && node.hosts(agentType)) {
    return Promise.resolve();
  }
  return waitForRoutes(node, 
    (routes) =>
      [...routes.values()].some(
        (info) =>
          (options.nodeId === undefined || info.nodeId === options.nodeId) &&
          info.agentTypes.some((t) => t.agentType === agentType),
      ),
    options.timeoutMs,
  );
}

/** A node that described us: peer with it, or reconnect to it now if it is a peer already. */
export function learn(node: NodeCore, caller: NodeInfo): void {
  if (caller.address === "" || caller.nodeId === "" || caller.nodeId === node.nodeId || node.state !== "serving") {
    return;
  }
  const known = node.links.find((l) => !l.stopped && l.address === caller.address);
  if (known !== undefined) {
    // A peer we lost calls us: it is back, so reconnect now instead of after the backoff.
    if (known.nodeId === undefined || node.routes.get(known.nodeId)?.link !== known) {
      known.wake();
    }
    return;
  }
  node.logger.info(`learned peer ${caller.nodeId} at ${caller.address} (it described this node)`);
  addPeer(node, caller.nodeId, caller.address);
}

/** Picks the peer for an agent type and key: the only one, or the rendezvous winner. */
export function route(node: NodeCore, agentType: string, key: string, exclude: readonly string[] = []): string | undefined {
  const candidates = [...node.routes.values()]
    .filter((e) => !exclude.includes(e.info.nodeId) && e.info.agentTypes.some((t) => t.agentType === agentType))
    .map((e) => e.info.nodeId);
  return candidates.length <= 1 ? candidates[0] : rendezvousPick(candidates, agentType, key);
}

export function onPeerInfo(node: NodeCore, link: PeerLink, info: NodeInfo): void {
  if (link.stopped || node.state !== "serving") {
    return;
  }
  if (link.incarnation !== undefined && link.incarnation !== info.incarnation) {
    node.logger.info(`peer ${info.nodeId} restarted (incarnation ${info.incarnation})`);
  }
  link.nodeId = info.nodeId;
  link.incarnation = info.incarnation;
  link.lastInfo = info;
  node.routes.set(info.nodeId, { info, link });
  node.events.emit("routes");
}

export function onPeerDown(node: NodeCore, link: PeerLink): void {
  let removed = false;
  for (const [nodeId, entry] of node.routes) {
    if (entry.link === link) {
      node.routes.delete(nodeId);
      removed = true;
    }
  }
  if (removed) {
    node.events.emit("routes");
  }
}

export function streamFilters(node: NodeCore): TopicFilterSpec[] {
  const seen = new Set<string>();
  const filters: TopicFilterSpec[] = [];
  for (const sub of node.subscriptionsById.values()) {
    const key = "topicType" in sub.filter ? `=${sub.filter.topicType}` : `^${sub.filter.topicTypePrefix}`;
    if (!seen.has(key)) {
      seen.add(key);
      filters.push(sub.filter);
    }
  }
  return filters;
}

// --- PeerHost ---------------------------------------------------------------
export function peerClient(node: NodeCore, address: string): RaviClient {
  return new RaviClient({
    address,
    token: node.options.token,
    interceptors: [...(node.options.clientInterceptors ?? []), rpcClientInterceptor(node.tracing)],
    maxMessageBytes: node.maxMessageBytes,
    // A frozen peer is ejected within keepaliveTimeMs + keepaliveTimeoutMs: its
    // calls fail UNAVAILABLE and its types leave the routing table. The
    // connection always carries the peer's Subscribe stream, so it is pinged
    // whenever it is up (connect-node 2.1.2's pingIdleConnection would also
    // ping a session it destroyed, an uncaught exception).
    http2: { pingIntervalMs: node.keepaliveTimeMs, pingTimeoutMs: node.keepaliveTimeoutMs },
    tls: node.peerTls,
  });
}

/**
 * The addresses of the peers that hosted `agentType` when they were last
 * connected and are unreachable now (not in `exclude`): a call for a type that
 * only they host is UNAVAILABLE / PEER_UNAVAILABLE, not NOT_FOUND.
 */
export function unreachableHosting(node: NodeCore, agentType: string, exclude: readonly string[] = []): string[] {
  return node.links
    .filter(
      (l) =>
        !l.stopped &&
        l.lastInfo !== undefined &&
        !exclude.includes(l.lastInfo.nodeId) &&
        node.routes.get(l.lastInfo.nodeId)?.link !== l &&
        l.lastInfo.agentTypes.some((t) => t.agentType === agentType),
    )
    .map((l) => l.address)
    .sort();
}
