"""The state store interface."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ravi._ids import AgentId
from ravi.errors import InvalidArgument, StaleState


@dataclass(frozen=True, slots=True)
class StoredState:
    """StoredState is what a store answers for one agent on activation.

    Attributes:
        state: the state last saved, as `save_state()` returned it; None when
            nothing was saved for the agent yet.
        version: the version of `state`, 0 when nothing was saved; the next
            save of the agent names it, so a write over a newer one is refused.
        held_by: a shared store sets it, instead of the fields above, when
            another live node holds the agent: that node must let it go first.
    """

    state: Mapping[str, Any] | None
    version: int
    held_by: str = ""


class StateStore(ABC):
    """StateStore keeps the state of passivated agents, one versioned record per AgentId.

    A node opens its store when it starts and closes it when it stops. On
    activation it loads the agent's record (a shared store also records the
    node as the agent's holder); every save names the version it read or last
    wrote, and a store refuses a save over any other version, or, in a shared
    store, from a node that no longer holds the agent. Implementations must be
    safe to call from many tasks of one event loop at once.
    """

    @abstractmethod
    async def open(self, holder: str) -> None:
        """Prepare the store (connect, create tables) for the node `holder`.

        Raises:
            Unavailable: the store cannot be reached.
        """

    @abstractmethod
    async def load(self, agent: AgentId) -> StoredState:
        """The stored state of `agent`, claiming it for this node in a shared store."""

    @abstractmethod
    async def save(
        self, agent: AgentId, state: Mapping[str, Any], version: int, *, release: bool = False
    ) -> int:
        """Write `state` over `version` and return the new version.

        Args:
            agent: the agent whose state it is.
            state: what its `save_state()` returned (JSON-compatible).
            version: the version this node loaded or last wrote (0: none).
            release: this node lets the agent go (passivation, stop); a shared
                store lets another node claim it at once.

        Raises:
            StaleState: the store holds another version, or another holder.
            InvalidArgument: `state` is not JSON-compatible.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release connections (and, in a shared store, this node's lease)."""


def encode_state(agent: AgentId, state: Mapping[str, Any]) -> str:
    """The JSON text a store keeps for `state`."""
    try:
        return json.dumps(dict(state), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"the state of {agent} is not JSON-compatible ({exc}); save_state() must return "
            "a mapping of JSON values"
        ) from exc


def decode_state(text: str | None) -> Mapping[str, Any] | None:
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


def stale(agent: AgentId, version: int, found: tuple[int, str] | None, holder: str) -> StaleState:
    """The error of a refused save, saying what the store holds instead."""
    if found is None:
        now = "no record of it"
    else:
        current, held_by = found
        now = f"version {current}"
        if held_by and held_by != holder:
            now += f", held by node {held_by!r}"
    return StaleState(
        f"the state of {agent} was not saved: this node ({holder!r}) had version {version}, "
        f"the store has {now}; another node took the agent over, so this copy is discarded",
        metadata={"agent_type": agent.type, "node_id": holder},
    )
