"""A2AAgent: mesh agents in Python and Go call an A2A agent built with a2a-sdk alone.

The remote is tests/a2a/sample_agent.py, a separate process. Killing it in the
middle of a call gives UNAVAILABLE well within the call's deadline.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ravi import AgentId, CancellationToken
from ravi.a2a.v1 import a2a_pb2 as rpb
from ravi.errors import (
    Cancelled,
    DeadlineExceeded,
    HandlerFailed,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from ravi.integrations.a2a import A2AAgent
from ravi.integrations.runtime.grpc import GrpcRuntime
from ravi.runtime import LocalRuntime
from ravi.telemetry import TracingInterceptor
from ravi.testing import NodeProcess, eventually, ravi_command, running_node, start_node
from tests.a2a.agents import PlanTrip
from tests.languages import LANGUAGES
from tests.paths import REPO_ROOT, TOOLS_BIN

pytestmark = [
    pytest.mark.a2a,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(120),
]

SAMPLE = REPO_ROOT / "tests" / "a2a" / "sample_agent.py"
REMOTE_TOKEN = "weather-token"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def sample_command() -> list[str]:
    return [sys.executable, str(SAMPLE), "--token", REMOTE_TOKEN]


def card_url(sample: NodeProcess) -> str:
    return f"http://{sample.address}/.well-known/agent-card.json"


def ask(text: str, task_id: str = "") -> rpb.SendRequest:
    return rpb.SendRequest(parts=[rpb.Part(text=text)], task_id=task_id)


async def printed(sample: NodeProcess, prefix: str) -> str:
    """The first line the sample printed that starts with `prefix` (waits for it)."""

    async def find() -> str:
        lines = [line.strip() for line in sample.output if line.startswith(prefix)]
        assert lines, f"the sample has not printed {prefix!r} yet"
        return lines[-1]

    return await eventually(find, timeout=30)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sample() -> AsyncIterator[NodeProcess]:
    async with running_node(sample_command()) as node:
        yield node


@pytest.mark.parametrize("binding", ["JSONRPC", "GRPC", "HTTP+JSON"])
async def test_a_mesh_agent_calls_the_remote_agent_and_continues_its_task(
    sample: NodeProcess, binding: str
) -> None:
    async with LocalRuntime() as runtime:
        await A2AAgent.register(
            runtime,
            "weather",
            lambda: A2AAgent(card_url(sample), token=REMOTE_TOKEN, bindings=[binding]),
        )
        reply = await runtime.send_message(ask("Oslo"), AgentId("weather", f"conv-{binding}"))
        assert reply.state == rpb.TASK_STATE_COMPLETED
        assert reply.text == "Sunny in Oslo"
        assert reply.context_id == f"conv-{binding}"
        (forecast,) = reply.artifacts
        assert forecast.name == "forecast"
        assert forecast.parts[0].text == "Sunny in Oslo"

        asked = await runtime.send_message(ask("ask me"), AgentId("weather", "asking"))
        assert asked.state == rpb.TASK_STATE_INPUT_REQUIRED
        assert asked.text == "Which city?"
        done = await runtime.send_message(
            ask("Tromsø", asked.task_id), AgentId("weather", "asking")
        )
        assert done.state == rpb.TASK_STATE_COMPLETED
        assert done.task_id == asked.task_id
        assert done.text == "Sunny in Tromsø"

        with pytest.raises(HandlerFailed, match="no forecast today") as failed:
            await runtime.send_message(ask("fail"), AgentId("weather", "failing"))
        assert failed.value.remote
        with pytest.raises(NotFound):
            await runtime.send_message(ask("Oslo", "no-such-task"), AgentId("weather", "x"))
        with pytest.raises(InvalidArgument, match="at least one part"):
            await runtime.send_message(rpb.SendRequest(), AgentId("weather", "x"))


async def test_credentials_and_reachability_map_to_ravi_errors(sample: NodeProcess) -> None:
    async with LocalRuntime() as runtime:
        url = card_url(sample)
        await A2AAgent.register(
            runtime, "no-token", lambda: A2AAgent(url, bindings=["JSONRPC"], timeout=20)
        )
        await A2AAgent.register(
            runtime, "nowhere", lambda: A2AAgent("http://127.0.0.1:1", timeout=20)
        )
        with pytest.raises(Unauthenticated):
            await runtime.send_message(ask("Oslo"), AgentId("no-token", "k"))
        with pytest.raises(Unavailable):
            await runtime.send_message(ask("Oslo"), AgentId("nowhere", "k"))
    with pytest.raises(ValueError, match="unknown A2A bindings"):
        A2AAgent(url, bindings=["SMOKE"])


async def test_the_deadline_and_cancellation_reach_the_remote_task(sample: NodeProcess) -> None:
    async with LocalRuntime() as runtime:
        await A2AAgent.register(
            runtime, "weather", lambda: A2AAgent(card_url(sample), token=REMOTE_TOKEN)
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeadlineExceeded):
            await runtime.send_message(ask("slow"), AgentId("weather", "deadline"), timeout=2)
        assert loop.time() - started < 10
        task = (await printed(sample, "working")).split()[1]
        await printed(sample, f"canceled {task}")

        token = CancellationToken()
        slow = ask("slow again")
        call = asyncio.create_task(
            runtime.send_message(slow, AgentId("weather", "cancel"), cancellation=token)
        )

        async def another_task() -> str:
            working = [line.split()[1] for line in sample.output if line.startswith("working")]
            assert len(working) == 2
            return working[-1]

        second = await eventually(another_task, timeout=30)
        token.cancel()
        with pytest.raises(Cancelled):
            await call
        await printed(sample, f"canceled {second}")


async def test_the_trace_context_travels_to_the_remote(sample: NodeProcess) -> None:
    async with LocalRuntime() as runtime:
        for binding in ("JSONRPC", "GRPC", "HTTP+JSON"):
            await A2AAgent.register(
                runtime,
                f"weather-{binding.lower().replace('+', '-')}",
                lambda b=binding: A2AAgent(card_url(sample), token=REMOTE_TOKEN, bindings=[b]),
            )
            await runtime.send_message(
                ask("Oslo"),
                AgentId(f"weather-{binding.lower().replace('+', '-')}", "traced"),
                metadata={"traceparent": TRACEPARENT},
            )
    traced = [line for line in sample.output if line.strip() == f"traceparent {TRACEPARENT}"]
    assert len(traced) == 3


async def test_a_traced_call_continues_the_callers_trace(sample: NodeProcess) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with LocalRuntime(interceptors=[TracingInterceptor("a2a-test", provider)]) as runtime:
        await A2AAgent.register(
            runtime, "weather", lambda: A2AAgent(card_url(sample), token=REMOTE_TOKEN)
        )
        await runtime.send_message(ask("Oslo"), AgentId("weather", "otel"))
    handle = next(s for s in exporter.get_finished_spans() if s.name == "handle weather")
    context = handle.context
    expected = f"traceparent 00-{context.trace_id:032x}-{context.span_id:016x}-"
    assert any(line.startswith(expected) for line in sample.output), sample.output


def weather_node(sample: NodeProcess, binding: str = "") -> list[str]:
    command = [*ravi_command(), "node", "--node-id", "a2a-py", "--listen", "127.0.0.1:0"]
    command += ["--app-dir", str(REPO_ROOT), "--setup", "tests.a2a.agents:remote_weather"]
    command += ["--setup-arg", f"card_url={card_url(sample)}"]
    command += ["--setup-arg", f"token={REMOTE_TOKEN}"]
    if binding:
        command += ["--setup-arg", f"binding={binding}"]
    return command


@pytest.mark.parametrize("binding", ["JSONRPC", "GRPC"])
async def test_killing_the_remote_mid_call_is_unavailable_within_the_deadline(
    binding: str,
) -> None:
    """A Python agent on a `ravi node` calls the A2AAgent beside it; the remote dies mid-call."""
    sample = await start_node(sample_command())
    try:
        async with (
            running_node(weather_node(sample, binding)) as node,
            GrpcRuntime(remote_peers={"py": node.address}) as caller,
        ):
            await caller.wait_until_ready("planner", timeout=30)
            reply = await caller.send_message(ask("Oslo"), AgentId("weather", "mesh"))
            assert reply.text == "Sunny in Oslo"
            planned = await caller.send_message(PlanTrip("Bergen"), AgentId("planner", "trip"))
            assert planned == "Pack for this: Sunny in Bergen"

            # The planner agent calls the A2A agent; the remote dies under the call.
            loop = asyncio.get_running_loop()
            call = asyncio.create_task(
                caller.send_message(PlanTrip("slow"), AgentId("planner", "killed"), timeout=60)
            )
            await printed(sample, "working")
            await sample.kill()
            killed_at = loop.time()
            with pytest.raises(Unavailable):
                await call
            assert loop.time() - killed_at < 15
    finally:
        await sample.stop()


async def test_the_go_member_calls_the_remote_agent_through_the_mesh() -> None:
    """ravi-go sends to a Go node, which forwards to the Python node hosting the A2AAgent."""
    sample = await start_node(sample_command())
    try:
        async with running_node(weather_node(sample)) as python:
            go_node = LANGUAGES["go"].command("a2a-go", peers=(python.address,))
            async with running_node(go_node) as go:
                request = {"parts": [{"text": "Oslo"}]}
                send = [str(TOOLS_BIN / "ravi-go"), "send", "--addr", go.address]
                send += ["--to", "weather/go", "--type", "ravi.a2a.v1.SendRequest"]
                send += ["--timeout", "60s"]
                # The Go node learns from its peer that the Python node hosts "weather".
                output = await eventually(
                    lambda: _go(send, "--json", json.dumps(request)), timeout=30, interval=0.2
                )
                reply = json.loads(output)
                assert reply["result"]["type"] == "ravi.a2a.v1.SendReply", reply
                assert reply["result"]["value"]["text"] == "Sunny in Oslo"
                assert reply["result"]["value"]["state"] == "TASK_STATE_COMPLETED"

                slow = json.dumps({"parts": [{"text": "slow"}]})
                process = await asyncio.create_subprocess_exec(
                    *send,
                    "--json",
                    slow,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                try:
                    await printed(sample, "working")
                    await sample.kill()
                    _, stderr = await asyncio.wait_for(process.communicate(), 15)
                finally:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                assert process.returncode == 1
                assert "UNAVAILABLE" in stderr.decode()
    finally:
        await sample.stop()


async def _go(command: list[str], *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()
