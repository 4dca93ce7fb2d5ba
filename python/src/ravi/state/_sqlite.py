"""SqliteStore: agent state in one SQLite file per node."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from ravi._ids import AgentId
from ravi.errors import Unavailable
from ravi.state._store import StateStore, StoredState, decode_state, encode_state, stale

# The table every language's SQLite store uses (docs/state.md).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ravi_agent_state (
    agent_type TEXT NOT NULL,
    agent_key TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT,
    holder TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (agent_type, agent_key)
) WITHOUT ROWID
"""

_INSERT = """
INSERT INTO ravi_agent_state (agent_type, agent_key, version, state) VALUES (?, ?, 1, ?)
ON CONFLICT (agent_type, agent_key) DO NOTHING
"""

_UPDATE = """
UPDATE ravi_agent_state
SET version = version + 1, state = ?, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
WHERE agent_type = ? AND agent_key = ? AND version = ?
"""


class SqliteStore(StateStore):
    """SqliteStore keeps agent state in one SQLite file: `ravi node --data-dir`'s default.

    The file belongs to one node (two processes writing one file are not
    supported; for a store shared by a mesh use PostgresStore). It runs in
    WAL mode: every save is committed before it returns, so a process killed
    with SIGKILL loses no saved state. With `synchronous="normal"` (the
    default) an operating-system crash or power loss may lose the last
    commits; `synchronous="full"` syncs every commit to disk, at the cost of
    one fsync per save.

    Args:
        path: the database file (created with its folder when missing).
        synchronous: SQLite's synchronous setting, "normal" or "full".
        timeout: seconds a statement waits for a lock on the file.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        timeout: float = 10.0,
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous
        self._timeout = timeout
        self._db: aiosqlite.Connection | None = None
        self._holder = ""

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def open(self, holder: str) -> None:
        self._holder = holder
        if self._db is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path, timeout=self._timeout, isolation_level=None)
        except (OSError, aiosqlite.Error) as exc:
            raise Unavailable(f"cannot open the state store {self.path}: {exc}") from exc
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
            await db.execute(_SCHEMA)
        except aiosqlite.Error as exc:
            await db.close()
            raise Unavailable(f"cannot use {self.path} as a state store: {exc}") from exc
        self._db = db

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise Unavailable(f"the state store {self.path} is not open")
        return self._db

    async def load(self, agent: AgentId) -> StoredState:
        async with self._connection().execute(
            "SELECT version, state FROM ravi_agent_state WHERE agent_type = ? AND agent_key = ?",
            (agent.type, agent.key),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return StoredState(None, 0)
        return StoredState(decode_state(row[1]), int(row[0]))

    async def save(
        self, agent: AgentId, state: Mapping[str, Any], version: int, *, release: bool = False
    ) -> int:
        text = encode_state(agent, state)
        db = self._connection()
        if version == 0:
            cursor = await db.execute(_INSERT, (agent.type, agent.key, text))
        else:
            cursor = await db.execute(_UPDATE, (text, agent.type, agent.key, version))
        changed = cursor.rowcount
        await cursor.close()
        if changed != 1:
            raise stale(agent, version, await self._found(agent), self._holder)
        return version + 1

    async def _found(self, agent: AgentId) -> tuple[int, str] | None:
        async with self._connection().execute(
            "SELECT version, holder FROM ravi_agent_state WHERE agent_type = ? AND agent_key = ?",
            (agent.type, agent.key),
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()
