"""MemoryStore: agent state in this process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ravi._ids import AgentId
from ravi.state._store import StateStore, StoredState, decode_state, encode_state, stale


class MemoryStore(StateStore):
    """MemoryStore keeps agent state in this process: LocalRuntime's default.

    Passivating a stateless agent stores nothing, so memory holds only the
    state of agents that have some. State survives passivation and a stop and
    start of the runtime, not the process. It is kept as JSON, like every
    store keeps it, so an agent loads the same values whichever store it uses
    and shares nothing with the instance that saved them.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], tuple[int, str]] = {}
        self._holder = ""

    async def open(self, holder: str) -> None:
        self._holder = holder

    async def load(self, agent: AgentId) -> StoredState:
        record = self._records.get((agent.type, agent.key))
        if record is None:
            return StoredState(None, 0)
        version, text = record
        return StoredState(decode_state(text), version)

    async def save(
        self, agent: AgentId, state: Mapping[str, Any], version: int, *, release: bool = False
    ) -> int:
        key = (agent.type, agent.key)
        text = encode_state(agent, state)
        record = self._records.get(key)
        current = 0 if record is None else record[0]
        if current != version:
            raise stale(agent, version, (current, ""), self._holder)
        self._records[key] = (version + 1, text)
        return version + 1

    async def close(self) -> None:
        """Nothing to release: the records stay for the next start."""

    def __len__(self) -> int:
        return len(self._records)
