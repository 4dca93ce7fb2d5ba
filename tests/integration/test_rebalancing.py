"""A `dns:` pool scaled 2 -> 4 -> 2 under load, its counter agents' state in a real PostgreSQL.

Four pool members run as processes on 127.0.0.2 to 127.0.0.5, one port, as
the pods behind a headless Service; each names the pool as its peer, so the
members place keys among themselves by rendezvous hashing and hand a key over
(passivate it, saving its state) when it moves to another member. The test
scales the pool by rewriting what the pool's name resolves to
(`tests/integration/pool_node.py`), while a client keeps incrementing counter
agents, each increment with an id of its own. At the end every acknowledged
increment must be held exactly once; the keys moved are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc.aio
import pytest
import pytest_asyncio

from ravi import AgentId
from ravi._mesh.codec import rendezvous_score
from ravi.conformance.v1.conformance_pb2 import Count, Counted, ReadCount
from ravi.errors import RaviError
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions, PeerDiscovery
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc
from ravi.runtime import LocalRuntime
from ravi.state import PostgresStore
from ravi.testing import (
    NodeProcess,
    PostgresServer,
    counter_setup,
    eventually,
    running_postgres,
    start_node,
)
from tests.integration.test_discovery import HOSTS, free_port_on_all
from tests.paths import REPO_ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(240),
]

COUNTER = "counter"
NAME = "counters.test"
HANDED_OVER = re.compile(r"handed over (\d+) agent")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def postgres() -> AsyncIterator[PostgresServer]:
    async with running_postgres() as server:
        yield server


@dataclass
class Pool:
    """Four members, running; `answers` is the file their (and the client's) resolver reads."""

    port: int
    answers: Path
    nodes: dict[str, NodeProcess] = field(default_factory=dict)

    def scale(self, replicas: int) -> list[str]:
        addresses = [f"{host}:{self.port}" for host in HOSTS[:replicas]]
        written = self.answers.with_suffix(".new")
        written.write_text(json.dumps(addresses))
        written.replace(self.answers)  # atomic: a resolver never reads half a file
        return [f"counter@{host}" for host in HOSTS[:replicas]]

    async def resolve(self, host: str, port: int) -> list[str]:
        addresses: list[str] = json.loads(await asyncio.to_thread(self.answers.read_text))
        return addresses


async def start_pool(tmp_path: Path, dsn: str, checkpoint: str) -> Pool:
    pool = Pool(free_port_on_all(["127.0.0.1", *HOSTS]), tmp_path / "answers.json")
    pool.scale(2)
    started = await asyncio.gather(
        *(
            start_node(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.pool_node",
                    "--listen",
                    f"{host}:{pool.port}",
                    "--node-id",
                    f"counter@{host}",
                    "--pool",
                    f"{NAME}:{pool.port}",
                    "--answers",
                    str(pool.answers),
                    "--state-store",
                    dsn,
                    "--checkpoint",
                    checkpoint,
                ],
                cwd=REPO_ROOT,
                env={"PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
            )
            for host in HOSTS
        ),
        return_exceptions=True,
    )
    for node in started:
        if isinstance(node, NodeProcess):
            pool.nodes[node.node_id] = node
    failed = [s for s in started if isinstance(s, BaseException)]
    if failed:
        await stop_pool(pool)
        raise failed[0]
    return pool


async def stop_pool(pool: Pool) -> None:
    await asyncio.gather(*(node.stop() for node in pool.nodes.values()))


def owners(node_ids: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    return {
        key: max(node_ids, key=lambda node: rendezvous_score(node, COUNTER, key)) for key in keys
    }


async def members(client: GrpcRuntime, expected: Sequence[str]) -> None:
    async def check() -> None:
        hosting = sorted(p.node_id for p in client.peers() if COUNTER in p.types)
        assert hosting == sorted(expected)

    await eventually(check, timeout=30, interval=0.05)


async def active_counters(node: NodeProcess) -> int:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        described = await stub.Describe(agent_service_pb2.DescribeRequest(), timeout=10)
    return sum(t.active_instances for t in described.node.agent_types if t.agent_type == COUNTER)


@dataclass
class Load:
    """Increments to every key, round and round, by a few workers."""

    client: GrpcRuntime
    keys: list[str]
    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    attempted: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.acknowledged = {key: [] for key in self.keys}

    async def work(self, worker: int, workers: int) -> None:
        index = worker
        while not self.stopping.is_set():
            key = self.keys[index % len(self.keys)]
            increment = f"{worker}-{index}"
            index += workers
            self.attempted += 1
            try:
                reply = await self.client.send_message(
                    Count(id=increment), AgentId(COUNTER, key), timeout=15
                )
            except RaviError as error:
                self.failures.append(f"{key} {increment}: {error!r}")
                continue
            assert isinstance(reply, Counted)
            self.acknowledged[key].append(increment)


@pytest.mark.parametrize("checkpoint", ["passivation", "each_message"])
async def test_a_pool_scaled_2_4_2_under_load_keeps_every_acknowledged_increment(
    tmp_path: Path, postgres: PostgresServer, checkpoint: str
) -> None:
    keys = [f"{checkpoint}-{i}" for i in range(48)]  # the store outlives one test
    pool = await start_pool(tmp_path, postgres.dsn, checkpoint)
    client = GrpcRuntime(
        remote_peers={"pool": f"dns:{NAME}:{pool.port}"},
        discovery=PeerDiscovery(interval=0.1, resolver=pool.resolve, drain_timeout=5),
    )
    try:
        async with client:
            two = pool.scale(2)
            await members(client, two)
            load = Load(client, keys)
            workers = [asyncio.create_task(load.work(w, 8)) for w in range(8)]
            try:
                await asyncio.sleep(1.0)
                four = pool.scale(4)
                await members(client, four)
                await asyncio.sleep(1.5)
                pool.scale(2)
                await members(client, two)
                await asyncio.sleep(1.5)
            finally:
                load.stopping.set()
                await asyncio.gather(*workers)
            replies = await asyncio.gather(
                *(client.send_message(ReadCount(), AgentId(COUNTER, k), timeout=30) for k in keys)
            )
            held = {key: list(reply.ids) for key, reply in zip(keys, replies, strict=True)}
            # Scaled in, the two members outside the pool hold no counter any more.
            for node_id in set(four) - set(two):
                assert await active_counters(pool.nodes[node_id]) == 0
    finally:
        await stop_pool(pool)

    grown, first = owners(four, keys), owners(two, keys)
    moved_out = sum(1 for key in keys if grown[key] != first[key])
    handed = sum(
        int(found[1])
        for node in pool.nodes.values()
        for line in node.output
        if (found := HANDED_OVER.search(line))
    )
    total = sum(len(ids) for ids in load.acknowledged.values())
    print(
        f"\ncheckpoint={checkpoint}: {total} increments acknowledged of {load.attempted}, "
        f"{len(load.failures)} failed; keys moved 2 -> 4: {moved_out} of {len(keys)}, "
        f"4 -> 2: {moved_out} back; the members handed {handed} agents over"
    )
    assert moved_out > 0
    # Under the load every key is active, so each key that moved was handed over.
    assert handed >= moved_out
    assert total > len(keys)
    for key in keys:
        ids = held[key]
        assert len(ids) == len(set(ids)), f"{key}: an increment applied twice"
        missing = [i for i in load.acknowledged[key] if i not in set(ids)]
        assert not missing, f"{key}: acknowledged increments lost: {missing}"
    assert load.failures == [], "\n".join(load.failures)


async def test_a_key_activating_when_its_owner_changes_is_handed_over_once_active(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    # A member takes a message while it owns the key; the activation waits for
    # the key's previous holder, and the pool grows meanwhile so that another
    # member owns the key. Once active here, the agent must be handed over, or
    # it would hold its key in the store until its idle timeout and the new
    # owner could not activate it.
    port = free_port_on_all(["127.0.0.1", *HOSTS[:2]])
    first, second = (f"counter@{host}" for host in HOSTS[:2])
    key = next(
        k
        for i in range(1000)
        if rendezvous_score(second, COUNTER, k := f"activating-{tmp_path.name}-{i}")
        > rendezvous_score(first, COUNTER, k)
    )
    agent = AgentId(COUNTER, key)
    answers = [f"{HOSTS[0]}:{port}"]

    async def resolve(host: str, port: int) -> list[str]:
        return list(answers)

    def member(host: str, node_id: str) -> GrpcRuntime:
        return GrpcRuntime(
            host,
            port,
            {"pool": f"dns:{NAME}:{port}"},
            options=GrpcRuntimeOptions(
                node_id=node_id, state_store=postgres.dsn, checkpoint="each_message"
            ),
            discovery=PeerDiscovery(interval=0.05, resolver=resolve, drain_timeout=5),
        )

    holder = LocalRuntime(state_store=PostgresStore(postgres.dsn), checkpoint="each_message")
    await counter_setup(holder)
    await holder.start()
    holding = True
    try:
        await holder.send_message(Count(id="held"), agent)
        a, b = member(HOSTS[0], first), member(HOSTS[1], second)
        for runtime in (a, b):
            await counter_setup(runtime)
        async with a, b:
            taken = asyncio.ensure_future(a.send_message(Count(id="taken"), agent, timeout=20))
            await asyncio.sleep(0.3)
            assert not taken.done(), "the activation waits for the holder"
            answers.append(f"{HOSTS[1]}:{port}")

            async def b_is_a_member() -> None:
                assert second in {p.node_id for p in a.peers() if COUNTER in p.types}

            await eventually(b_is_a_member, timeout=10, interval=0.05)
            holding = False
            await holder.stop()  # lets the key go: the activation on `a` goes on
            assert isinstance(await taken, Counted)

            async def handed_over() -> None:
                assert a.active_agents()[COUNTER] == 0

            await eventually(handed_over, timeout=10, interval=0.05)
            read = await b.send_message(ReadCount(), agent, timeout=10)
            assert isinstance(read, Counted)
            assert list(read.ids) == ["held", "taken"]
    finally:
        if holding:
            await holder.stop()
