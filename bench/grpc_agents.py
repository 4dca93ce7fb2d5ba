"""The agents of node B in the gRPC benchmark (`ravi node --setup grpc_agents:setup`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ravi import BaseAgent, MessageContext, TypeSubscription, message_handler, message_type
from ravi.runtime import BaseRuntime


@message_type("bench.Ping")
@dataclass
class Ping:
    text: str
    seq: int


@message_type("bench.Arm")
@dataclass
class Arm:
    target: int


@message_type("bench.Wait")
@dataclass
class Wait:
    pass


@message_type("bench.Done")
@dataclass
class Done:
    count: int
    t_last: float


class Counter:
    count = 0
    target = 0
    t_last = 0.0
    done: asyncio.Event | None = None


class Echo(BaseAgent):
    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> Ping:
        return message


class Sub(BaseAgent):
    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> None:
        Counter.count += 1
        if Counter.count == Counter.target:
            Counter.t_last = time.monotonic()
            assert Counter.done is not None
            Counter.done.set()


class Ctl(BaseAgent):
    @message_handler
    async def on_arm(self, message: Arm, ctx: MessageContext) -> Done:
        Counter.count, Counter.target, Counter.done = 0, message.target, asyncio.Event()
        return Done(0, 0.0)

    @message_handler
    async def on_wait(self, message: Wait, ctx: MessageContext) -> Done:
        assert Counter.done is not None
        await Counter.done.wait()
        return Done(Counter.count, Counter.t_last)


async def setup(runtime: BaseRuntime) -> None:
    await Echo.register(runtime, "echo")
    await Ctl.register(runtime, "ctl")
    await Sub.register(runtime, "sub")
    await runtime.add_subscription(TypeSubscription("fan", "sub"))
