// Peers named by DNS, as Python's PeerDiscovery finds them (Go: discovery.go):
// a peer address written dns:HOST:PORT (or dns:///HOST:PORT) names a pool of
// nodes, such as a Kubernetes headless Service, and each address HOST resolves
// to becomes a peer of its own, so rendezvous hashing places keys across every
// node of the pool. The name is resolved again every peerDnsIntervalMs: new
// addresses are dialled, and an address that no longer resolves stops
// receiving new calls at once and is closed once the calls it is handling
// finished (DRAIN_TIMEOUT_MS at most). A resolution that fails keeps the
// addresses of the last one; a name that does not exist (NXDOMAIN, as a
// headless Service with no ready pod answers) has no address.
import { promises as dns } from "node:dns";

import type { PeerLink } from "../peers.js";
import { sleep } from "../util.js";
import { NodeCore } from "./core.js";
import { addPeer, onPeerDown } from "./routing.js";

/** How often dns: peers are resolved again, by default. */
export const DEFAULT_PEER_DNS_INTERVAL_MS = 10_000;
const RESOLVE_TIMEOUT_MS = 5_000;
/** How long a dropped peer's calls in flight may take before its connection closes. */
const DRAIN_TIMEOUT_MS = 5_000;
const DNS_SCHEME = "dns:";

/** Maps the host and port of a dns: peer to the host:port addresses of its nodes. */
export type Resolver = (host: string, port: number) => Promise<string[]>;

/** The addresses `host` resolves to now (getaddrinfo), as sorted host:port strings; none for NXDOMAIN. */
export async function resolveDns(host: string, port: number): Promise<string[]> {
  let found: { address: string; family: number }[];
  try {
    found = await dns.lookup(host, { all: true });
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (code === "ENOTFOUND" || code === "ENODATA") {
      return [];
    }
    throw error;
  }
  const addresses = new Set(found.map((a) => (a.family === 6 ? `[${a.address}]:${port}` : `${a.address}:${port}`)));
  return [...addresses].sort();
}

/**
 * The host and port of a dns:HOST:PORT peer address; undefined for a plain
 * host:port. Throws for a malformed one, or one naming a DNS server
 * (dns://SERVER/...), which is not supported.
 */
export function dnsTarget(address: string): { host: string; port: number } | undefined {
  if (!address.startsWith(DNS_SCHEME)) {
    return undefined;
  }
  let rest = address.slice(DNS_SCHEME.length);
  if (rest.startsWith("//")) {
    const slash = rest.indexOf("/", 2);
    const authority = slash < 0 ? rest.slice(2) : rest.slice(2, slash);
    if (authority !== "") {
      throw new Error(`${JSON.stringify(address)}: a DNS server in the address is not supported`);
    }
    rest = slash < 0 ? "" : rest.slice(slash + 1);
  }
  const colon = rest.lastIndexOf(":");
  const host = rest.slice(0, Math.max(colon, 0)).replace(/^\[(.*)\]$/, "$1");
  const portText = rest.slice(colon + 1);
  const port = Number(portText);
  if (colon <= 0 || host === "" || !/^\d+$/.test(portText) || port > 65535) {
    throw new Error(`a DNS peer must be dns:HOST:PORT, got ${JSON.stringify(address)}`);
  }
  return { host, port };
}

/** The peers one dns: peer name resolved to, by address (undefined: the address is this node). */
export interface DnsGroup {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly members: Map<string, PeerLink | undefined>;
}

/** Resolves every group at once and then every interval, until `signal` aborts. */
export async function discoverPeers(node: NodeCore, groups: readonly DnsGroup[], signal: AbortSignal): Promise<void> {
  const interval = node.options.peerDnsIntervalMs ?? DEFAULT_PEER_DNS_INTERVAL_MS;
  while (!signal.aborted) {
    await Promise.all(groups.map((group) => resolveGroup(node, group, signal)));
    try {
      await sleep(interval, signal);
    } catch {
      return;
    }
  }
}

async function resolveGroup(node: NodeCore, group: DnsGroup, signal: AbortSignal): Promise<void> {
  const resolver = node.options.resolver ?? resolveDns;
  let resolved: Set<string>;
  try {
    resolved = new Set(await withTimeout(resolver(group.host, group.port), RESOLVE_TIMEOUT_MS));
  } catch (error) {
    // A resolver failing must not stop discovery, nor drop a pool.
    node.logger.warn(
      `resolving peer ${group.name} (${group.host}:${group.port}) failed, keeping its ${group.members.size} address(es): ${error instanceof Error ? error.message : String(error)}`,
    );
    return;
  }
  if (signal.aborted || node.state !== "serving") {
    return;
  }
  for (const address of [...resolved].sort()) {
    if (group.members.has(address)) {
      continue;
    }
    const link = addPeer(node, `${group.name}/${address}`, address);
    if (link !== undefined && link.group === undefined) {
      // A new peer, or a learned one the name now accounts for.
      link.group = group.name;
    }
    group.members.set(address, link);
    node.logger.info(`peer ${group.name}: added ${address}`);
  }
  for (const [address, link] of group.members) {
    if (resolved.has(address)) {
      continue;
    }
    group.members.delete(address);
    node.logger.info(`peer ${group.name}: ${address} no longer resolves, dropping it`);
    if (link !== undefined && link.group === group.name) {
      const index = node.links.indexOf(link);
      if (index >= 0) {
        node.links.splice(index, 1);
      }
      onPeerDown(node, link);
      void link.retire(DRAIN_TIMEOUT_MS);
    }
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}
