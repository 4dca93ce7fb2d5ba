"""Agents the A2A tests serve through the gateway, and their cards."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from ravi import AgentId, BaseAgent, MessageContext, message_handler, message_type
from ravi.a2a.v1 import a2a_pb2 as rpb
from ravi.agents import ReActAgent
from ravi.errors import InvalidArgument
from ravi.examples.v1 import examples_pb2 as ex
from ravi.integrations.a2a import A2AAgent, ExposedAgent
from ravi.models import ChatMessage, ScriptedModel, ToolCall
from ravi.runtime import BaseRuntime
from ravi.server import demo_setup
from ravi.server._demo import look_up, send_report
from ravi.tools import tool


class Librarian(BaseAgent):
    """Librarian finds ravi's notes on a query."""

    @message_handler
    async def on_search(self, query: ex.SearchQuery, ctx: MessageContext) -> ex.SearchResult:
        """Search the notes; `limit` caps the hits."""
        if not query.query:
            raise InvalidArgument("the query is empty")
        if query.query == "boom":
            raise RuntimeError("the shelf fell over")
        hits = [
            ex.SearchHit(source=f"note-{i}", snippet=f"{query.query} #{i}", score=1.0 / i)
            for i in range(1, (query.limit or 1) + 1)
        ]
        return ex.SearchResult(query=query.query, hits=hits, searcher=self.id.key)


@tool
async def wait_a_while(seconds: float) -> str:
    """Wait, as a long tool call does.

    Args:
        seconds: how long to wait.
    """
    await asyncio.sleep(seconds)
    return f"waited {seconds} s"


def _slow_step(messages: Sequence[ChatMessage]) -> ChatMessage:
    return ChatMessage.assistant("Waiting.", (ToolCall.of("wait_a_while", {"seconds": 120}),))


def _done(messages: Sequence[ChatMessage]) -> ChatMessage:
    return ChatMessage.assistant("Done waiting.")


async def setup(runtime: BaseRuntime) -> None:
    """The demo assistant, the librarian, and "slowpoke", whose one tool call takes minutes."""
    await demo_setup(runtime, "assistant")
    await Librarian.register(runtime, "librarian")
    await ReActAgent.register(
        runtime,
        "slowpoke",
        lambda: ReActAgent(ScriptedModel([_slow_step, _done], name="slow"), [wait_a_while]),
    )


librarian = ExposedAgent("librarian", Librarian)
slowpoke = ExposedAgent("slowpoke", ReActAgent, tools=[wait_a_while], description="Waits a while.")
assistant = ExposedAgent(
    "assistant",
    ReActAgent,
    tools=[look_up, send_report],
    description="The demo assistant: looks up ravi's notes and e-mails reports.",
)


@message_type("a2a_tests.PlanTrip")
@dataclass
class PlanTrip:
    """Plan a trip to a city."""

    city: str


class TripPlanner(BaseAgent):
    """TripPlanner asks the weather agent, an A2A agent, before it plans a trip."""

    @message_handler
    async def on_plan(self, trip: PlanTrip, ctx: MessageContext) -> str:
        ask = rpb.SendRequest(parts=[rpb.Part(text=trip.city)])
        reply = await self.send_message(ask, AgentId("weather", self.id.key))
        return f"Pack for this: {reply.text}"


async def remote_weather(
    runtime: BaseRuntime, card_url: str, token: str = "", binding: str = ""
) -> None:
    """Register the A2A sample agent at `card_url` as "weather", and "planner", which asks it."""
    bindings = [binding] if binding else None
    await A2AAgent.register(
        runtime, "weather", lambda: A2AAgent(card_url, token=token or None, bindings=bindings)
    )
    await TripPlanner.register(runtime, "planner")
