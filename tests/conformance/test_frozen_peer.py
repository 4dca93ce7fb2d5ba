"""A frozen peer (SIGSTOP) is ejected within 10 s, by every node, whatever language it is.

Three host nodes, one per language, host the agent types `held-python`,
`held-go` and `held-node`; three caller nodes, one per language, peer with all
three hosts and host nothing. The hosts are frozen with SIGSTOP, as a process
stuck in a long GC pause or a VM that lost its CPU is: the kernel still
accepts its connections, nothing answers. docs/protocol.md ("Edges") decides:

- every node pings its peers' connections (keepalive, 4 s + 4 s by default in
  contract.toml) and closes one whose ping goes unanswered, so the calls in
  flight to a frozen peer fail UNAVAILABLE / PEER_UNAVAILABLE and new calls
  for its types fail the same way, all within 10 s of the freeze;
- a type whose only hosts are known but unreachable is UNAVAILABLE /
  PEER_UNAVAILABLE; a type nobody ever hosted stays NOT_FOUND /
  AGENT_TYPE_NOT_FOUND;
- once the peer runs again (SIGCONT) every caller reaches it again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.errors import Code, from_grpc_error
from ravi.mesh.v1 import agent_service_pb2_grpc, contract
from ravi.testing import NodeProcess, eventually, start_node
from tests.conformance.test_conformance import send_request
from tests.languages import LANGUAGES

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

EJECTED_WITHIN = 10.0
"""Seconds from the freeze by which every call to a frozen peer has failed UNAVAILABLE."""

CALL_TIMEOUT = 30.0
"""The deadline of the calls: far beyond the ejection, so only ejection can end them."""


@dataclass
class Mesh:
    hosts: dict[str, NodeProcess]
    callers: dict[str, NodeProcess]
    channels: dict[str, grpc.aio.Channel]

    def stub(self, caller: str) -> agent_service_pb2_grpc.AgentServiceStub:
        return agent_service_pb2_grpc.AgentServiceStub(self.channels[caller])


def held(language: str) -> str:
    return f"held-{language}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[Mesh]:
    for name, language in LANGUAGES.items():
        if not language.available():
            pytest.fail(f"the {name} node is not built: run `make build` (or `make test`) first")
    nodes: list[NodeProcess] = []
    channels: dict[str, grpc.aio.Channel] = {}
    try:
        hosts = {}
        for name, language in LANGUAGES.items():
            hosts[name] = await start_node(
                language.command(f"host-{name}", conformance_type=held(name))
            )
            nodes.append(hosts[name])
        addresses = tuple(host.address for host in hosts.values())
        callers = {}
        for name, language in LANGUAGES.items():
            callers[name] = await start_node(
                language.command(f"caller-{name}", peers=addresses, conformance_type="unused")
            )
            nodes.append(callers[name])
        channels = {name: grpc.aio.insecure_channel(c.address) for name, c in callers.items()}
        yield Mesh(hosts, callers, channels)
    finally:
        for channel in channels.values():
            await channel.close()
        for node in nodes:
            # A stopped process ignores SIGTERM until it runs again.
            if node.process.returncode is None:
                os.kill(node.process.pid, signal.SIGCONT)
            await node.stop()


async def call(
    mesh: Mesh, caller: str, agent_type: str, message: conf.Echo | conf.Sleep, key: str
) -> Code | None:
    """One Send through `caller`: None on success, else the code (PEER_UNAVAILABLE checked)."""
    try:
        await mesh.stub(caller).Send(
            send_request(message, key, agent_type=agent_type), timeout=CALL_TIMEOUT
        )
    except grpc.aio.AioRpcError as error:
        failure = from_grpc_error(error)
        if failure.code is Code.UNAVAILABLE:
            assert failure.reason == "PEER_UNAVAILABLE", (caller, agent_type, failure)
            assert failure.metadata.get("node_id") == f"caller-{caller}", failure.metadata
            assert failure.metadata.get("peer_address"), failure.metadata
        return failure.code
    return None


async def all_reachable(mesh: Mesh) -> None:
    for caller in mesh.callers:
        for host in mesh.hosts:
            assert await call(mesh, caller, held(host), conf.Echo(text="up"), "k") is None


async def test_a_frozen_peer_is_ejected_within_ten_seconds(mesh: Mesh) -> None:
    assert contract.DEFAULT_KEEPALIVE_TIME_SECONDS + contract.DEFAULT_KEEPALIVE_TIMEOUT_SECONDS < (
        EJECTED_WITHIN
    )
    await eventually(lambda: all_reachable(mesh), timeout=30, interval=0.2)
    for caller in mesh.callers:
        never = await call(mesh, caller, "never-hosted", conf.Echo(text="x"), "k")
        assert never is Code.NOT_FOUND, caller

    pairs = [(caller, host) for caller in mesh.callers for host in mesh.hosts]
    # Calls in flight on every host when it freezes: they would sleep 30 s.
    in_flight = {
        pair: asyncio.ensure_future(
            timed(mesh, pair, conf.Sleep(millis=30_000, tag="frozen"), f"s-{pair[0]}")
        )
        for pair in pairs
    }
    await asyncio.sleep(0.5)  # the sleeps reach the hosts (nothing can confirm it sooner)
    frozen_at = time.monotonic()
    for host in mesh.hosts.values():
        os.kill(host.process.pid, signal.SIGSTOP)
    try:
        # New calls, one after another per pair, for 12 s.
        new_calls = await asyncio.gather(
            *(calls_until(mesh, pair, frozen_at + 12) for pair in pairs)
        )
        ended = {pair: await future for pair, future in in_flight.items()}
    finally:
        for host in mesh.hosts.values():
            os.kill(host.process.pid, signal.SIGCONT)

    # Every call fails UNAVAILABLE no later than EJECTED_WITHIN after the later
    # of its start and the freeze; once a peer is ejected, at once.
    problems = []
    for pair, outcomes in zip(pairs, new_calls, strict=True):
        for code, started, at in [ended[pair], *outcomes]:
            if code is not Code.UNAVAILABLE or at - max(started, frozen_at) > EJECTED_WITHIN:
                problems.append(f"{pair}: {code} after {at - frozen_at:.1f} s")
        late = [at - started for _, started, at in outcomes if started > frozen_at + EJECTED_WITHIN]
        if not late or statistics.median(late) > 1.0:
            problems.append(f"{pair}: calls after the ejection took {late}")
    slowest = max(at for _, _, at in ended.values()) - frozen_at
    print(f"\ncalls in flight to frozen peers failed UNAVAILABLE at most {slowest:.1f} s after")
    assert problems == []
    for caller in mesh.callers:
        assert await call(mesh, caller, "never-hosted", conf.Echo(text="x"), "k") is Code.NOT_FOUND

    # Thawed, every host is reached again by every caller.
    await eventually(lambda: all_reachable(mesh), timeout=30, interval=0.2)


async def timed(
    mesh: Mesh, pair: tuple[str, str], message: conf.Echo | conf.Sleep, key: str
) -> tuple[Code | None, float, float]:
    """A call through pair's caller to pair's host: its code, when it started and ended."""
    started = time.monotonic()
    code = await call(mesh, pair[0], held(pair[1]), message, key)
    return code, started, time.monotonic()


async def calls_until(
    mesh: Mesh, pair: tuple[str, str], until: float
) -> list[tuple[Code | None, float, float]]:
    outcomes = []
    while time.monotonic() < until:
        outcomes.append(await timed(mesh, pair, conf.Echo(text="x"), "k"))
        await asyncio.sleep(0.05)
    return outcomes
