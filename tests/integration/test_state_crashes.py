"""Agent state on a `ravi node` with its SQLite store, across SIGTERM, SIGKILL and restarts.

The node hosts the counter agent (`ravi.testing.counter_setup`), whose state is
the ids of the increments it applied: a lost increment is a missing id, a
doubled one an id seen twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from ravi import AgentId
from ravi.conformance.v1.conformance_pb2 import Count, Counted, ReadCount
from ravi.errors import RaviError
from ravi.integrations.runtime.grpc import GrpcRuntime
from ravi.testing import NodeProcess, eventually, ravi_command, start_node
from tests.integration.conftest import node_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEYS = ["k0", "k1", "k2", "k3"]


def counter_node(data_dir: Path, *extra: str) -> list[str]:
    return node_command(
        "counter-node",
        setup=["ravi.testing:counter_setup"],
        extra=["--data-dir", str(data_dir), *extra],
    )


@contextlib.asynccontextmanager
async def client_of(node: NodeProcess) -> AsyncIterator[GrpcRuntime]:
    client = GrpcRuntime(remote_peers={"node": node.address})
    async with client:
        await client.wait_until_ready("counter", timeout=20)
        yield client


async def count(client: GrpcRuntime, key: str, increment: str) -> Counted:
    reply = await client.send_message(Count(id=increment), AgentId("counter", key), timeout=10)
    assert isinstance(reply, Counted)
    return reply


async def read(client: GrpcRuntime, keys: Sequence[str] = KEYS) -> dict[str, list[str]]:
    replies = await asyncio.gather(
        *(client.send_message(ReadCount(), AgentId("counter", k), timeout=10) for k in keys)
    )
    return {key: list(reply.ids) for key, reply in zip(keys, replies, strict=True)}


async def test_state_saved_by_a_graceful_stop_survives_a_kill_and_a_restart(
    tmp_path: Path,
) -> None:
    node = await start_node(counter_node(tmp_path))
    try:
        async with client_of(node) as client:
            for key in KEYS:
                for i in range(3):
                    await count(client, key, f"{key}-{i}")
    finally:
        assert await node.stop() == 0  # SIGTERM: drains, saves every agent
    saved = {key: [f"{key}-{i}" for i in range(3)] for key in KEYS}

    node = await start_node(counter_node(tmp_path))
    try:
        async with client_of(node) as client:
            assert await read(client) == saved
            # Increments after the last save are only in memory when the node
            # is killed: with checkpoint="passivation" a kill loses them.
            await count(client, "k0", "lost")
    finally:
        await node.kill()

    node = await start_node(counter_node(tmp_path))
    try:
        async with client_of(node) as client:
            assert await read(client) == saved
    finally:
        assert await node.stop() == 0


async def test_each_message_checkpoints_lose_nothing_acknowledged_across_20_kills(
    tmp_path: Path,
) -> None:
    chance = random.Random()
    acknowledged: dict[str, list[str]] = {key: [] for key in KEYS}
    attempted = 0
    checkpointed = ["--checkpoint", "each_message"]
    for round_ in range(20):
        node = await start_node(counter_node(tmp_path, *checkpointed))
        try:
            async with client_of(node) as client:
                stop = asyncio.Event()

                async def increments(key: str, round_: int, stop: asyncio.Event) -> None:
                    nonlocal attempted
                    i = 0
                    while not stop.is_set():
                        increment = f"{round_}-{key}-{i}"
                        i += 1
                        attempted += 1
                        try:
                            await count(client, key, increment)
                        except RaviError:
                            return  # the node died under the call: not acknowledged
                        acknowledged[key].append(increment)

                workers = [asyncio.create_task(increments(key, round_, stop)) for key in KEYS]
                await asyncio.sleep(chance.uniform(0.05, 0.6))
                await node.kill()
                stop.set()
                await asyncio.wait_for(asyncio.gather(*workers), 30)
        finally:
            await node.kill()

    node = await start_node(counter_node(tmp_path, *checkpointed))
    try:
        async with client_of(node) as client:
            held = await read(client)
    finally:
        assert await node.stop() == 0
    total = sum(len(ids) for ids in acknowledged.values())
    print(f"\n20 kills: {total} increments acknowledged of {attempted} attempted")
    assert total > 20
    for key in KEYS:
        assert len(held[key]) == len(set(held[key])), f"{key}: an increment applied twice"
        missing = set(acknowledged[key]) - set(held[key])
        assert not missing, f"{key}: acknowledged increments lost: {sorted(missing)}"
        # What is held beyond the acknowledged ones is at most the one call per
        # round that the kill interrupted after its save.
        assert len(held[key]) - len(acknowledged[key]) <= 20


async def run_ravi(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *ravi_command(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_ravi_describe_shows_the_active_instances_of_each_type(tmp_path: Path) -> None:
    node = await start_node(counter_node(tmp_path, "--idle-timeout", "1"))
    try:
        async with client_of(node) as client:
            for key in KEYS[:3]:
                await count(client, key, "one")
            code, out, err = await run_ravi("describe", "--addr", node.address)
            assert code == 0, err
            (counter,) = json.loads(out)["agentTypes"]
            assert (counter["agentType"], counter["activeInstances"]) == ("counter", "3")

            async def passivated() -> None:
                _, out, _ = await run_ravi("describe", "--addr", node.address)
                assert json.loads(out)["agentTypes"][0]["activeInstances"] == "0"

            await eventually(passivated, timeout=30, interval=0.5)
            assert await read(client, KEYS[:3]) == {key: ["one"] for key in KEYS[:3]}
    finally:
        assert await node.stop() == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--checkpoint", "sometimes"], "checkpoint must be one of passivation, each_message"),
        (["--state-store", "mysql://db"], "unknown state store 'mysql://db'"),
        (["--idle-timeout", "-1"], "idle_timeout must not be negative"),
        (["--max-active-agents", "-5"], "max_active_agents must not be negative"),
    ],
)
async def test_bad_lifecycle_flags_are_usage_errors(flags: list[str], message: str) -> None:
    code, _, err = await run_ravi("node", "--listen", "127.0.0.1:0", *flags)
    assert code == 2
    assert message in err


async def test_an_unreachable_state_store_stops_the_node_with_one_line() -> None:
    code, _, err = await run_ravi(
        "node", "--listen", "127.0.0.1:0", "--state-store", "postgresql://ravi@127.0.0.1:1/x"
    )
    # A node that could not start exits 2, as every command line does (docs/interop.md).
    assert code == 2
    assert "cannot reach the state store postgresql://ravi@127.0.0.1:1/x" in err
    assert "Traceback" not in err
