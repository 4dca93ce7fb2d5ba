"""The counter agent: state that must survive passivation, restarts, kills and rebalancing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ravi._agent import BaseAgent, message_handler
from ravi._context import MessageContext
from ravi.conformance.v1.conformance_pb2 import Count, Counted, ReadCount
from ravi.runtime import BaseRuntime


class CounterAgent(BaseAgent):
    """CounterAgent keeps the ids of the increments (`Count`) it applied, as its state.

    Every language's conformance node hosts it (`counter_setup` here), so one
    test can tell, after kills, restarts and keys moving between nodes, whether
    an acknowledged increment was lost (its id is missing) or applied twice
    (its id appears twice).
    """

    def __init__(self) -> None:
        self.ids: list[str] = []

    def _node_id(self) -> str:
        return str(getattr(self.runtime, "node_id", "local"))

    @message_handler
    async def on_count(self, message: Count, ctx: MessageContext) -> Counted:
        self.ids.append(message.id)
        return Counted(total=len(self.ids), node_id=self._node_id())

    @message_handler
    async def on_read(self, message: ReadCount, ctx: MessageContext) -> Counted:
        return Counted(total=len(self.ids), node_id=self._node_id(), ids=self.ids)

    async def save_state(self) -> Mapping[str, Any]:
        return {"ids": self.ids}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        self.ids = [str(i) for i in state.get("ids", [])]


async def counter_setup(runtime: BaseRuntime, counter_type: str = "counter") -> None:
    """Register the counter agent type on `runtime` (`--setup-arg counter_type=NAME`)."""
    await CounterAgent.register(runtime, counter_type)
