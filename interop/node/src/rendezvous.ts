// Rendezvous (highest random weight) hashing: which of several nodes hosting
// an agent type handles one key.
import { createHash } from "node:crypto";

/** The first 8 bytes, big-endian unsigned, of SHA-256(node_id "\0" agent_type "\0" key). */
export function rendezvousScore(nodeId: string, agentType: string, key: string): bigint {
  const digest = createHash("sha256").update(`${nodeId}\0${agentType}\0${key}`, "utf8").digest();
  return digest.readBigUInt64BE(0);
}

/** The node id with the highest score (ties, which never happen in practice, go to the smaller id). */
export function rendezvousPick(nodeIds: Iterable<string>, agentType: string, key: string): string | undefined {
  let best: string | undefined;
  let bestScore = -1n;
  for (const nodeId of nodeIds) {
    const score = rendezvousScore(nodeId, agentType, key);
    if (score > bestScore || (score === bestScore && best !== undefined && nodeId < best)) {
      best = nodeId;
      bestScore = score;
    }
  }
  return best;
}
