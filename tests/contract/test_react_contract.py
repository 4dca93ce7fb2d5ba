"""The ReAct loop keeps one contract on LocalRuntime and on GrpcRuntime.

On "grpc" the ReAct agents run in a `ravi node` process; the test's runtime is
a client node that subscribes to their events over a Subscribe stream and
answers approvals with `resolve_promise`, as the ravi server does.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio

from ravi import AgentId, BaseAgent, MessageContext, TypeSubscription, message_handler
from ravi.agents import EVENTS_TOPIC, ApprovalAnswer, Result, RunEvent, Task
from ravi.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.integrations.runtime.restate import RestateRuntime
from ravi.react.v1 import react_pb2 as pb
from ravi.runtime import BaseRuntime, LocalRuntime
from ravi.testing import eventually, ravi_command, running_node, running_restate
from tests.contract import react_harness
from tests.paths import REPO_ROOT, RESTATE_SERVER

pytestmark = pytest.mark.timeout(60)


class Events(BaseAgent):
    """Collects every RunEvent, per thread, as the server's sink does."""

    by_thread: ClassVar[dict[str, list[RunEvent]]] = defaultdict(list)

    @message_handler
    async def on_event(self, event: RunEvent, ctx: MessageContext) -> None:
        Events.by_thread[event.thread_id].append(event)


@pytest_asyncio.fixture(params=["local", "grpc", "restate"])
async def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseRuntime]:
    Events.by_thread.clear()
    if request.param == "restate":
        async with running_restate(RESTATE_SERVER, tmp_path / "restate") as server:
            durable = RestateRuntime(server.ingress_url, server.admin_url, listen="127.0.0.1:0")
            await react_harness.setup(durable)
            await Events.register(durable, "events")
            await durable.add_subscription(TypeSubscription(EVENTS_TOPIC, "events"))
            async with durable:
                yield durable
        return
    if request.param == "local":
        local = LocalRuntime(default_timeout=20)
        await react_harness.setup(local)
        await Events.register(local, "events")
        await local.add_subscription(TypeSubscription(EVENTS_TOPIC, "events"))
        async with local:
            yield local
        return
    command = [*ravi_command(), "node", "--listen", "127.0.0.1:0", "--node-id", "react"]
    command += ["--app-dir", str(REPO_ROOT), "--setup", "tests.contract.react_harness:setup"]
    async with running_node(command) as node:
        client = GrpcRuntime(
            remote_peers={"react": node.address}, options=GrpcRuntimeOptions(default_timeout=20)
        )
        await Events.register(client, "events")
        await client.add_subscription(TypeSubscription(EVENTS_TOPIC, "events"))
        async with client:
            await client.wait_until_ready("react-tools")
            # The node streams events to the client once the client described it.
            await eventually(lambda: _probe(client), timeout=10)
            yield client


async def _probe(client: BaseRuntime) -> None:
    await client.send_message(Task(content="probe"), AgentId("react-memory", "probe"))
    await eventually(lambda: _has_final("probe"), timeout=0.5)


async def _has_final(thread: str) -> None:
    assert any(e.HasField("final") for e in Events.by_thread[thread])


def kinds(thread: str) -> list[str]:
    return [e.WhichOneof("kind") or "" for e in Events.by_thread[thread]]


def events_of(thread: str, kind: str) -> list[Any]:
    return [getattr(e, kind) for e in Events.by_thread[thread] if e.WhichOneof("kind") == kind]


async def run(runtime: BaseRuntime, agent_type: str, thread: str, content: str = "go") -> Result:
    result = await runtime.send_message(Task(content=content), AgentId(agent_type, thread))
    assert isinstance(result, Result)
    await eventually(lambda: _has_final(thread))
    return result


async def pending_request(thread: str) -> str:
    async def requested() -> str:
        requests = events_of(thread, "approval_request")
        assert len(requests) == 1
        return str(requests[0].request_id)

    return await eventually(requested)


async def test_tool_calls_feed_the_model_and_every_step_is_an_event(runtime: BaseRuntime) -> None:
    result = await run(runtime, "react-tools", "t-tools")
    assert (result.content, result.iterations) == ("5", 2)
    assert result.stop_reason == pb.STOP_REASON_ANSWERED
    assert kinds("t-tools") == ["started", "model_step", "tool_result", "model_step", "final"]
    (step, _) = events_of("t-tools", "model_step")
    assert (step.content, step.tool_calls[0].tool) == ("adding", "add")
    assert json.loads(step.tool_calls[0].arguments_json) == {"a": 2, "b": 3}
    (tool_result,) = events_of("t-tools", "tool_result")
    assert (tool_result.output, tool_result.status) == ("5", pb.TOOL_STATUS_OK)
    seqs = [e.seq for e in Events.by_thread["t-tools"]]
    assert seqs == list(range(1, 6))
    assert {e.run_id for e in Events.by_thread["t-tools"]} == {result.run_id}


async def test_an_approved_call_runs_once_with_an_idempotency_key(runtime: BaseRuntime) -> None:
    task = asyncio.ensure_future(run(runtime, "react-approval", "t-approve"))
    request_id = await pending_request("t-approve")
    assert not task.done()
    await runtime.resolve_promise(f"approval-{request_id}", {"action": "approve"})
    result = await task
    assert result.content.startswith("sent 1000 to alice (key ")
    assert f"{result.run_id}/tool-1-1" in result.content
    (decision,) = events_of("t-approve", "approval_decision")
    assert decision.answer.action == pb.APPROVAL_ACTION_APPROVE
    assert kinds("t-approve") == [
        "started",
        "model_step",
        "approval_request",
        "approval_decision",
        "tool_result",
        "model_step",
        "final",
    ]


