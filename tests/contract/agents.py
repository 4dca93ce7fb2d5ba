"""Agents of the runtime contract suite.

They observe only through messages (replies and a report message), so the same
suite runs whether the agents share the test's process or live on other nodes.
The one exception is `Witness`, which the runtime under test hosts itself: it
notes what it receives in this process's memory, readable after a stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ravi import (
    AgentId,
    BaseAgent,
    MessageContext,
    TopicId,
    message_handler,
    message_type,
    type_subscription,
)
from ravi.errors import InvalidArgument


@message_type("contract.Ping")
@dataclass
class Ping:
    text: str
    seq: int = 0


@message_type("contract.Silent")
@dataclass
class Silent:
    """A message whose handler returns nothing."""


@message_type("contract.Unhandled")
@dataclass
class Unhandled:
    """A message no agent handles."""


@message_type("contract.Fail")
@dataclass
class Fail:
    kind: str
    text: str


@message_type("contract.Sleep")
@dataclass
class Sleep:
    seconds: float
    tag: str = ""


@message_type("contract.Call")
@dataclass
class Call:
    """Ask the receiver to send `then` (or a Ping) to the target and return the reply."""

    target_type: str
    target_key: str
    text: str = ""
    timeout: float | None = None
    then: Call | Sleep | None = None


@message_type("contract.Report")
@dataclass
class Report:
    """Ask an agent for what it observed."""


@message_type("contract.Observed")
@dataclass
class Observed:
    agent: str
    handled: list[str] = field(default_factory=list)
    max_concurrency: int = 0
    cancelled: list[str] = field(default_factory=list)
    remaining: list[float] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    count: int = 0


@message_type("contract.Step")
@dataclass
class Step:
    name: str
    value: int


@message_type("contract.StepResult")
@dataclass
class StepResult:
    value: int
    key: str
    calls: int


@message_type("contract.Await")
@dataclass
class Await:
    promise: str
    timeout: float | None = None


@message_type("contract.Publish")
@dataclass
class Publish:
    topic_type: str
    topic_source: str
    text: str


@message_type("contract.SetState")
@dataclass
class SetState:
    value: str


@message_type("contract.Base")
@dataclass
class Base:
    text: str


@message_type("contract.Derived")
@dataclass
class Derived(Base):
    extra: int = 0


class Recorder(BaseAgent):
    """Remembers what it handled and how; the workhorse of the suite."""

    def __init__(self) -> None:
        self.observed: Observed | None = None
        self.running = 0
        self.state_value = ""

    def _observed(self) -> Observed:
        if self.observed is None:
            self.observed = Observed(agent=str(self.id))
        return self.observed

    def _note(self, what: str, ctx: MessageContext) -> None:
        seen = self._observed()
        seen.handled.append(what)
        seen.count += 1
        seen.senders.append(str(ctx.sender) if ctx.sender else "")
        seen.topics.append(str(ctx.topic) if ctx.topic else "")

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> Ping:
        self._note(f"ping:{message.text}:{message.seq}", ctx)
        return Ping(f"{message.text}@{self.id}", message.seq)

    @message_handler
    async def on_silent(self, message: Silent, ctx: MessageContext) -> None:
        self._note("silent", ctx)

    @message_handler
    async def on_fail(self, message: Fail, ctx: MessageContext) -> None:
        self._note(f"fail:{message.kind}", ctx)
        if message.kind == "value":
            raise ValueError(message.text)
        if message.kind == "invalid":
            raise InvalidArgument(message.text)
        raise RuntimeError(message.text)

    @message_handler
    async def on_sleep(self, message: Sleep, ctx: MessageContext) -> str:
        seen = self._observed()
        self.running += 1
        seen.max_concurrency = max(seen.max_concurrency, self.running)
        remaining = ctx.time_remaining()
        if remaining is not None:
            seen.remaining.append(remaining)
        try:
            await asyncio.sleep(message.seconds)
        except asyncio.CancelledError:
            seen.cancelled.append(message.tag)
            raise
        finally:
            self.running -= 1
        self._note(f"sleep:{message.tag}", ctx)
        return message.tag

    @message_handler
    async def on_call(self, message: Call, ctx: MessageContext) -> Any:
        self._note(f"call:{message.target_type}/{message.target_key}", ctx)
        return await self.send_message(
            message.then if message.then is not None else Ping(message.text),
            AgentId(message.target_type, message.target_key),
            timeout=message.timeout,
        )

    @message_handler
    async def on_step(self, message: Step, ctx: MessageContext) -> StepResult:
        calls = 0

        def compute(value: int) -> int:
            nonlocal calls
            calls += 1
            return value * 2

        async def compute_async(value: int) -> int:
            nonlocal calls
            calls += 1
            return value + 1

        doubled = await ctx.step(f"{message.name}-sync", compute, message.value)
        result = await ctx.step(f"{message.name}-async", compute_async, doubled)
        return StepResult(result, ctx.idempotency_key(message.name), calls)

    @message_handler
    async def on_await(self, message: Await, ctx: MessageContext) -> Any:
        return await ctx.wait_for(message.promise, timeout=message.timeout)

    @message_handler
    async def on_publish(self, message: Publish, ctx: MessageContext) -> None:
        await self.publish_message(
            Ping(message.text), TopicId(message.topic_type, message.topic_source)
        )

    @message_handler
    async def on_set_state(self, message: SetState, ctx: MessageContext) -> None:
        self.state_value = message.value

    @message_handler
    async def on_base(self, message: Base, ctx: MessageContext) -> str:
        self._note(f"base:{type(message).__name__}", ctx)
        return f"base handled {type(message).__name__}"

    @message_handler
    async def on_report(self, message: Report, ctx: MessageContext) -> Observed:
        return self._observed()

    async def save_state(self) -> Mapping[str, Any]:
        # What it observed is state too: RestateRuntime builds a fresh instance
        # for every message, so only saved state outlives one.
        state: dict[str, Any] = {"value": self.state_value}
        if self.observed is not None:
            state["observed"] = dataclasses.asdict(self.observed)
        return state

    async def load_state(self, state: Mapping[str, Any]) -> None:
        self.state_value = str(state.get("value", ""))
        observed = state.get("observed")
        self.observed = Observed(**observed) if observed is not None else None


class ReentrantRecorder(Recorder):
    """A Recorder whose instances handle messages concurrently and may call themselves."""

    reentrant = True


@type_subscription("news")
class NewsReader(Recorder):
    """Subscribed to the "news" topic type by its class decorator."""


class Flaky(BaseAgent):
    """A subscriber whose handler always fails."""

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> None:
        raise RuntimeError("flaky subscriber")


class Witness(BaseAgent):
    """Notes each Ping it receives in `Witness.seen`, taking a moment over each.

    Hosted by the runtime under test itself (never by another node), so what
    it saw stays readable once that runtime has stopped.
    """

    seen: ClassVar[list[str]] = []

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> None:
        await asyncio.sleep(0.01)
        Witness.seen.append(f"{ctx.topic}:{message.text}:{message.seq}")


AGENT_TYPES: dict[str, type[BaseAgent]] = {
    "recorder": Recorder,
    "other": Recorder,
    "third": Recorder,
    "reentrant": ReentrantRecorder,
    "news_reader": NewsReader,
    "flaky": Flaky,
}
"""Agent type name -> class, as the suite registers them."""
