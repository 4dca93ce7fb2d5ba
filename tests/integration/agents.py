"""Agents the mesh integration tests host on `ravi node` processes."""

from __future__ import annotations

from dataclasses import dataclass

from ravi import BaseAgent, MessageContext, message_handler, message_type
from ravi.runtime import BaseRuntime
from ravi.testing import ConformanceAgent


@message_type("integration.RegisterType")
@dataclass
class RegisterType:
    """Ask the registrar to register the conformance agent under a new type."""

    agent_type: str


class Registrar(BaseAgent):
    """Registers agent types on its node while the node runs."""

    @message_handler
    async def on_register(self, message: RegisterType, ctx: MessageContext) -> str:
        await ConformanceAgent.register(self.runtime, message.agent_type)
        return message.agent_type


async def registrar(runtime: BaseRuntime) -> None:
    await Registrar.register(runtime, "registrar")
