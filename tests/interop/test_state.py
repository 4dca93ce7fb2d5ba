"""Agents that come and go in every language, their state in one real PostgreSQL.

Each language's node runs with the same lifecycle flags: its counter agents
are passivated when idle (their state saved to the shared store) and come back
with it; a node bounded by --max-active-agents stays bounded under many keys;
and one key's state moves between nodes of different languages through the
store, as it moves between the members of a pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc.aio
import pytest
import pytest_asyncio

from ravi import AgentId
from ravi.conformance.v1.conformance_pb2 import Count, Counted, Echo, ReadCount
from ravi.integrations.runtime.grpc import GrpcRuntime
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc
from ravi.testing import NodeProcess, PostgresServer, eventually, running_postgres, start_node
from tests.interop.conftest import LANGUAGES
from tests.languages import LANGUAGES as ALL

pytestmark = [
    pytest.mark.interop,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(180),
]

COUNTER = "counter"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def postgres() -> AsyncIterator[PostgresServer]:
    async with running_postgres() as server:
        yield server


@asynccontextmanager
async def counter_node(
    language: str, node_id: str, *flags: str, conformance: bool = False
) -> AsyncIterator[NodeProcess]:
    command = ALL[language].command(
        node_id, *flags, counter=True, conformance_type="conformance" if conformance else None
    )
    node = await start_node(command)
    try:
        yield node
    finally:
        await node.stop()


@asynccontextmanager
async def client_of(node: NodeProcess) -> AsyncIterator[GrpcRuntime]:
    client = GrpcRuntime(remote_peers={"node": node.address})
    async with client:
        await client.wait_until_ready(COUNTER, timeout=20)
        yield client


async def count(client: GrpcRuntime, key: str, increment: str) -> Counted:
    reply = await client.send_message(Count(id=increment), AgentId(COUNTER, key), timeout=15)
    assert isinstance(reply, Counted)
    return reply


async def ids(client: GrpcRuntime, key: str) -> list[str]:
    reply = await client.send_message(ReadCount(), AgentId(COUNTER, key), timeout=15)
    assert isinstance(reply, Counted)
    return list(reply.ids)


async def active(node: NodeProcess, agent_type: str) -> int:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        described = await stub.Describe(agent_service_pb2.DescribeRequest(), timeout=10)
    return sum(t.active_instances for t in described.node.agent_types if t.agent_type == agent_type)


def rss_kib(node: NodeProcess) -> int:
    for line in Path(f"/proc/{node.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("language", LANGUAGES)
async def test_idle_agents_are_passivated_into_postgres_and_come_back(
    language: str, postgres: PostgresServer
) -> None:
    flags = ["--state-store", postgres.dsn, "--idle-timeout", "1"]
    keys = [f"{language}-idle-{i}" for i in range(5)]
    async with (
        counter_node(language, f"idle-{language}", *flags) as node,
        client_of(node) as client,
    ):
        for key in keys:
            await count(client, key, "first")
        assert await active(node, COUNTER) == len(keys)

        async def passivated() -> None:
            assert await active(node, COUNTER) == 0

        await eventually(passivated, timeout=30, interval=0.2)
        for key in keys:
            assert (await count(client, key, "second")).total == 2
            assert await ids(client, key) == ["first", "second"]


@pytest.mark.parametrize("language", LANGUAGES)
async def test_many_keys_stay_within_max_active_agents(language: str) -> None:
    async with (
        counter_node(
            language, f"bounded-{language}", "--max-active-agents", "50", conformance=True
        ) as node,
        client_of(node) as client,
    ):
        await client.wait_until_ready("conformance", timeout=20)

        async def touch(keys: Sequence[str]) -> None:
            for key in keys:
                await client.send_message(Echo(text="x"), AgentId("conformance", key), timeout=15)

        await asyncio.gather(*(touch([f"w{w}-{i}" for i in range(500)]) for w in range(4)))
        before = rss_kib(node)
        await asyncio.gather(*(touch([f"v{w}-{i}" for i in range(2500)]) for w in range(4)))
        grown = rss_kib(node) - before
        print(f"\n{language}: 10,000 more keys grew the node's RSS by {grown} KiB")
        assert await active(node, "conformance") <= 50
        if language != "node":
            # Without a bound every key keeps an instance: more than a KiB each.
            # V8 keeps garbage until its heap grows enough to collect it, so a
            # Node process's RSS says little; interop/node/test/lifecycle.test.ts
            # measures the Node heap after a collection instead.
            assert grown < 8 * 1024


async def test_one_agent_moves_between_languages_through_the_store(
    postgres: PostgresServer,
) -> None:
    key = "travelling"
    expected: list[str] = []
    for language in (*LANGUAGES, LANGUAGES[0]):
        async with (
            counter_node(language, f"travel-{language}", "--state-store", postgres.dsn) as node,
            client_of(node) as client,
        ):
            assert await ids(client, key) == expected
            await count(client, key, language)
            expected.append(language)
        # Stopped gracefully: the node saved the agent and let it go.
    assert expected == [*LANGUAGES, LANGUAGES[0]]
