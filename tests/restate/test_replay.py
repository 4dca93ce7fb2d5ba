"""Durable means deterministic: a replay journals exactly what the first attempt did.

Restate suspends an invocation that waits (here after one second) and replays
it from its journal when the wait is over. Any agent must then make the same
calls with the same arguments: RestateRuntime builds a fresh instance from the
object state on every attempt, so what an instance keeps in memory cannot leak
from one attempt into the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ravi import (
    AgentId,
    BaseAgent,
    MessageContext,
    TopicId,
    TypeSubscription,
    message_handler,
    message_type,
)
from ravi.integrations.runtime.restate import RestateRuntime
from ravi.testing import RestateServer, eventually
from tests.restate.processes import invocation_statuses, restate_server

pytestmark = [pytest.mark.restate, pytest.mark.timeout(120)]


@message_type("replay.Start")
@dataclass
class Start:
    promise: str


@message_type("replay.Note")
@dataclass
class Note:
    text: str


class Forgetful(BaseAgent):
    """Keeps a counter in memory only: it is 1 on every attempt of a message, or replay breaks."""

    def __init__(self) -> None:
        self.attempts = 0

    @message_handler
    async def on_start(self, message: Start, ctx: MessageContext) -> str:
        self.attempts += 1
        first = await ctx.step("first", lambda: f"step ran in attempt {self.attempts}")
        # A one-way send whose body comes from memory: a mismatch on replay if memory leaked.
        await self.publish_message(Note(f"attempt {self.attempts}"), TopicId("notes", self.id.key))
        answer = await ctx.wait_for(message.promise)
        return f"{first}; resumed in attempt {self.attempts}; {answer}"


class Notebook(BaseAgent):
    """Keeps the notes it receives, in its state."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    @message_handler
    async def on_note(self, note: Note, ctx: MessageContext) -> None:
        self.notes.append(note.text)

    async def save_state(self) -> Mapping[str, Any]:
        return {"notes": self.notes}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        self.notes = list(state["notes"])


@pytest_asyncio.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[tuple[RestateServer, RestateRuntime]]:
    server = restate_server(tmp_path / "restate")
    await server.start()
    try:
        durable = RestateRuntime(server.ingress_url, server.admin_url, listen="127.0.0.1:0")
        await Forgetful.register(durable, "forgetful")
        await Notebook.register(durable, "notebook")
        await durable.add_subscription(TypeSubscription("notes", "notebook"))
        async with durable:
            yield server, durable
    finally:
        await server.stop()


async def test_a_replay_after_suspension_sees_a_fresh_instance(
    runtime: tuple[RestateServer, RestateRuntime],
) -> None:
    server, durable = runtime
    reply = asyncio.ensure_future(
        durable.send_message(Start("go-on"), AgentId("forgetful", "k"), timeout=60)
    )

    async def suspended() -> None:
        assert await invocation_statuses(server, "forgetful") == ["suspended"]

    await eventually(suspended, timeout=30, interval=0.2)
    await durable.resolve_promise("go-on", "answered")
    assert await reply == "step ran in attempt 1; resumed in attempt 1; answered"
    notes = await durable.agent_save_state(AgentId("notebook", "k"))
    assert notes == {"notes": ["attempt 1"]}  # sent once, journaled once
