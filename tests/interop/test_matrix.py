"""The cross-language matrix: every language calls and hears every other one."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import grpc.aio
import pytest

from ravi import AgentId, TypeSubscription
from ravi._demo.agents import ProgressPrinter
from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.errors import (
    AgentTypeNotFound,
    Code,
    FailedPrecondition,
    HandlerFailed,
    RaviError,
)
from ravi.examples.v1.examples_pb2 import Task, TaskResult
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.mesh.v1 import agent_service_pb2 as svc
from ravi.mesh.v1 import agent_service_pb2_grpc, types_pb2
from ravi.testing import NodeProcess, eventually, start_node
from tests.interop.conftest import (
    COMMANDS,
    CONFORMANCE,
    LANGUAGES,
    MEMBERS,
    NODE_IDS,
    Mesh,
    python_node,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(120),
]


@contextlib.asynccontextmanager
async def client(*nodes: NodeProcess, timeout: float = 10.0) -> AsyncIterator[GrpcRuntime]:
    runtime = GrpcRuntime(
        remote_peers={n.node_id: n.address for n in nodes},
        options=GrpcRuntimeOptions(default_timeout=timeout),
    )
    async with runtime:
        yield runtime


async def routes_everywhere(runtime: GrpcRuntime) -> None:
    for agent_type in CONFORMANCE.values():
        await runtime.wait_until_ready(agent_type)


PAIRS = list(itertools.permutations(LANGUAGES, 2))


@pytest.mark.parametrize(("caller", "callee"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
async def test_each_language_calls_each_other_and_gets_a_typed_reply(
    mesh: Mesh, caller: str, callee: str
) -> None:
    async with client(*mesh.nodes.values()) as runtime:
        await routes_everywhere(runtime)

        async def call() -> conf.Echoed:
            reply = await runtime.send_message(
                conf.Forward(
                    target=types_pb2.AgentId(type=CONFORMANCE[callee], key="matrix"),
                    text=f"{caller} to {callee}",
                ),
                AgentId(CONFORMANCE[caller], "matrix"),
            )
            assert isinstance(reply, conf.Echoed)
            return reply

        # A node learns the peers that list it when they describe it.
        reply = await eventually(call, timeout=10, retry_on=(AgentTypeNotFound,))
    assert reply.text == f"{caller} to {callee}"
    assert (reply.language, reply.node_id) == (callee, NODE_IDS[callee])
    assert (reply.sender.type, reply.sender.key) == (CONFORMANCE[caller], "matrix")


@pytest.mark.parametrize("publisher", LANGUAGES)
async def test_a_publish_in_one_language_reaches_the_other_two(mesh: Mesh, publisher: str) -> None:
    source = f"news-from-{publisher}"
    async with grpc.aio.insecure_channel(mesh.nodes[publisher].address) as channel:
        response = await agent_service_pb2_grpc.AgentServiceStub(channel).Publish(
            svc.PublishRequest(
                topic=types_pb2.TopicId(type="conformance.events", source=source),
                envelope=types_pb2.Envelope(
                    message_id=f"pub-{publisher}",
                    payload=types_pb2.Payload(
                        type="ravi.conformance.v1.Echo",
                        content_type="application/x-protobuf",
                        data=conf.Echo(text=f"said in {publisher}").SerializeToString(),
                    ),
                ),
            ),
            timeout=10,
        )
    assert response.stream_deliveries >= 2
    async with client(*mesh.nodes.values()) as runtime:
        await routes_everywhere(runtime)

        async def everyone_heard() -> None:
            for language in LANGUAGES:
                seen = await runtime.send_message(
                    conf.Report(), AgentId(CONFORMANCE[language], source)
                )
                assert list(seen.events) == [f"said in {publisher}"], language

        await eventually(everyone_heard)


async def test_a_python_task_flows_through_go_and_node_agents_and_back(mesh: Mesh) -> None:
    ProgressPrinter.events.clear()
    ProgressPrinter.finished.clear()
    runtime = GrpcRuntime(remote_peers={n.node_id: n.address for n in mesh.nodes.values()})
    await ProgressPrinter.register(runtime, "progress_printer")
    await runtime.add_subscription(TypeSubscription("progress", "progress_printer"))
    async with runtime:
        for agent_type in ("orchestrator", "reviewer", "formatter"):
            await runtime.wait_until_ready(agent_type)
        result = await runtime.send_message(
            Task(thread_id="matrix", content="How are deadlines propagated?"),
            AgentId("orchestrator", "matrix"),
            timeout=30,
        )
        await asyncio.wait_for(ProgressPrinter.finished.wait(), 5)
    assert isinstance(result, TaskResult)
    hops = {e.stage: e.handled_by for e in ProgressPrinter.events if e.handled_by}
    assert hops["search"].endswith("(python)")
    assert hops["write"].endswith("(python)")
    assert hops["review"] == "reviewer/default (go)"
    assert hops["format"] == "formatter/matrix (node)"
    reviews = [e.detail for e in ProgressPrinter.events if e.stage == "review"]
    assert "formatted by formatter/default (node)" in reviews[-1]
    assert result.content.startswith("## How are deadlines propagated")


@pytest.mark.parametrize("language", MEMBERS)
async def test_errors_raised_in_go_and_node_reach_python_typed(mesh: Mesh, language: str) -> None:
    agent = AgentId(CONFORMANCE[language], "errors")
    async with client(*mesh.nodes.values()) as runtime:
        await routes_everywhere(runtime)
        with pytest.raises(HandlerFailed) as failed:
            await runtime.send_message(conf.Fail(code=0, message=f"boom in {language}"), agent)
        assert failed.value.remote
        assert failed.value.code is Code.UNKNOWN
        assert failed.value.exception_message == f"boom in {language}"
        with pytest.raises(FailedPrecondition) as refused:
            await runtime.send_message(
                conf.Fail(code=Code.FAILED_PRECONDITION.value, message="not now"), agent
            )
        assert refused.value.remote
        assert "not now" in str(refused.value)


@pytest.mark.parametrize("language", MEMBERS)
async def test_a_killed_go_or_node_node_fails_calls_fast_and_rejoins(language: str) -> None:
    deadline = 5.0
    python = await start_node(python_node("py-survivor"))
    victim = await start_node(COMMANDS[language](f"{language}-victim", python.address))
    try:
        async with client(python, victim, timeout=deadline) as runtime:
            await routes_everywhere_of(runtime, CONFORMANCE[language], CONFORMANCE["python"])

            async def sleep_call(i: int) -> tuple[object, float]:
                started = time.monotonic()
                try:
                    result: object = await runtime.send_message(
                        conf.Sleep(millis=3000, tag=f"t{i}"),
                        AgentId(CONFORMANCE[language], f"k{i}"),
                    )
                except RaviError as error:
                    result = error
                return result, time.monotonic() - started

            calls = [asyncio.ensure_future(sleep_call(i)) for i in range(20)]
            await asyncio.sleep(0.5)
            port = victim.port
            await victim.kill()
            for result, elapsed in await asyncio.gather(*calls):
                assert isinstance(result, RaviError)
                assert result.code is Code.UNAVAILABLE, repr(result)
                assert elapsed < deadline
            victim = await start_node(
                COMMANDS[language](f"{language}-victim", python.address, listen=f"127.0.0.1:{port}")
            )

            async def rejoined() -> None:
                try:
                    reply = await runtime.send_message(
                        conf.Forward(
                            target=types_pb2.AgentId(type=CONFORMANCE[language], key="back"),
                            text="welcome back",
                        ),
                        AgentId(CONFORMANCE["python"], "k"),
                    )
                except RaviError as error:
                    raise AssertionError(str(error)) from error
                assert reply.language == language

            await eventually(rejoined, timeout=10, interval=0.2)
    finally:
        await victim.stop()
        await python.stop()


async def routes_everywhere_of(runtime: GrpcRuntime, *agent_types: str) -> None:
    for agent_type in agent_types:
        await runtime.wait_until_ready(agent_type)
