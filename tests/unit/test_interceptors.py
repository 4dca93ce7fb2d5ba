"""Interceptors see every send, handler call and publish, in order, with their inputs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from ravi import (
    AgentId,
    BaseAgent,
    HandleInput,
    Interceptor,
    MessageContext,
    PublishInput,
    SendInput,
    TopicId,
    TypeSubscription,
    message_handler,
)
from ravi.errors import HandlerFailed
from ravi.runtime import LocalRuntime


@dataclass
class Echo:
    text: str


class EchoAgent(BaseAgent):
    @message_handler
    async def on_echo(self, message: Echo, ctx: MessageContext) -> dict[str, str]:
        if message.text == "fail":
            raise ValueError("failing on purpose")
        return dict(ctx.metadata)


class Recording(Interceptor):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def send(self, input: SendInput, next: Callable[[SendInput], Awaitable[Any]]) -> Any:
        self.log.append(f"{self.name}:send:{input.recipient}")
        input.metadata[f"{self.name}-mark"] = input.message_id
        try:
            return await next(input)
        finally:
            self.log.append(f"{self.name}:sent")

    async def handle(
        self, input: HandleInput, next: Callable[[HandleInput], Awaitable[Any]]
    ) -> Any:
        self.log.append(f"{self.name}:handle:{input.agent_id}:{type(input.message).__name__}")
        return await next(input)

    async def publish(
        self, input: PublishInput, next: Callable[[PublishInput], Awaitable[None]]
    ) -> None:
        self.log.append(f"{self.name}:publish:{input.topic}")
        await next(input)


async def test_interceptors_wrap_in_order_and_carry_metadata() -> None:
    log: list[str] = []
    runtime = LocalRuntime(interceptors=[Recording("outer", log), Recording("inner", log)])
    await EchoAgent.register(runtime, "echo")
    await runtime.add_subscription(TypeSubscription("t", "echo"))
    async with runtime:
        metadata = await runtime.send_message(
            Echo("hi"), AgentId("echo", "a"), message_id="m-1", metadata={"tenant": "acme"}
        )
        assert metadata == {"tenant": "acme", "outer-mark": "m-1", "inner-mark": "m-1"}
        assert log == [
            "outer:send:echo/a",
            "inner:send:echo/a",
            "outer:handle:echo/a:Echo",
            "inner:handle:echo/a:Echo",
            "inner:sent",
            "outer:sent",
        ]
        log.clear()
        await runtime.publish_message(Echo("news"), TopicId("t", "b"))
        await runtime.stop_when_idle(timeout=5)
    assert log == [
        "outer:publish:t/b",
        "inner:publish:t/b",
        "outer:handle:echo/b:Echo",
        "inner:handle:echo/b:Echo",
    ]


async def test_errors_pass_through_interceptors_unchanged() -> None:
    log: list[str] = []
    runtime = LocalRuntime(interceptors=[Recording("only", log)])
    await EchoAgent.register(runtime, "echo")
    async with runtime:
        with pytest.raises(HandlerFailed, match="failing on purpose"):
            await runtime.send_message(Echo("fail"), AgentId("echo", "a"))
    assert log[-1] == "only:sent"


class ReadsId(Interceptor):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def send(self, input: SendInput, next: Callable[[SendInput], Awaitable[Any]]) -> Any:
        self.seen.append(input.message_id)
        return next(input)


class IdAgent(BaseAgent):
    @message_handler
    async def on_echo(self, message: Echo, ctx: MessageContext) -> str:
        return ctx.message_id


async def test_a_message_id_read_by_a_hook_is_the_one_the_handler_sees() -> None:
    # SendInput makes the id when first read: a hook that reads it and the
    # handler see the same one; unread, the handler still gets a unique id.
    for reads in (ReadsId(), None):
        runtime = LocalRuntime(interceptors=[reads or Interceptor()])
        await IdAgent.register(runtime, "ids")
        async with runtime:
            first = await runtime.send_message(Echo("a"), AgentId("ids", "a"))
            second = await runtime.send_message(Echo("b"), AgentId("ids", "a"))
            given = await runtime.send_message(Echo("c"), AgentId("ids", "a"), message_id="m-9")
        assert first
        assert second
        assert first != second
        assert given == "m-9"
        if reads is not None:
            assert reads.seen == [first, second, "m-9"]


def test_a_send_input_compares_and_prints_as_its_fields() -> None:
    one = SendInput(Echo("a"), AgentId("echo", "a"), None, "m-1", {"k": "v"}, 2.0)
    same = SendInput(Echo("a"), AgentId("echo", "a"), None, "m-1", {"k": "v"}, 2.0)
    assert one == same
    assert one != SendInput(Echo("a"), AgentId("echo", "a"), None, "m-2", {"k": "v"}, 2.0)
    assert "message_id='m-1'" in repr(one)
    assert SendInput(Echo("a"), AgentId("echo", "a"), None).metadata == {}
