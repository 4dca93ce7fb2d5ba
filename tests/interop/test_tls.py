"""TLS between Python and the Go and Node nodes, which speak the TLS flags of `ravi node`.

A Go or Node node serving mutual TLS admits a Python client with a certificate
and refuses one without (and keeps serving); a Go or Node node dials a Python
mutual-TLS node as a peer with --peer-tls-ca/--peer-tls-cert/--peer-tls-key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc.aio
import pytest

from ravi import AgentId
from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.errors import AgentTypeNotFound
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2
from ravi.testing import eventually, running_node
from tests.interop.conftest import COMMANDS, CONFORMANCE, MEMBERS, python_node
from tests.tls import make_certificates

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    return make_certificates(
        tmp_path_factory.mktemp("tls"),
        server="server",
        subject_alt_name="IP:127.0.0.1,DNS:localhost",
    )


def serving_mutual_tls(certificates: Path) -> list[str]:
    return [
        "--tls-cert", str(certificates / "server.pem"),
        "--tls-key", str(certificates / "server.key"),
        "--tls-client-ca", str(certificates / "ca.pem"),
    ]  # fmt: skip


async def echo(runtime: GrpcRuntime, agent_type: str, text: str) -> conf.Echoed:
    reply = await runtime.send_message(conf.Echo(text=text), AgentId(agent_type, "tls"))
    assert isinstance(reply, conf.Echoed)
    return reply


async def describe(channel: grpc.aio.Channel) -> None:
    await agent_service_pb2_grpc.AgentServiceStub(channel).Describe(
        agent_service_pb2.DescribeRequest(), timeout=2
    )


@pytest.mark.parametrize("language", MEMBERS)
async def test_a_node_serving_mutual_tls_admits_python_clients_with_a_certificate(
    language: str, certificates: Path
) -> None:
    agent_type, node_id = CONFORMANCE[language], f"{language}-tls"
    command = [*COMMANDS[language](node_id), *serving_mutual_tls(certificates)]
    async with running_node(command) as node:
        trusted = GrpcRuntimeOptions(
            peer_tls_cert=certificates / "client.pem",
            peer_tls_key=certificates / "client.key",
            peer_tls_ca=certificates / "ca.pem",
        )
        async with GrpcRuntime(
            port=None, remote_peers={"member": node.address}, options=trusted
        ) as runtime:
            await runtime.wait_until_ready(agent_type, timeout=10)
            reply = await echo(runtime, agent_type, "python over mTLS")
        assert (reply.text, reply.language, reply.node_id) == (
            "python over mTLS",
            language,
            node_id,
        )

        # Without a client certificate the handshake is refused: the runtime
        # never describes the node, so it has no route to its agent types.
        anonymous = GrpcRuntime(
            port=None,
            remote_peers={"member": node.address},
            options=GrpcRuntimeOptions(peer_tls_ca=certificates / "ca.pem", default_timeout=2),
        )
        async with anonymous:
            with pytest.raises(TimeoutError):
                await anonymous.wait_until_ready(agent_type, timeout=2)
            with pytest.raises(AgentTypeNotFound, match="known types: none"):
                await echo(anonymous, agent_type, "no certificate")
        # On the wire, that is UNAVAILABLE, and so is a plaintext client.
        credentials = grpc.ssl_channel_credentials((certificates / "ca.pem").read_bytes())
        async with grpc.aio.secure_channel(node.address, credentials) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await describe(channel)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(node.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await describe(channel)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

        # The node kept serving those with a certificate.
        async with GrpcRuntime(
            port=None, remote_peers={"member": node.address}, options=trusted
        ) as runtime:
            await runtime.wait_until_ready(agent_type, timeout=10)
            reply = await echo(runtime, agent_type, "still serving")
        assert reply.text == "still serving"


async def forward_to_python(runtime: GrpcRuntime, agent_type: str, text: str) -> conf.Echoed:
    """Ask the conformance agent `agent_type` to forward `text` to the Python one."""
    reply = await runtime.send_message(
        conf.Forward(target=types_pb2.AgentId(type=CONFORMANCE["python"], key="tls"), text=text),
        AgentId(agent_type, "tls"),
    )
    assert isinstance(reply, conf.Echoed)
    return reply


@pytest.mark.parametrize("language", MEMBERS)
async def test_a_node_dials_a_python_mutual_tls_peer(language: str, certificates: Path) -> None:
    agent_type = CONFORMANCE[language]
    python: Sequence[str] = [*python_node("py-tls"), *serving_mutual_tls(certificates)]
    async with running_node(python) as py:
        peer_tls = [
            "--peer-tls-ca", str(certificates / "ca.pem"),
            "--peer-tls-cert", str(certificates / "client.pem"),
            "--peer-tls-key", str(certificates / "client.key"),
        ]  # fmt: skip
        # A plaintext client of the Go or Node node asks its conformance agent
        # to forward to the Python one: that node routes it over its
        # mutual-TLS link, once it described the Python node.
        dialling = [*COMMANDS[language](f"{language}-peer", py.address), *peer_tls]
        async with (
            running_node(dialling) as member,
            GrpcRuntime(
                port=None,
                remote_peers={"member": member.address},
                options=GrpcRuntimeOptions(default_timeout=5),
            ) as runtime,
        ):
            await runtime.wait_until_ready(agent_type, timeout=10)
            reply = await eventually(
                lambda: forward_to_python(runtime, agent_type, f"{language} to python over mTLS"),
                timeout=10,
                interval=0.1,
                retry_on=(AgentTypeNotFound,),
            )
    assert (reply.text, reply.language, reply.node_id) == (
        f"{language} to python over mTLS",
        "python",
        "py-tls",
    )
