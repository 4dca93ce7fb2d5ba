// State stores: where passivated agents keep their state. The same interface,
// tables and JSON as the Python and Go members' stores (docs/state.md), so the
// nodes of every language can share one PostgreSQL database.
import { type JsonObject } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { HOLDER_LEASE_MS } from "@ravi-mesh/contract/ravi/mesh/v1/contract";
import Database from "better-sqlite3";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import pg from "pg";

import { RaviError } from "./errors.js";
import { formatAgentId, type AgentAddress } from "./ids.js";

/** What a store answers for one agent on activation. */
export interface StoredState {
  /** The state last saved; undefined when nothing was saved yet. */
  readonly state: JsonObject | undefined;
  /** The version of `state`, 0 when nothing was saved; the next save names it. */
  readonly version: number;
  /** Set by a shared store, instead of the fields above, when another live node holds the agent. */
  readonly heldBy: string;
}

/**
 * StateStore keeps the state of passivated agents, one versioned record per
 * agent id. A save names the version it read or last wrote; a store refuses
 * any other version, or, when shared, a node that no longer holds the agent,
 * with STALE_STATE (ABORTED).
 */
export interface StateStore {
  /** Prepares the store (connects, creates tables) for the node `holder`. */
  open(holder: string): Promise<void>;
  /** The stored state of `agent`; a shared store also claims it for this node. */
  load(agent: AgentAddress): Promise<StoredState>;
  /** Writes `state` over `version`, returns the new version; `release` lets the agent go. */
  save(agent: AgentAddress, state: JsonObject, version: number, release: boolean): Promise<number>;
  /** Releases connections and, in a shared store, the node's lease. */
  close(): Promise<void>;
}

/** The store a URL names: "memory", "sqlite:PATH" or "postgresql://..." (ravi node's --state-store). */
export function openStore(url: string): StateStore {
  if (url === "memory" || url === "memory:") {
    return new MemoryStore();
  }
  if (url.startsWith("sqlite:")) {
    let path = url.slice("sqlite:".length);
    if (path.startsWith("//")) {
      path = path.slice(2);
    }
    if (path === "") {
      throw new RaviError(Code.InvalidArgument, `${JSON.stringify(url)} names no file: write sqlite:PATH`);
    }
    return new SqliteStore(path);
  }
  if (url.startsWith("postgresql://") || url.startsWith("postgres://")) {
    return new PostgresStore(url);
  }
  throw new RaviError(
    Code.InvalidArgument,
    `unknown state store ${JSON.stringify(url)}: use memory, sqlite:PATH or postgresql://USER@HOST/DB`,
  );
}

export function staleState(agent: AgentAddress, version: number, found: string, holder: string): RaviError {
  return new RaviError(
    Code.Aborted,
    `the state of ${formatAgentId(agent)} was not saved: this node (${JSON.stringify(holder)}) had version ${version}, ` +
      `the store has ${found}; another node took the agent over, so this copy is discarded`,
    { reason: "STALE_STATE", metadata: { agent_type: agent.type, node_id: holder } },
  );
}