async def test_a_rejection_is_told_to_the_model_not_raised(runtime: BaseRuntime) -> None:
    task = asyncio.ensure_future(run(runtime, "react-approval", "t-reject"))
    request_id = await pending_request("t-reject")
    answer = ApprovalAnswer(action=pb.APPROVAL_ACTION_REJECT, reason="too much")
    await runtime.resolve_promise(f"approval-{request_id}", answer)
    result = await task
    assert result.content == "A human rejected this call; the tool did not run: too much"
    (tool_result,) = events_of("t-reject", "tool_result")
    assert tool_result.status == pb.TOOL_STATUS_REJECTED


async def test_an_edited_call_runs_with_the_humans_arguments(runtime: BaseRuntime) -> None:
    task = asyncio.ensure_future(run(runtime, "react-approval", "t-edit"))
    request_id = await pending_request("t-edit")
    edit = {"action": "edit", "arguments": {"to": "bob", "amount": 5}}
    await runtime.resolve_promise(f"approval-{request_id}", edit)
    result = await task
    assert result.content.startswith("sent 5 to bob ")
    (tool_result,) = events_of("t-edit", "tool_result")
    assert json.loads(tool_result.call.arguments_json) == {"to": "bob", "amount": 5}


async def test_an_edit_that_does_not_validate_does_not_run(runtime: BaseRuntime) -> None:
    task = asyncio.ensure_future(run(runtime, "react-approval", "t-bad-edit"))
    request_id = await pending_request("t-bad-edit")
    edit = {"action": "edit", "arguments": {"to": "bob", "amount": "lots"}}
    await runtime.resolve_promise(f"approval-{request_id}", edit)
    result = await task
    assert "the arguments a human gave do not validate" in result.content
    assert "amount" in result.content


async def test_a_second_answer_to_the_same_approval_is_refused(runtime: BaseRuntime) -> None:
    task = asyncio.ensure_future(run(runtime, "react-approval", "t-twice"))
    request_id = await pending_request("t-twice")
    await runtime.resolve_promise(f"approval-{request_id}", {"action": "approve"})
    with pytest.raises(AlreadyExists):
        await runtime.resolve_promise(f"approval-{request_id}", {"action": "reject"})
    result = await task
    assert result.content.startswith("sent 1000 to alice")


async def test_max_iterations_ends_the_run_with_its_reason(runtime: BaseRuntime) -> None:
    result = await run(runtime, "react-loop", "t-loop")
    assert result.stop_reason == pb.STOP_REASON_MAX_ITERATIONS
    assert (result.iterations, result.content) == (react_harness.MAX_ITERATIONS, "still adding")
    assert len(events_of("t-loop", "model_step")) == react_harness.MAX_ITERATIONS
    fewer = await runtime.send_message(
        Task(content="go", max_iterations=2), AgentId("react-loop", "t-loop-2")
    )
    assert (fewer.iterations, fewer.stop_reason) == (2, pb.STOP_REASON_MAX_ITERATIONS)
    more = await runtime.send_message(
        Task(content="go", max_iterations=99), AgentId("react-loop", "t-loop-3")
    )
    assert more.iterations == react_harness.MAX_ITERATIONS


async def test_a_tool_that_raises_is_reported_to_the_model(runtime: BaseRuntime) -> None:
    result = await run(runtime, "react-raises", "t-raises")
    assert result.content == "The tool raised RuntimeError: boom"
    (tool_result,) = events_of("t-raises", "tool_result")
    assert tool_result.status == pb.TOOL_STATUS_ERROR


async def test_invalid_tool_calls_are_told_to_the_model(runtime: BaseRuntime) -> None:
    result = await run(runtime, "react-invalid", "t-invalid")
    assert result.content == "gave up"
    outputs = [r.output for r in events_of("t-invalid", "tool_result")]
    assert [r.status for r in events_of("t-invalid", "tool_result")] == [pb.TOOL_STATUS_INVALID] * 3
    assert "invalid arguments for tool 'add': a: Input should be a valid integer" in outputs[0]
    assert "there is no tool named 'subtract' (the tools: add, explode, transfer)" in outputs[1]
    assert "are not valid JSON" in outputs[2]


async def test_a_model_failure_fails_the_run_with_a_failed_event(runtime: BaseRuntime) -> None:
    with pytest.raises(FailedPrecondition, match="has 1 steps; the conversation asks for step 2"):
        await runtime.send_message(Task(content="go"), AgentId("react-exhausted", "t-fail"))

    async def failed() -> None:
        assert [f.code for f in events_of("t-fail", "failed")] == ["FAILED_PRECONDITION"]

    await eventually(failed)


async def test_a_thread_keeps_its_conversation_across_tasks(runtime: BaseRuntime) -> None:
    first = await run(runtime, "react-memory", "t-memory", "hello")
    assert first.content == "turn 1: hello"
    second = await runtime.send_message(Task(content="again"), AgentId("react-memory", "t-memory"))
    assert second.content == "turn 2: hello / again"

    async def numbered_across_runs() -> None:
        assert [e.seq for e in Events.by_thread["t-memory"]] == [1, 2, 3, 4, 5, 6]

    await eventually(numbered_across_runs)


async def test_a_task_for_another_thread_is_refused(runtime: BaseRuntime) -> None:
    with pytest.raises(InvalidArgument, match="is not this agent's thread"):
        await runtime.send_message(
            Task(thread_id="other", content="go"), AgentId("react-tools", "mine")
        )
