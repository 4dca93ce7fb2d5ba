"""The conformance agent in Python (proto/ravi/conformance/v1/conformance.proto).

Every node implementation hosts this agent so that one protocol conformance
suite can drive any of them: `ravi node --setup ravi.testing:conformance_setup`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import ClassVar

from ravi._agent import BaseAgent, message_handler
from ravi._context import MessageContext
from ravi._ids import AgentId
from ravi._subscriptions import TypeSubscription
from ravi.conformance.v1.conformance_pb2 import (
    Echo,
    Echoed,
    Fail,
    Forward,
    Observed,
    Report,
    Sleep,
    Slept,
)
from ravi.errors import Code, error_for
from ravi.mesh.v1.types_pb2 import AgentId as WireAgentId
from ravi.runtime import BaseRuntime

EVENTS_TOPIC = "conformance.events"


class ConformanceError(Exception):
    """The ordinary exception a Fail with code 0 raises."""


def _wire(agent: AgentId) -> WireAgentId:
    return WireAgentId(type=agent.type, key=agent.key)


class ConformanceAgent(BaseAgent):
    """Answers the conformance messages; what it observes is kept per agent id."""

    observed: ClassVar[defaultdict[AgentId, Observed]] = defaultdict(Observed)

    @property
    def _seen(self) -> Observed:
        return ConformanceAgent.observed[self.id]

    @message_handler
    async def on_echo(self, message: Echo, ctx: MessageContext) -> Echoed | None:
        if ctx.topic is not None:
            self._seen.events.append(message.text)
            return None
        return Echoed(
            text=message.text,
            agent=_wire(self.id),
            node_id=str(getattr(self.runtime, "node_id", "local")),
            language="python",
            sender=_wire(ctx.sender) if ctx.sender is not None else None,
            metadata=dict(ctx.metadata),
            message_id=ctx.message_id,
        )

    @message_handler
    async def on_fail(self, message: Fail, ctx: MessageContext) -> None:
        if message.code not in Code._value2member_map_:
            # 0 asks for an ordinary exception; a code outside 1..16 cannot be a Code, so
            # it fails as an ordinary exception too: UNKNOWN / HANDLER_FAILED either way.
            raise ConformanceError(message.message)
        raise error_for(Code(message.code), message.message)

    @message_handler
    async def on_sleep(self, message: Sleep, ctx: MessageContext) -> Slept:
        try:
            await asyncio.sleep(message.millis / 1000)
        except asyncio.CancelledError:
            self._seen.cancelled.append(message.tag)
            raise
        return Slept(tag=message.tag)

    @message_handler
    async def on_forward(self, message: Forward, ctx: MessageContext) -> Echoed:
        reply = await self.send_message(
            Echo(text=message.text), AgentId(message.target.type, message.target.key)
        )
        assert isinstance(reply, Echoed)
        return reply

    @message_handler
    async def on_report(self, message: Report, ctx: MessageContext) -> Observed:
        return self._seen


async def conformance_setup(runtime: BaseRuntime, agent_type: str = "conformance") -> None:
    """Register the conformance agent type and its subscription on `runtime`."""
    await ConformanceAgent.register(runtime, agent_type)
    await runtime.add_subscription(TypeSubscription(EVENTS_TOPIC, agent_type))