function unavailable(message: string, cause: unknown): RaviError {
  return new RaviError(Code.Unavailable, `${message}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
}

/** MemoryStore keeps agent state in this process: the default. */
export class MemoryStore implements StateStore {
  private readonly records = new Map<string, { version: number; state: string }>();
  private holder = "";

  async open(holder: string): Promise<void> {
    this.holder = holder;
  }

  async load(agent: AgentAddress): Promise<StoredState> {
    const record = this.records.get(formatAgentId(agent));
    if (record === undefined) {
      return { state: undefined, version: 0, heldBy: "" };
    }
    return { state: JSON.parse(record.state) as JsonObject, version: record.version, heldBy: "" };
  }

  async save(agent: AgentAddress, state: JsonObject, version: number): Promise<number> {
    const id = formatAgentId(agent);
    const current = this.records.get(id)?.version ?? 0;
    if (current !== version) {
      throw staleState(agent, version, `version ${current}`, this.holder);
    }
    this.records.set(id, { version: version + 1, state: JSON.stringify(state) });
    return version + 1;
  }

  async close(): Promise<void> {}

  /** The number of agents with saved state. */
  get size(): number {
    return this.records.size;
  }
}

const SQLITE_SCHEMA = `CREATE TABLE IF NOT EXISTS ravi_agent_state (
    agent_type TEXT NOT NULL,
    agent_key TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT,
    holder TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (agent_type, agent_key)
) WITHOUT ROWID`;

/**
 * SqliteStore keeps agent state in one SQLite file of one node
 * (better-sqlite3, WAL mode): every save is committed before it returns, so a
 * killed process loses no saved state.
 */
export class SqliteStore implements StateStore {
  private db: Database.Database | undefined;
  private holder = "";

  constructor(readonly path: string) {}

  async open(holder: string): Promise<void> {
    this.holder = holder;
    if (this.db !== undefined) {
      return;
    }
    try {
      mkdirSync(dirname(this.path), { recursive: true });
      const db = new Database(this.path, { timeout: 10_000 });
      db.pragma("journal_mode = WAL");
      db.pragma("synchronous = NORMAL");
      db.exec(SQLITE_SCHEMA);
      this.db = db;
    } catch (error) {
      throw unavailable(`cannot open the state store ${this.path}`, error);
    }
  }

  private connection(): Database.Database {
    if (this.db === undefined) {
      throw new RaviError(Code.Unavailable, `the state store ${this.path} is not open`);
    }
    return this.db;
  }

  async load(agent: AgentAddress): Promise<StoredState> {
    const row = this.connection()
      .prepare("SELECT version, state FROM ravi_agent_state WHERE agent_type = ? AND agent_key = ?")
      .get(agent.type, agent.key) as { version: number; state: string | null } | undefined;
    if (row === undefined) {
      return { state: undefined, version: 0, heldBy: "" };
    }
    return { state: row.state === null ? undefined : (JSON.parse(row.state) as JsonObject), version: row.version, heldBy: "" };
  }

  async save(agent: AgentAddress, state: JsonObject, version: number): Promise<number> {
    const db = this.connection();
    const text = JSON.stringify(state);
    const changed =
      version === 0
        ? db
            .prepare(
              "INSERT INTO ravi_agent_state (agent_type, agent_key, version, state) VALUES (?, ?, 1, ?) " +
                "ON CONFLICT (agent_type, agent_key) DO NOTHING",
            )
            .run(agent.type, agent.key, text).changes
        : db
            .prepare(
              "UPDATE ravi_agent_state SET version = version + 1, state = ?, " +
                "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE agent_type = ? AND agent_key = ? AND version = ?",
            )
            .run(text, agent.type, agent.key, version).changes;
    if (changed !== 1) {
      const row = db
        .prepare("SELECT version FROM ravi_agent_state WHERE agent_type = ? AND agent_key = ?")
        .get(agent.type, agent.key) as { version: number } | undefined;
      throw staleState(agent, version, row === undefined ? "no record of it" : `version ${row.version}`, this.holder);
    }
    return version + 1;
  }

  async close(): Promise<void> {
    this.db?.close();
    this.db = undefined;
  }
}

const POSTGRES_SCHEMA = `CREATE TABLE IF NOT EXISTS ravi_agent_state (
    agent_type text NOT NULL,
    agent_key text NOT NULL,
    version bigint NOT NULL,
    state jsonb,
    holder text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_type, agent_key)
);
CREATE TABLE IF NOT EXISTS ravi_holders (
    holder text PRIMARY KEY,
    renewed_at timestamptz NOT NULL
)`;

const POSTGRES_CLAIM = `INSERT INTO ravi_agent_state AS s (agent_type, agent_key, version, holder)
VALUES ($1, $2, 0, $3)
ON CONFLICT (agent_type, agent_key) DO UPDATE SET holder = EXCLUDED.holder
WHERE s.holder = '' OR s.holder = EXCLUDED.holder OR NOT EXISTS (
    SELECT 1 FROM ravi_holders h
    WHERE h.holder = s.holder AND h.renewed_at > now() - make_interval(secs => $4)
)
RETURNING version, state::text AS state`;

const POSTGRES_SAVE = `UPDATE ravi_agent_state
SET version = version + 1, state = $3::jsonb, updated_at = now(),
    holder = CASE WHEN $6 THEN '' ELSE holder END
WHERE agent_type = $1 AND agent_key = $2 AND version = $4 AND holder = $5
RETURNING version`;

// A first save: a new record, or the one this node's claim created (version 0).
const POSTGRES_CREATE = `INSERT INTO ravi_agent_state AS s (agent_type, agent_key, version, state, holder, updated_at)
VALUES ($1, $2, 1, $3::jsonb, CASE WHEN $5 THEN '' ELSE $4 END, now())
ON CONFLICT (agent_type, agent_key) DO UPDATE
SET version = 1, state = EXCLUDED.state, holder = EXCLUDED.holder, updated_at = now()
WHERE s.version = 0 AND s.holder = $4
RETURNING version`;

const POSTGRES_RENEW = `INSERT INTO ravi_holders (holder, renewed_at) VALUES ($1, now())
ON CONFLICT (holder) DO UPDATE SET renewed_at = now()`;

/**
 * PostgresStore keeps agent state in PostgreSQL, shared by the nodes of a
 * mesh (the `pg` driver). Each record names the node holding the agent: a
 * node activating an agent another live node holds waits until that node
 * saves and lets it go, and a node that died loses its agents once its lease
 * lapsed (holder_lease_seconds of the contract).
 */
export class PostgresStore implements StateStore {
  private pool: pg.Pool | undefined;
  /** Claims and lease renewals: commits that need not wait for the disk. */
  private claims: pg.Pool | undefined;
  private holder = "";
  private renewer: NodeJS.Timeout | undefined;

  constructor(
    readonly url: string,
    private readonly leaseMs: number = HOLDER_LEASE_MS,
  ) {}

  private get shown(): string {
    return this.url.replace(/(:\/\/[^:/@]+):[^@]*@/, "$1:***@");
  }

  async open(holder: string): Promise<void> {
    this.holder = holder;
    if (this.pool !== undefined) {
      return;
    }
    const pool = new pg.Pool({ connectionString: this.url, max: 10, connectionTimeoutMillis: 10_000, statement_timeout: 10_000 });
    // A connection the server ends later fails its query, not the process.
    pool.on("error", () => undefined);
    try {
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        // Nodes starting together must not race to create the tables.
        await client.query("SELECT pg_advisory_xact_lock(7261766900)");
        await client.query(POSTGRES_SCHEMA);
        await client.query("COMMIT");
      } finally {
        client.release();
      }
      await pool.query(POSTGRES_RENEW, [holder]);
    } catch (error) {
      await pool.end();
      throw unavailable(`cannot reach the state store ${this.shown}`, error);
    }
    // A claim the server lost in a crash only lets another node claim the
    // agent, and the saves of this node, which do wait for the disk, are then
    // refused: claims need not wait for it.
    const claims = new pg.Pool({
      connectionString: this.url,
      max: 10,
      connectionTimeoutMillis: 10_000,
      statement_timeout: 10_000,
      options: "-c synchronous_commit=off",
    });
    claims.on("error", () => undefined);
    this.pool = pool;
    this.claims = claims;
    this.renewer = setInterval(() => {
      claims.query(POSTGRES_RENEW, [holder]).catch(() => undefined);
    }, this.leaseMs / 3);
    this.renewer.unref();
  }

  private connected(): pg.Pool {
    if (this.pool === undefined) {
      throw new RaviError(Code.Unavailable, `the state store ${this.shown} is not open`);
    }
    return this.pool;
  }

  async load(agent: AgentAddress): Promise<StoredState> {
    const pool = this.connected();
    try {
      const claimed = await (this.claims ?? pool).query<{ version: string; state: string | null }>(POSTGRES_CLAIM, [
        agent.type,
        agent.key,
        this.holder,
        this.leaseMs / 1000,
      ]);
      const row = claimed.rows[0];
      if (row !== undefined) {
        return {
          state: row.state === null ? undefined : (JSON.parse(row.state) as JsonObject),
          version: Number(row.version),
          heldBy: "",
        };
      }
      const held = await pool.query<{ holder: string }>(
        "SELECT holder FROM ravi_agent_state WHERE agent_type = $1 AND agent_key = $2",
        [agent.type, agent.key],
      );
      return { state: undefined, version: 0, heldBy: held.rows[0]?.holder ?? "?" };
    } catch (error) {
      throw unavailable(`loading the state of ${formatAgentId(agent)}`, error);
    }
  }

  async save(agent: AgentAddress, state: JsonObject, version: number, release: boolean): Promise<number> {
    const pool = this.connected();
    let saved: string | undefined;
    try {
      const result =
        version === 0
          ? await pool.query<{ version: string }>(POSTGRES_CREATE, [agent.type, agent.key, JSON.stringify(state), this.holder, release])
          : await pool.query<{ version: string }>(POSTGRES_SAVE, [
              agent.type,
              agent.key,
              JSON.stringify(state),
              version,
              this.holder,
              release,
            ]);
      saved = result.rows[0]?.version;
    } catch (error) {
      throw unavailable(`saving the state of ${formatAgentId(agent)}`, error);
    }
    if (saved === undefined) {
      const found = await pool.query<{ version: string; holder: string }>(
        "SELECT version, holder FROM ravi_agent_state WHERE agent_type = $1 AND agent_key = $2",
        [agent.type, agent.key],
      );
      const row = found.rows[0];
      let what = "no record of it";
      if (row !== undefined) {
        what = `version ${row.version}`;
        if (row.holder !== "" && row.holder !== this.holder) {
          what += `, held by node ${JSON.stringify(row.holder)}`;
        }
      }
      throw staleState(agent, version, what, this.holder);
    }
    return Number(saved);
  }

  async close(): Promise<void> {
    clearInterval(this.renewer);
    const pool = this.pool;
    this.pool = undefined;
    if (pool === undefined) {
      return;
    }
    // Without a lease, whatever this node still holds is free at once.
    await pool.query("DELETE FROM ravi_holders WHERE holder = $1", [this.holder]).catch(() => undefined);
    await Promise.all([pool.end(), this.claims?.end()]);
    this.claims = undefined;
  }
}
