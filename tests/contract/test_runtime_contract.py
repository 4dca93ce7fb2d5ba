"""The runtime contract: every runtime must pass these, through BaseRuntime only.

Rows of DESIGN.md section 3's guarantees table and the errors of section 2 that
can arise on the runtime under test. Where a runtime is weaker by design, the
test asserts the documented behaviour of each.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ravi import AgentId, CancellationToken, TopicId, TypeSubscription
from ravi.errors import (
    AgentTypeNotFound,
    AlreadyExists,
    BadId,
    Cancelled,
    Code,
    DeadlineExceeded,
    HandlerFailed,
    InvalidArgument,
    MailboxFull,
    NoHandler,
    NotFound,
    ReentrantCall,
)
from ravi.integrations.runtime.restate import RestateRuntime
from ravi.runtime import BaseRuntime
from ravi.testing import eventually
from tests.contract.agents import (
    Await,
    Base,
    Call,
    Derived,
    Fail,
    Observed,
    Ping,
    Publish,
    Report,
    SetState,
    Silent,
    Sleep,
    Step,
    StepResult,
    Unhandled,
    Witness,
)
from tests.contract.conftest import MAILBOX_CAPACITY, worker_like

pytestmark = pytest.mark.timeout(60)


async def report(runtime: BaseRuntime, agent: AgentId) -> Observed:
    observed = await runtime.send_message(Report(), agent)
    assert isinstance(observed, Observed)
    return observed


def durable(runtime: BaseRuntime) -> bool:
    """RestateRuntime differs by design in the rows that check for it (docs/restate.md)."""
    return isinstance(runtime, RestateRuntime)


async def handler_stopped(runtime: BaseRuntime, agent: AgentId, tag: str) -> None:
    """How the handler of a call its caller gave up on ends.

    Local and gRPC cancel it (it sees CancelledError). Restate cancels the
    invocation, which a handler notices at its next durable operation (a step,
    send, publish or wait): the test's Sleep has none, so it runs to its end.
    """

    async def stopped() -> None:
        observed = await report(runtime, agent)
        if durable(runtime):
            assert (observed.cancelled, observed.handled) == ([], [f"sleep:{tag}"])
        else:
            assert observed.cancelled == [tag]

    await eventually(stopped, timeout=10)


# --- send: replies and errors ------------------------------------------------------


async def test_send_returns_the_handlers_typed_reply(runtime: BaseRuntime) -> None:
    reply = await runtime.send_message(Ping("hello", 7), AgentId("recorder", "a"))
    assert reply == Ping("hello@recorder/a", 7)


async def test_handler_returning_nothing_replies_none(runtime: BaseRuntime) -> None:
    assert await runtime.send_message(Silent(), AgentId("recorder", "a")) is None


async def test_unknown_agent_type_is_not_found(runtime: BaseRuntime) -> None:
    with pytest.raises(AgentTypeNotFound) as caught:
        await runtime.send_message(Ping("x"), AgentId("nobody", "a"))
    assert caught.value.code is Code.NOT_FOUND
    assert caught.value.reason == "AGENT_TYPE_NOT_FOUND"
    assert "nobody" in str(caught.value)


async def test_message_without_handler_is_unimplemented(runtime: BaseRuntime) -> None:
    with pytest.raises(NoHandler) as caught:
        await runtime.send_message(Unhandled(), AgentId("recorder", "a"))
    assert caught.value.code is Code.UNIMPLEMENTED
    assert caught.value.reason == "NO_HANDLER"
    assert "Unhandled" in str(caught.value)


async def test_handler_exception_reaches_caller_with_type_and_message(
    runtime: BaseRuntime,
) -> None:
    with pytest.raises(HandlerFailed) as caught:
        await runtime.send_message(Fail("value", "the answer is 41"), AgentId("recorder", "a"))
    error = caught.value
    assert error.code is Code.UNKNOWN
    assert error.reason == "HANDLER_FAILED"
    assert error.exception_type == "ValueError"
    assert error.exception_message == "the answer is 41"
    assert "the answer is 41" in str(error)


async def test_ravi_error_raised_by_handler_keeps_its_type_and_code(
    runtime: BaseRuntime,
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await runtime.send_message(Fail("invalid", "quantity < 0"), AgentId("recorder", "a"))
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert str(caught.value) == "quantity < 0"


async def test_failing_handler_leaves_the_agent_serving(runtime: BaseRuntime) -> None:
    agent = AgentId("recorder", "resilient")
    with pytest.raises(HandlerFailed):
        await runtime.send_message(Fail("runtime", "boom"), agent)
    assert (await runtime.send_message(Ping("after"), agent)).text == "after@recorder/resilient"


async def test_message_subclass_routes_to_base_type_handler(runtime: BaseRuntime) -> None:
    reply = await runtime.send_message(Derived("d", extra=1), AgentId("recorder", "a"))
    assert reply == "base handled Derived"
    assert await runtime.send_message(Base("b"), AgentId("recorder", "a")) == ("base handled Base")


def test_empty_or_malformed_ids_are_refused() -> None:
    for make in (
        lambda: AgentId("", "k"),
        lambda: AgentId("type", ""),
        lambda: AgentId("bad type", "k"),
        lambda: AgentId("t", "line\nbreak"),
        lambda: TopicId("", "s"),
        lambda: TopicId("t", ""),
    ):
        with pytest.raises(BadId) as caught:
            make()
        assert caught.value.code is Code.INVALID_ARGUMENT
        assert caught.value.reason == "BAD_ID"


# --- mailboxes: one message at a time, in order; agents concurrent --------------------


async def test_each_agent_handles_one_message_at_a_time_in_order(runtime: BaseRuntime) -> None:
    agent = AgentId("recorder", "serial")
    tags = [f"m{i}" for i in range(12)]
    replies = await asyncio.gather(*(runtime.send_message(Sleep(0.01, tag), agent) for tag in tags))
    assert replies == tags
    observed = await report(runtime, agent)
    assert observed.max_concurrency == 1
    if durable(runtime):
        # Concurrent HTTP requests reach Restate's per-key queue in any order.
        assert sorted(observed.handled) == sorted(f"sleep:{tag}" for tag in tags)
    else:
        assert observed.handled == [f"sleep:{tag}" for tag in tags]


async def test_distinct_agents_run_concurrently(runtime: BaseRuntime) -> None:
    started = time.monotonic()
    await asyncio.gather(
        *(runtime.send_message(Sleep(0.3, f"k{i}"), AgentId("recorder", f"k{i}")) for i in range(5))
    )
    assert time.monotonic() - started < 1.2


async def test_instances_are_created_lazily_one_per_key(runtime: BaseRuntime) -> None:
    await runtime.send_message(Ping("one"), AgentId("recorder", "x"))
    await runtime.send_message(Ping("two"), AgentId("recorder", "x"))
    await runtime.send_message(Ping("three"), AgentId("recorder", "y"))
    x = await report(runtime, AgentId("recorder", "x"))
    y = await report(runtime, AgentId("recorder", "y"))
    assert (x.agent, x.count) == ("recorder/x", 2)
    assert (y.agent, y.count) == ("recorder/y", 1)


async def test_reentrant_agent_handles_messages_concurrently(runtime: BaseRuntime) -> None:
    agent = AgentId("reentrant", "r")
    seconds = 1.0 if durable(runtime) else 0.2
    started = time.monotonic()
    await asyncio.gather(*(runtime.send_message(Sleep(seconds, f"t{i}"), agent) for i in range(4)))
    if durable(runtime):
        # Each invocation has an instance of its own (nothing in memory is
        # shared between them), so the overlap shows in the time taken.
        assert time.monotonic() - started < 3.0
    else:
        assert (await report(runtime, agent)).max_concurrency == 4


async def test_full_mailbox_is_resource_exhausted(runtime: BaseRuntime) -> None:
    agent = AgentId("recorder", "busy")
    blocker = asyncio.ensure_future(runtime.send_message(Sleep(1.0, "blocker"), agent))
    await asyncio.sleep(0.1)
    sends = [
        asyncio.ensure_future(runtime.send_message(Sleep(0, f"s{i}"), agent))
        for i in range(MAILBOX_CAPACITY + 10)
    ]
    results = await asyncio.gather(*sends, return_exceptions=True)
    if durable(runtime):
        # Restate keeps each key's queue durably and without a bound: nothing is refused.
        assert results == [f"s{i}" for i in range(MAILBOX_CAPACITY + 10)]
        assert await blocker == "blocker"
        return
    full = [r for r in results if isinstance(r, MailboxFull)]
    handled = [r for r in results if isinstance(r, str)]
    assert len(full) >= 10
    assert len(full) + len(handled) == len(results)
    assert all(r.code is Code.RESOURCE_EXHAUSTED and r.reason == "MAILBOX_FULL" for r in full)
    assert await blocker == "blocker"
    # The agent keeps serving once its mailbox drains.
    assert (await runtime.send_message(Ping("later"), agent)).text == "later@recorder/busy"


# --- deadlock refusal -------------------------------------------------------------------


async def test_agent_calling_itself_fails_fast_with_reentrant_call(runtime: BaseRuntime) -> None:
    started = time.monotonic()
    with pytest.raises(ReentrantCall) as caught:
        await runtime.send_message(Call("recorder", "self", "hi"), AgentId("recorder", "self"))
    assert time.monotonic() - started < 2
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert caught.value.reason == "REENTRANT_CALL"


async def test_call_cycle_through_two_agents_fails_fast(runtime: BaseRuntime) -> None:
    # recorder/cycle asks other/b to call recorder/cycle back while it waits:
    # the cycle recorder/cycle -> other/b -> recorder/cycle is refused.
    started = time.monotonic()
    with pytest.raises(ReentrantCall) as caught:
        await runtime.send_message(
            Call("other", "b", then=Call("recorder", "cycle", "back")),
            AgentId("recorder", "cycle"),
        )
    assert time.monotonic() - started < 2
    assert "recorder/cycle -> other/b -> recorder/cycle" in str(caught.value)


async def test_reentrant_agent_may_call_itself(runtime: BaseRuntime) -> None:
    reply = await runtime.send_message(
        Call("reentrant", "loop", "hi"), AgentId("reentrant", "loop")
    )
    assert reply == Ping("hi@reentrant/loop", 0)


async def test_nested_sends_between_distinct_agents_work(runtime: BaseRuntime) -> None:
    reply = await runtime.send_message(Call("other", "b", "hop"), AgentId("recorder", "a"))
    assert reply == Ping("hop@other/b", 0)
    observed = await report(runtime, AgentId("other", "b"))
    assert observed.senders == ["recorder/a"]


# --- deadlines and cancellation -----------------------------------------------------------


async def test_deadline_fails_the_call_and_cancels_the_handler(runtime: BaseRuntime) -> None:
    agent = AgentId("recorder", "slow")
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        await runtime.send_message(Sleep(5, "late"), agent, timeout=0.2)
    assert 0.15 < time.monotonic() - started < 1.5
    assert caught.value.code is Code.DEADLINE_EXCEEDED
    await handler_stopped(runtime, agent, "late")


async def test_deadline_propagates_into_nested_sends(runtime: BaseRuntime) -> None:
    # recorder/outer has 0.5 s; its nested call asks for 30 s but inherits the
    # caller's remaining time, and the nested handler is cancelled with it.
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await runtime.send_message(
            Call("other", "inner", timeout=30, then=Sleep(5, "nested")),
            AgentId("recorder", "outer"),
            timeout=0.5,
        )
    assert time.monotonic() - started < 2

    await handler_stopped(runtime, AgentId("other", "inner"), "nested")
    observed = await report(runtime, AgentId("other", "inner"))
    assert 0 < observed.remaining[0] <= 0.5


async def test_handler_sees_the_callers_remaining_time(runtime: BaseRuntime) -> None:
    agent = AgentId("recorder", "timed")
    await runtime.send_message(Sleep(0, "t"), agent, timeout=2.0)
    remaining = (await report(runtime, agent)).remaining
    assert len(remaining) == 1
    assert 0 < remaining[0] <= 2.0


async def test_cancelling_the_caller_cancels_the_handler(runtime: BaseRuntime) -> None:
    agent = AgentId("recorder", "cancel-me")
    task = asyncio.ensure_future(runtime.send_message(Sleep(5, "c"), agent))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await handler_stopped(runtime, agent, "c")


async def test_cancellation_token_cancels_the_call(runtime: BaseRuntime) -> None:
    token = CancellationToken()
    agent = AgentId("recorder", "token")
    task = asyncio.ensure_future(runtime.send_message(Sleep(5, "tok"), agent, cancellation=token))
    await asyncio.sleep(0.2)
    token.cancel()
    with pytest.raises(Cancelled) as caught:
        await task
    assert caught.value.code is Code.CANCELLED
    await handler_stopped(runtime, agent, "tok")


async def test_queued_message_past_its_deadline_is_never_handled(runtime: BaseRuntime) -> None:
    agent = AgentId("recorder", "queue")
    blocker = asyncio.ensure_future(runtime.send_message(Sleep(0.5, "first"), agent))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceeded):
        await runtime.send_message(Sleep(0, "expired"), agent, timeout=0.1)
    assert await blocker == "first"
    assert (await report(runtime, agent)).handled == ["sleep:first"]


# --- publish / subscribe ---------------------------------------------------------------


async def test_publish_reaches_every_subscriber_keyed_by_topic_source(
    runtime: BaseRuntime,
) -> None:
    await runtime.publish_message(Ping("news", 1), TopicId("fan", "conv-1"))

    async def delivered() -> None:
        for agent in (AgentId("recorder", "conv-1"), AgentId("other", "conv-1")):
            observed = await report(runtime, agent)
            assert observed.handled == ["ping:news:1"]
            assert observed.topics == ["fan/conv-1"]

    await eventually(delivered)


async def test_prefix_subscription_matches_topic_types_by_prefix(runtime: BaseRuntime) -> None:
    await runtime.publish_message(Ping("cpu"), TopicId("alerts.cpu", "host-1"))
    await runtime.publish_message(Ping("other"), TopicId("alarms", "host-1"))

    async def delivered() -> None:
        assert (await report(runtime, AgentId("third", "host-1"))).handled == ["ping:cpu:0"]

    await eventually(delivered)


async def test_class_level_type_subscription(runtime: BaseRuntime) -> None:
    await runtime.publish_message(Ping("headline"), TopicId("news", "today"))

    async def delivered() -> None:
        observed = await report(runtime, AgentId("news_reader", "today"))
        assert observed.handled == ["ping:headline:0"]

    await eventually(delivered)


async def test_publish_skips_the_sender(runtime: BaseRuntime) -> None:
    # recorder/conv-2 publishes on fan/conv-2: other/conv-2 receives it, the
    # sender (also subscribed through "fan") does not.
    await runtime.send_message(Publish("fan", "conv-2", "mine"), AgentId("recorder", "conv-2"))

    async def delivered() -> None:
        other = await report(runtime, AgentId("other", "conv-2"))
        assert other.handled == ["ping:mine:0"]
        assert other.senders == ["recorder/conv-2"]

    await eventually(delivered)
    await asyncio.sleep(0.1)
    assert (await report(runtime, AgentId("recorder", "conv-2"))).handled == []


async def test_failing_subscriber_does_not_affect_the_others(runtime: BaseRuntime) -> None:
    for i in range(3):
        await runtime.publish_message(Ping("robust", i), TopicId("fan", "conv-3"))

    async def delivered() -> None:
        for agent in (AgentId("recorder", "conv-3"), AgentId("other", "conv-3")):
            assert (await report(runtime, agent)).count == 3

    await eventually(delivered)


async def test_subscriptions_can_be_added_and_removed(runtime: BaseRuntime) -> None:
    subscription = TypeSubscription("late", "recorder")
    await runtime.add_subscription(subscription)
    await runtime.publish_message(Ping("first"), TopicId("late", "s"))

    async def delivered() -> None:
        assert (await report(runtime, AgentId("recorder", "s"))).count == 1

    await eventually(delivered)
    await runtime.remove_subscription(subscription.id)
    await runtime.publish_message(Ping("second"), TopicId("late", "s"))
    await asyncio.sleep(0.2)
    assert (await report(runtime, AgentId("recorder", "s"))).count == 1
    with pytest.raises(NotFound):
        await runtime.remove_subscription(subscription.id)


async def test_stop_delivers_what_was_published_before_it(runtime: BaseRuntime) -> None:
    # A run publishes its last events and returns; `async with` stops the
    # runtime right after. Local and gRPC deliver them before stopping;
    # Restate holds them durably and delivers them once a worker is back.
    for seq in range(20):
        await runtime.publish_message(Ping("last words", seq), TopicId("flush", "run-1"))
    await runtime.stop()
    published = [f"flush/run-1:last words:{seq}" for seq in range(20)]
    if not durable(runtime):
        assert Witness.seen == published
        return
    assert isinstance(runtime, RestateRuntime)
    async with worker_like(runtime):

        async def delivered() -> None:
            assert sorted(set(Witness.seen)) == sorted(published)

        await eventually(delivered, timeout=30)


# --- durable hooks: step, wait_for ---------------------------------------------------------


async def test_step_runs_sync_and_async_functions(runtime: BaseRuntime) -> None:
    result = await runtime.send_message(Step("charge", 20), AgentId("recorder", "steps"))
    assert isinstance(result, StepResult)
    assert result.value == 41
    assert result.calls == 2
    assert result.key.endswith("/charge")


async def test_wait_for_returns_the_resolved_value(runtime: BaseRuntime) -> None:
    waiting = asyncio.ensure_future(
        runtime.send_message(Await("approval-1"), AgentId("recorder", "hitl"))
    )
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await runtime.resolve_promise("approval-1", {"action": "approve"})
    assert await waiting == {"action": "approve"}


async def test_promise_resolved_before_the_wait_is_not_lost(runtime: BaseRuntime) -> None:
    await runtime.resolve_promise("approval-early", "yes")
    reply = await runtime.send_message(Await("approval-early"), AgentId("recorder", "hitl"))
    assert reply == "yes"


async def test_second_resolution_of_a_promise_is_refused(runtime: BaseRuntime) -> None:
    await runtime.resolve_promise("approval-twice", 1)
    with pytest.raises(AlreadyExists) as caught:
        await runtime.resolve_promise("approval-twice", 2)
    assert caught.value.code is Code.ALREADY_EXISTS
    reply = await runtime.send_message(Await("approval-twice"), AgentId("recorder", "hitl"))
    assert reply == 1


async def test_wait_for_honours_its_timeout(runtime: BaseRuntime) -> None:
    with pytest.raises(DeadlineExceeded):
        await runtime.send_message(
            Await("never-resolved", timeout=0.1), AgentId("recorder", "hitl")
        )


# --- state -------------------------------------------------------------------------------


async def test_agent_state_saves_and_loads(runtime: BaseRuntime) -> None:
    agent = AgentId("recorder", "stateful")
    await runtime.send_message(SetState("v1"), agent)
    assert await runtime.agent_save_state(agent) == {"value": "v1"}
    await runtime.agent_load_state(agent, {"value": "v2"})
    assert await runtime.agent_save_state(agent) == {"value": "v2"}
    everything = await runtime.save_state()
    assert everything["recorder/stateful"] == {"value": "v2"}
    await runtime.load_state({"recorder/stateful": {"value": "v3"}})
    assert await runtime.agent_save_state(agent) == {"value": "v3"}
