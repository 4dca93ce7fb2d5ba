"""Peer discovery by DNS: a pool of writer nodes behind one name, scaled out and in.

Four real `ravi node` processes host the writer type on 127.0.0.2 to 127.0.0.5,
all on the same port, as the pods behind a Kubernetes headless Service are (one
port, one address per pod). A client GrpcRuntime peers with the name
`dns:writers.test:PORT` through a resolver the test controls, and the test
"scales the Deployment" by changing what the name resolves to.

The measured fraction of keys that moved is printed (`pytest -s`). Further
tests cover a failing lookup, `ravi node --peer NAME=dns:HOST:PORT` with the
real getaddrinfo, and mutual TLS to pods dialled by IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc.aio
import pytest
import pytest_asyncio

from ravi import AgentId
from ravi._mesh.codec import rendezvous_score
from ravi._mesh.discovery import dns_target, resolve_dns
from ravi.conformance.v1.conformance_pb2 import Echo, Echoed
from ravi.errors import RaviError
from ravi.integrations.runtime.grpc import GrpcRuntime, PeerDiscovery
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2
from ravi.testing import NodeProcess, eventually, ravi_command, running_node, start_node
from tests.languages import LANGUAGES
from tests.tls import make_certificates

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(120),
]

WRITER = "writer"
NAME = "writers.test"
HOSTS = [f"127.0.0.{i}" for i in range(2, 6)]
KEYS = [f"doc-{i}" for i in range(400)]


def free_port_on_all(hosts: Sequence[str]) -> int:
    """A port free on every one of `hosts` (pods of one Deployment share their port)."""
    for _ in range(50):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind((hosts[0], 0))
            port: int = first.getsockname()[1]
            try:
                for host in hosts[1:]:
                    stack.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port is free on all of {hosts}")


def writer_command(host: str, port: int) -> list[str]:
    return [
        *ravi_command(),
        "node",
        "--listen",
        f"{host}:{port}",
        "--node-id",
        f"writer@{host}",
        "--setup",
        "ravi.testing:conformance_setup",
        "--setup-arg",
        f"agent_type={WRITER}",
    ]


@dataclass
class Pool:
    """The writer nodes, all running; `answer` is what the name resolves to now."""

    port: int
    nodes: dict[str, NodeProcess]
    answer: list[str] = field(default_factory=list)
    questions: int = 0

    def scale(self, replicas: int) -> None:
        self.answer = [f"{host}:{self.port}" for host in HOSTS[:replicas]]

    async def resolve(self, host: str, port: int) -> list[str]:
        assert (host, port) == (NAME, self.port)
        self.questions += 1
        return list(self.answer)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[Pool]:
    port = free_port_on_all(["127.0.0.1", *HOSTS])
    started = await asyncio.gather(
        *(start_node(writer_command(host, port)) for host in HOSTS), return_exceptions=True
    )
    try:
        failed = [s for s in started if isinstance(s, BaseException)]
        if failed:
            raise failed[0]
        nodes = [s for s in started if isinstance(s, NodeProcess)]
        yield Pool(port, {node.node_id: node for node in nodes})
    finally:
        for node in started:
            if isinstance(node, NodeProcess):
                await node.stop()


def winners(node_ids: Sequence[str]) -> dict[str, str]:
    """Where rendezvous hashing puts each key among `node_ids`, computed here."""
    return {
        key: max(node_ids, key=lambda node: rendezvous_score(node, WRITER, key)) for key in KEYS
    }


async def placement(client: GrpcRuntime) -> dict[str, str]:
    """The node that answers for each key, asked through the client."""

    async def ask(key: str) -> tuple[str, str]:
        reply = await client.send_message(Echo(text=key), AgentId(WRITER, key), timeout=10)
        assert isinstance(reply, Echoed)
        assert reply.agent.key == key
        return key, reply.node_id

    return dict(await asyncio.gather(*(ask(key) for key in KEYS)))


async def members(client: GrpcRuntime, expected: Sequence[str]) -> None:
    """Wait until the client routes the writer type to exactly the `expected` nodes."""

    async def check() -> None:
        hosting = sorted(p.node_id for p in client.peers() if WRITER in p.types)
        assert hosting == sorted(expected)
        assert len(client.peers()) == len(expected)

    await eventually(check, timeout=20, interval=0.05)


@contextlib.asynccontextmanager
async def steady_load(client: GrpcRuntime, workers: int = 8) -> AsyncIterator[list[str]]:
    """Calls to every key, round and round, while the body runs; yields the failures."""
    failures: list[str] = []
    calls = 0
    stop = asyncio.Event()

    async def work(offset: int) -> None:
        nonlocal calls
        index = offset
        while not stop.is_set():
            key = KEYS[index % len(KEYS)]
            index += workers
            try:
                await client.send_message(Echo(text=key), AgentId(WRITER, key), timeout=10)
            except RaviError as error:
                failures.append(f"{key}: {error!r}")
            calls += 1

    tasks = [asyncio.create_task(work(offset)) for offset in range(workers)]
    try:
        yield failures
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        print(f"  {calls} calls during the change, {len(failures)} failed")
    assert calls > 0


async def test_scaling_the_pool_moves_exactly_the_keys_rendezvous_says(pool: Pool) -> None:
    nodes = {f"{host}:{pool.port}": f"writer@{host}" for host in HOSTS}
    pool.scale(2)
    client = GrpcRuntime(
        remote_peers={"writers": f"dns:{NAME}:{pool.port}"},
        discovery=PeerDiscovery(interval=0.1, resolver=pool.resolve, drain_timeout=5),
    )
    async with client:
        two = [nodes[a] for a in pool.answer]
        await members(client, two)
        before = await placement(client)
        assert before == winners(two)

        async with steady_load(client) as failures:
            pool.scale(4)
            four = [nodes[a] for a in pool.answer]
            await members(client, four)
            await asyncio.sleep(0.3)
        assert failures == []

        after = await placement(client)
        assert after == winners(four)
        moved = {key for key in KEYS if after[key] != before[key]}
        predicted = {key for key in KEYS if winners(four)[key] != winners(two)[key]}
        assert moved == predicted
        # Rendezvous hashing moves a key only to a node that joined.
        assert {after[key] for key in moved} <= set(four) - set(two)
        fraction = len(moved) / len(KEYS)
        print(
            f"\nscaled writers 2 -> 4: {len(moved)} of {len(KEYS)} keys moved "
            f"({fraction:.1%}; an ideal hash moves 1 - 2/4 = 50%)"
        )
        assert 0.35 < fraction < 0.65

        async with steady_load(client) as failures:
            pool.scale(2)
            await members(client, two)
            await asyncio.sleep(0.3)
        assert failures == []
        assert await placement(client) == before
        print(f"scaled writers 4 -> 2: every key back on its first node ({pool.questions} lookups)")


async def test_a_failed_lookup_keeps_the_peers_and_nxdomain_drops_them(pool: Pool) -> None:
    pool.scale(1)
    broken = False

    async def resolve(host: str, port: int) -> list[str]:
        if broken:
            raise OSError("the DNS server did not answer")
        return await pool.resolve(host, port)

    client = GrpcRuntime(
        remote_peers={"writers": f"dns:{NAME}:{pool.port}"},
        discovery=PeerDiscovery(interval=0.05, resolver=resolve),
    )
    async with client:
        await members(client, [f"writer@{HOSTS[0]}"])
        broken = True
        asked = pool.questions
        await asyncio.sleep(0.3)
        assert pool.questions == asked
        await members(client, [f"writer@{HOSTS[0]}"])
        reply = await client.send_message(Echo(text="k"), AgentId(WRITER, "k"), timeout=10)
        assert isinstance(reply, Echoed)

        broken = False
        pool.answer = []  # what the default resolver returns for NXDOMAIN
        await members(client, [])


@pytest.mark.parametrize("language", list(LANGUAGES))
async def test_a_node_resolves_a_dns_peer_with_getaddrinfo(pool: Pool, language: str) -> None:
    # `localhost` resolves through the real resolver (the hosts file), so the
    # node's default getaddrinfo path runs; a second writer on 127.0.0.1 with
    # the pool's port is what the name leads to. The front node is of every
    # language: each expands dns: peers into a pool (docs/scaling-out.md).
    assert dns_target(f"dns:localhost:{pool.port}") == ("localhost", pool.port)
    assert dns_target(f"dns:///localhost:{pool.port}") == ("localhost", pool.port)
    assert dns_target("localhost:1") is None
    with pytest.raises(ValueError, match="DNS server"):
        dns_target("dns://8.8.8.8/writers:1")
    assert f"127.0.0.1:{pool.port}" in await resolve_dns("localhost", pool.port)
    front_language = LANGUAGES[language]
    if not front_language.available():
        pytest.fail(f"the {language} node is not built: run `make build` first")

    async with running_node(writer_command("127.0.0.1", pool.port)) as writer:
        front = front_language.command(
            "front", "--peer", f"writers=dns:localhost:{pool.port}", "--peer-dns-interval", "0.5"
        )
        async with running_node(front) as node:
            response = await send_through(node, text="via dns", timeout=15)
            assert response.node_id == writer.node_id
            reply = Echoed.FromString(response.result.data)
            assert (reply.text, reply.node_id) == ("via dns", writer.node_id)


@pytest.fixture(scope="module")
def pool_certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, one certificate for a whole pool (`writer.pool`, no IP) and a client's."""
    return make_certificates(
        tmp_path_factory.mktemp("pool-tls"), server="pool", subject_alt_name="DNS:writer.pool"
    )


