"""A node's memory after 10,000 Subscribe streams open and close returns to where it started.

Issue 15 found a Node node holding 647 MiB after 10,000 streams had closed. Here a
node of every language (a fresh process of its own) serves Subscribe streams from
many callers at once, each caller holding the contract's limit of streams per
caller; half the rounds close them stream by stream (RST_STREAM), half by dropping
the caller's connection. "Where it started" is the node warmed up by two such rounds
(5,000 streams): allocators keep some of the high-water mark of a burst (no node
returns to a fresh process's figure), and what matters is that a node does not keep
more with every stream that ever opened. After 10,000 more streams have opened
and closed, the node's resident memory, read from /proc, must come back within 20%.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest

from ravi.mesh.v1 import agent_service_pb2 as svc
from ravi.mesh.v1 import agent_service_pb2_grpc, contract, types_pb2
from ravi.testing import NodeProcess
from tests.conformance.test_edges import health_and_echo

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

TOTAL = 10_000
CALLERS = 25
"""Callers (connections) holding streams at once: 25 x 100 = 2,500 open streams a round."""
PER_CALLER = contract.DEFAULT_MAX_STREAMS_PER_CALLER
TOLERANCE = 1.2
WARM_UP_ROUNDS = 2
SETTLE_S = 30.0
BASELINE_S = 15.0


def rss_bytes(node: NodeProcess) -> int:
    status = Path(f"/proc/{node.process.pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{node.process.pid}/status")


async def one_round(node: NodeProcess, round_index: int) -> int:
    """Opens CALLERS x PER_CALLER streams, waits for each one's first message, closes them all."""
    channels = [
        # A connection per caller: grpc shares connections between equal channels otherwise.
        grpc.aio.insecure_channel(node.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CALLERS)
    ]
    try:
        streams = []
        for c, channel in enumerate(channels):
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            request = svc.SubscribeRequest(
                subscriber_id=f"memory-{round_index}-{c}",
                filters=[types_pb2.TopicFilter(topic_type=f"memory.{c}")],
            )
            streams += [stub.Subscribe(request, timeout=120) for _ in range(PER_CALLER)]
        firsts = await asyncio.gather(*(stream.read() for stream in streams))
        assert all(first.node.node_id == node.node_id for first in firsts)
        if round_index % 2 == 0:
            for stream in streams:
                stream.cancel()
    finally:
        # Odd rounds close their streams by dropping the connections under them.
        await asyncio.gather(*(channel.close() for channel in channels))
    return len(streams)


async def settled_rss(node: NodeProcess, limit: int) -> int:
    """The node's RSS once it is at most `limit`, or the last reading after SETTLE_S seconds.

    Garbage collectors return memory lazily (V8's memory reducer after some seconds of
    quiet); a few calls in between give them occasions.
    """
    deadline = time.monotonic() + SETTLE_S
    while True:
        rss = rss_bytes(node)
        if rss <= limit or time.monotonic() > deadline:
            return rss
        await health_and_echo(node)
        await asyncio.sleep(0.5)


async def baseline_rss(node: NodeProcess) -> int:
    """The lowest RSS over BASELINE_S seconds of quiet: the figure memory settles to."""
    lowest = rss_bytes(node)
    deadline = time.monotonic() + BASELINE_S
    while time.monotonic() < deadline:
        await health_and_echo(node)
        await asyncio.sleep(0.5)
        lowest = min(lowest, rss_bytes(node))
    return lowest


async def test_memory_returns_after_10000_streams_open_and_close(node: NodeProcess) -> None:
    # Warm up: allocator pools, HTTP/2 tables and code paths grow once, whatever follows.
    for warm_up in range(WARM_UP_ROUNDS):
        await one_round(node, warm_up)
    before = await baseline_rss(node)

    opened = 0
    round_index = WARM_UP_ROUNDS
    while opened < TOTAL:
        opened += await one_round(node, round_index)
        round_index += 1
    assert opened == TOTAL

    after = await settled_rss(node, int(before * TOLERANCE))
    mib = 1024 * 1024
    assert after <= before * TOLERANCE, (
        f"{node.node_id}: {after / mib:.1f} MiB resident after {TOTAL} streams opened and "
        f"closed, {before / mib:.1f} MiB before (at most {TOLERANCE:.0%} of it allowed)"
    )
    await health_and_echo(node)
