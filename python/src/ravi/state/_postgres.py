"""PostgresStore: agent state in PostgreSQL, shared by the nodes of a mesh."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ravi._ids import AgentId
from ravi.errors import Unavailable
from ravi.mesh.v1 import contract
from ravi.state._store import StateStore, StoredState, decode_state, encode_state, stale

if TYPE_CHECKING:
    import asyncpg

logger = logging.getLogger("ravi.state")

# The tables every language's PostgreSQL store uses (docs/state.md). A row of
# ravi_agent_state names the node holding the agent (or '' once it was let
# go); ravi_holders has one row per live node, renewed every third of the lease.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ravi_agent_state (
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
);
"""

# Claim the agent for $3 unless a live node holds it: nobody, this node, or a
# node whose lease lapsed (it died without letting go).
_CLAIM = """
INSERT INTO ravi_agent_state AS s (agent_type, agent_key, version, holder)
VALUES ($1, $2, 0, $3)
ON CONFLICT (agent_type, agent_key) DO UPDATE SET holder = EXCLUDED.holder
WHERE s.holder = '' OR s.holder = EXCLUDED.holder OR NOT EXISTS (
    SELECT 1 FROM ravi_holders h
    WHERE h.holder = s.holder AND h.renewed_at > now() - make_interval(secs => $4)
)
RETURNING version, state::text
"""

_SAVE = """
UPDATE ravi_agent_state
SET version = version + 1, state = $3::jsonb, updated_at = now(),
    holder = CASE WHEN $6 THEN '' ELSE holder END
WHERE agent_type = $1 AND agent_key = $2 AND version = $4 AND holder = $5
RETURNING version
"""

# A first save: a new record, or the one this node's claim created (version 0).
_CREATE = """
INSERT INTO ravi_agent_state AS s (agent_type, agent_key, version, state, holder, updated_at)
VALUES ($1, $2, 1, $3::jsonb, CASE WHEN $5 THEN '' ELSE $4 END, now())
ON CONFLICT (agent_type, agent_key) DO UPDATE
SET version = 1, state = EXCLUDED.state, holder = EXCLUDED.holder, updated_at = now()
WHERE s.version = 0 AND s.holder = $4
RETURNING version
"""

_RENEW = """
INSERT INTO ravi_holders (holder, renewed_at) VALUES ($1, now())
ON CONFLICT (holder) DO UPDATE SET renewed_at = now()
"""


class PostgresStore(StateStore):
    """PostgresStore keeps agent state in PostgreSQL, shared by the nodes of a mesh.

    A key that moves to another node (a pool scaled out or in, a node
    restarted elsewhere) finds its state there. Each agent's record names the
    node holding it: a node activating an agent another live node holds waits
    until that node saves and lets it go (the hand-over of a rebalance), and a
    node that died loses its agents once its lease lapses
    (`holder_lease_seconds` of the contract, 10 s). A save from a node that no
    longer holds the agent, or over another version, is refused with
    `StaleState`. Needs the `postgres` extra (asyncpg).

    Args:
        dsn: a libpq connection URL (`postgresql://user@host:5432/db`).
        lease: seconds a node's claims outlive its last renewal.
        timeout: seconds one statement may take.
        pool_size: connections at most.
    """

    def __init__(
        self,
        dsn: str,
        *,
        lease: float = contract.HOLDER_LEASE_SECONDS,
        timeout: float = 10.0,
        pool_size: int = 10,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be positive, got {lease}")
        self.dsn = dsn
        self._lease = lease
        self._timeout = timeout
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._claims: asyncpg.Pool | None = None
        self._holder = ""
        self._renewer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({_redacted(self.dsn)!r})"

    async def open(self, holder: str) -> None:
        try:
            import asyncpg  # noqa: PLC0415 - an optional extra
        except ImportError as missing:
            raise ImportError(
                "PostgresStore needs asyncpg: install ravi with the postgres extra "
                "(pip install 'ravi[postgres]')"
            ) from missing
        self._holder = holder
        if self._pool is not None:
            return
        try:
            pool = await self._connect({})
            # Claims and lease renewals commit without waiting for the disk: a
            # claim the server lost in a crash only lets another node claim the
            # agent, and the saves of this node, which do wait, are then refused.
            claims = await self._connect({"synchronous_commit": "off"})
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise Unavailable(f"cannot reach the state store {_redacted(self.dsn)}: {exc}") from exc
        try:
            async with pool.acquire() as connection, connection.transaction():
                # Nodes starting together must not race to create the tables.
                await connection.execute("SELECT pg_advisory_xact_lock(7261766900)")
                await connection.execute(_SCHEMA)
            await pool.execute(_RENEW, holder)
        except (OSError, asyncpg.PostgresError) as exc:
            await asyncio.gather(pool.close(), claims.close())
            raise Unavailable(f"cannot use {_redacted(self.dsn)} as a state store: {exc}") from exc
        self._pool, self._claims = pool, claims
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew_forever(claims), name="ravi-state-lease"
        )

    async def _connect(self, settings: dict[str, str]) -> asyncpg.Pool:
        import asyncpg  # noqa: PLC0415 - an optional extra, imported by open() first

        return await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=self._pool_size,
            command_timeout=self._timeout,
            timeout=self._timeout,
            server_settings=settings,
        )

    async def _renew_forever(self, pool: asyncpg.Pool) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await pool.execute(_RENEW, self._holder)
            except Exception as exc:  # a failed renewal must not end the renewals
                logger.warning("renewing the lease of %s failed: %r", self._holder, exc)

    def _connected(self) -> asyncpg.Pool:
        if self._pool is None:
            raise Unavailable(f"the state store {_redacted(self.dsn)} is not open")
        return self._pool

    async def load(self, agent: AgentId) -> StoredState:
        pool = self._connected()
        assert self._claims is not None
        row = await self._claims.fetchrow(_CLAIM, agent.type, agent.key, self._holder, self._lease)
        if row is not None:
            return StoredState(decode_state(row[1]), int(row[0]))
        held_by = await pool.fetchval(
            "SELECT holder FROM ravi_agent_state WHERE agent_type = $1 AND agent_key = $2",
            agent.type,
            agent.key,
        )
        return StoredState(None, 0, held_by=str(held_by or "?"))

    async def save(
        self, agent: AgentId, state: Mapping[str, Any], version: int, *, release: bool = False
    ) -> int:
        text = encode_state(agent, state)
        pool = self._connected()
        if version == 0:
            saved = await pool.fetchval(_CREATE, agent.type, agent.key, text, self._holder, release)
        else:
            saved = await pool.fetchval(
                _SAVE, agent.type, agent.key, text, version, self._holder, release
            )
        if saved is None:
            row = await pool.fetchrow(
                "SELECT version, holder FROM ravi_agent_state "
                "WHERE agent_type = $1 AND agent_key = $2",
                agent.type,
                agent.key,
            )
            found = None if row is None else (int(row[0]), str(row[1]))
            raise stale(agent, version, found, self._holder)
        return int(saved)

    async def close(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        pool, self._pool = self._pool, None
        claims, self._claims = self._claims, None
        if pool is None or claims is None:
            return
        try:
            # Without a lease, whatever this node still holds is free at once.
            await pool.execute("DELETE FROM ravi_holders WHERE holder = $1", self._holder)
        except Exception as exc:  # closing goes on whatever the server says
            logger.warning("dropping the lease of %s failed: %r", self._holder, exc)
        finally:
            await asyncio.gather(pool.close(), claims.close())


def _redacted(dsn: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)
