"""LocalRuntime specifics: lifecycle, overload behaviour, logging of subscriber failures."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import ClassVar

import pytest

from ravi import (
    AgentId,
    BaseAgent,
    MessageContext,
    TopicId,
    TypeSubscription,
    _host,
    message_handler,
)
from ravi.errors import AlreadyExists, Cancelled, DeadlineExceeded, MailboxFull, Unavailable
from ravi.runtime import LocalRuntime


@dataclass
class Job:
    seconds: float
    items: list[str]


class Worker(BaseAgent):
    handled: ClassVar[list[str]] = []

    @message_handler
    async def on_job(self, message: Job, ctx: MessageContext) -> Job:
        await asyncio.sleep(message.seconds)
        Worker.handled.append(str(self.id))
        return message


class Broken(BaseAgent):
    @message_handler
    async def on_job(self, message: Job, ctx: MessageContext) -> None:
        raise KeyError("missing")


@pytest.fixture(autouse=True)
def _reset() -> None:
    Worker.handled = []


async def make(**kwargs: float) -> LocalRuntime:
    runtime = LocalRuntime(**kwargs)  # type: ignore[arg-type]
    await Worker.register(runtime, "worker")
    await Broken.register(runtime, "broken")
    await runtime.add_subscription(TypeSubscription("jobs", "worker"))
    await runtime.add_subscription(TypeSubscription("jobs", "broken"))
    await runtime.add_subscription(TypeSubscription("jobs", "ghost"))
    return runtime


async def test_calls_before_start_fail_clearly() -> None:
    runtime = await make()
    with pytest.raises(Unavailable, match=r"call `await runtime.start\(\)` first"):
        await runtime.send_message(Job(0, []), AgentId("worker", "a"))
    with pytest.raises(Unavailable):
        await runtime.publish_message(Job(0, []), TopicId("jobs", "a"))


async def test_wait_until_ready_says_what_it_waited_for() -> None:
    runtime = await make()
    with pytest.raises(TimeoutError, match=r"did not start within 0.05 s: call start\(\) first"):
        await runtime.wait_until_ready("worker", timeout=0.05)
    async with runtime:
        await runtime.wait_until_ready("worker", "broken", timeout=5)
        with pytest.raises(
            TimeoutError,
            match=r'agent type "writer" not registered after 0.05 s; '
            r"registered types: broken, worker",
        ):
            await runtime.wait_until_ready("worker", "writer", timeout=0.05)


async def test_messages_pass_by_reference() -> None:
    job = Job(0, ["x"])
    async with await make() as runtime:
        assert await runtime.send_message(job, AgentId("worker", "a")) is job


async def test_stop_cancels_running_and_queued_calls() -> None:
    runtime = await make()
    await runtime.start()
    agent = AgentId("worker", "a")
    running = asyncio.ensure_future(runtime.send_message(Job(10, []), agent))
    queued = asyncio.ensure_future(runtime.send_message(Job(0, []), agent))
    await asyncio.sleep(0.05)
    await runtime.stop()
    for call in (running, queued):
        with pytest.raises(Cancelled):
            await call
    with pytest.raises(Unavailable):
        await runtime.send_message(Job(0, []), agent)


async def test_stop_delivers_publications_behind_a_cancelled_call() -> None:
    runtime = await make()
    await runtime.start()
    agent = AgentId("worker", "mixed")
    running = asyncio.ensure_future(runtime.send_message(Job(10, []), agent))
    await asyncio.sleep(0.05)
    await runtime.publish_message(Job(0.01, []), TopicId("jobs", "mixed"))
    async with asyncio.timeout(5):
        await runtime.stop()
    with pytest.raises(Cancelled):
        await running
    assert Worker.handled == ["worker/mixed"]  # the publication, not the cancelled send


async def test_stop_cancels_deliveries_still_running_after_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = await make(grace_period=0.2)
    await runtime.start()
    await runtime.publish_message(Job(30, []), TopicId("jobs", "slow"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await runtime.stop()
    assert loop.time() - started < 5
    assert Worker.handled == []
    assert "still queued or running after the grace period of 0.2 s" in caplog.text


def test_grace_period_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="grace_period must not be negative"):
        LocalRuntime(grace_period=-1)


async def test_stop_when_idle_lets_queued_work_finish() -> None:
    runtime = await make()
    await runtime.start()
    for i in range(5):
        await runtime.publish_message(Job(0.02, []), TopicId("jobs", f"s{i}"))
    await runtime.stop_when_idle(timeout=5)
    assert sorted(Worker.handled) == [f"worker/s{i}" for i in range(5)]


async def test_stop_when_idle_gives_up_after_its_timeout() -> None:
    runtime = await make()
    await runtime.start()
    call = asyncio.ensure_future(runtime.send_message(Job(10, []), AgentId("worker", "a")))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceeded, match=r"1 message\(s\) still queued or running"):
        await runtime.stop_when_idle(timeout=0.1)
    await runtime.stop()
    with pytest.raises(Cancelled):
        await call


async def test_publish_waits_for_room_then_fails_at_its_deadline() -> None:
    async with await make(mailbox_capacity=2) as runtime:
        topic = TopicId("jobs", "full")
        await runtime.publish_message(Job(0.3, []), topic)
        await runtime.publish_message(Job(0.3, []), topic)
        # Back-pressure: the third publish waits until the worker takes one.
        await asyncio.wait_for(runtime.publish_message(Job(0.3, []), topic), 2)
        await runtime.publish_message(Job(0, []), topic, timeout=2)
        with pytest.raises(MailboxFull, match="stayed full"):
            await runtime.publish_message(Job(0, []), topic, timeout=0.05)


async def test_failing_subscriber_and_unregistered_type_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ravi")
    async with await make() as runtime:
        await runtime.publish_message(Job(0, []), TopicId("jobs", "log"))
        await runtime.stop_when_idle(timeout=5)
    assert Worker.handled == ["worker/log"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("names agent type 'ghost', which is not registered" in m for m in messages)
    failure = next(r for r in caplog.records if "handler of broken/log failed" in r.getMessage())
    assert failure.exc_info is not None
    assert "missing" in str(failure.exc_info[1])


async def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="default_timeout must be positive"):
        LocalRuntime(default_timeout=0)
    with pytest.raises(ValueError, match="mailbox_capacity must be at least 1"):
        LocalRuntime(mailbox_capacity=0)


async def test_deadline_bookkeeping_stays_bounded() -> None:
    async with await make() as runtime:
        for _ in range(5000):
            await runtime.send_message(Job(0, []), AgentId("worker", "a"))
        deadlines = runtime._host._deadlines
        assert deadlines is not None
        assert deadlines.live == 0
        assert len(deadlines.heap) <= 1025


async def test_resolved_promises_are_remembered_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_host, "MAX_RESOLVED_PROMISES", 3)
    runtime = LocalRuntime()
    async with runtime:
        for i in range(5):
            await runtime.resolve_promise(f"p{i}", i)
        with pytest.raises(AlreadyExists):
            await runtime.resolve_promise("p4", "again")
        assert len(runtime._host._promises) == 3
        await runtime.resolve_promise("p0", "forgotten, so accepted")