async def test_dns_peers_dialled_by_ip_verify_the_pools_certificate_name(
    pool: Pool, pool_certificates: Path
) -> None:
    """mTLS between pods: every writer serves the pool's certificate, dialled by IP."""
    certs = pool_certificates
    writer = writer_command("127.0.0.1", pool.port)
    writer += ["--tls-cert", str(certs / "pool.pem"), "--tls-key", str(certs / "pool.key")]
    writer += ["--tls-client-ca", str(certs / "ca.pem")]
    front = [*ravi_command(), "node", "--listen", "127.0.0.1:0", "--node-id", "front"]
    front += ["--peer", f"writers=dns:127.0.0.1:{pool.port}"]
    front += ["--peer-tls-ca", str(certs / "ca.pem"), "--peer-tls-cert", str(certs / "client.pem")]
    front += ["--peer-tls-key", str(certs / "client.key")]
    async with running_node(writer) as node:
        # Without the name, 127.0.0.1 is not in the certificate: no peer.
        async with running_node(front) as lost:
            with pytest.raises(AssertionError):
                await send_through(lost, text="over mTLS", timeout=3)
        async with running_node([*front, "--peer-tls-server-name", "writer.pool"]) as found:
            response = await send_through(found, text="over mTLS", timeout=15)
            assert response.node_id == node.node_id


async def send_through(
    front: NodeProcess, *, text: str, timeout: float
) -> agent_service_pb2.SendResponse:
    """Echo to a writer through `front`, which hosts none and forwards the call."""
    request = agent_service_pb2.SendRequest(
        recipient=types_pb2.AgentId(type=WRITER, key="k"),
        envelope=types_pb2.Envelope(
            message_id=f"m-{text}",
            payload=types_pb2.Payload(
                type=Echo.DESCRIPTOR.full_name,
                content_type="application/x-protobuf",
                data=Echo(text=text).SerializeToString(),
            ),
        ),
    )
    async with grpc.aio.insecure_channel(front.address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)

        async def sent() -> agent_service_pb2.SendResponse:
            try:
                response: agent_service_pb2.SendResponse = await stub.Send(request, timeout=2)
            except grpc.aio.AioRpcError as error:
                raise AssertionError(error.details()) from None
            return response

        return await eventually(sent, timeout=timeout, interval=0.2)
