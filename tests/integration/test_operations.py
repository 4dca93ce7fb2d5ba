"""Operating a node: grpcurl against it, TLS and mutual TLS, graceful shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ravi import AgentId
from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.errors import Code, RaviError
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.testing import eventually, running_node, start_node
from tests.integration.conftest import node_command
from tests.paths import TOOLS_BIN
from tests.tls import make_certificates

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

GRPCURL = TOOLS_BIN / "grpcurl"


async def run_grpcurl(*args: str, timeout: float = 20) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def grpcurl(*args: str) -> str:
    code, stdout, stderr = await run_grpcurl(*args)
    assert code == 0, stderr
    return stdout


def json_documents(text: str) -> list[dict[str, object]]:
    """grpcurl prints one pretty JSON document per message."""
    decoder = json.JSONDecoder()
    documents, index = [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
    return documents


async def test_grpcurl_lists_describes_sends_subscribes_and_checks_health() -> None:
    async with running_node(node_command("curl", conformance="conformance")) as node:
        listed = (await grpcurl("-plaintext", node.address, "list")).split()
        assert {
            "ravi.mesh.v1.AgentService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= set(listed)

        described = await grpcurl(
            "-plaintext", node.address, "describe", "ravi.mesh.v1.AgentService"
        )
        assert "rpc Send ( .ravi.mesh.v1.SendRequest ) returns ( .ravi.mesh.v1.SendResponse )" in (
            described
        )

        body = {
            "recipient": {"type": "conformance", "key": "curl"},
            "envelope": {
                "messageId": "curl-1",
                "payload": {
                    "type": "ravi.conformance.v1.Echo",
                    "contentType": "application/json",
                    "data": base64.b64encode(b'{"text": "from grpcurl"}').decode(),
                },
            },
        }
        sent = json_documents(
            await grpcurl(
                "-plaintext",
                "-d",
                json.dumps(body),
                node.address,
                "ravi.mesh.v1.AgentService/Send",
            )
        )[0]
        result = sent["result"]
        assert isinstance(result, dict)
        reply = conf.Echoed.FromString(base64.b64decode(str(result["data"])))
        assert (reply.text, sent["nodeId"]) == ("from grpcurl", "curl")

        subscriber = asyncio.ensure_future(
            run_grpcurl(
                "-plaintext",
                "-max-time",
                "4",
                "-d",
                json.dumps({"filters": [{"topicType": "conformance.events"}]}),
                node.address,
                "ravi.mesh.v1.AgentService/Subscribe",
            )
        )
        await asyncio.sleep(1.0)
        publish = {
            "topic": {"type": "conformance.events", "source": "curl"},
            "envelope": {"messageId": "curl-2", "payload": body["envelope"]["payload"]},  # type: ignore[index]
        }
        published = json_documents(
            await grpcurl(
                "-plaintext",
                "-d",
                json.dumps(publish),
                node.address,
                "ravi.mesh.v1.AgentService/Publish",
            )
        )[0]
        assert published["streamDeliveries"] == 1
        # -max-time ends the stream (grpcurl then exits non-zero); what it
        # printed before is the node's description, then the event.
        code, stdout, stderr = await subscriber
        assert code != 0
        assert "DeadlineExceeded" in stderr
        node_info, event = json_documents(stdout)
        assert node_info["node"]["nodeId"] == "curl"  # type: ignore[index]
        assert event["event"]["envelope"]["messageId"] == "curl-2"  # type: ignore[index]

        health = json_documents(
            await grpcurl(
                "-plaintext",
                "-d",
                '{"service": "ravi.mesh.v1.AgentService"}',
                node.address,
                "grpc.health.v1.Health/Check",
            )
        )[0]
        assert health == {"status": "SERVING"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    return make_certificates(
        tmp_path_factory.mktemp("tls"),
        server="server",
        subject_alt_name="IP:127.0.0.1,DNS:localhost",
    )


async def test_mutual_tls_admits_clients_with_a_certificate_only(certificates: Path) -> None:
    tls = [
        "--tls-cert", str(certificates / "server.pem"),
        "--tls-key", str(certificates / "server.key"),
        "--tls-client-ca", str(certificates / "ca.pem"),
    ]  # fmt: skip
    async with running_node(node_command("tls", conformance="conformance", extra=tls)) as node:
        trusted = GrpcRuntimeOptions(
            peer_tls_cert=certificates / "client.pem",
            peer_tls_key=certificates / "client.key",
            peer_tls_ca=certificates / "ca.pem",
        )
        runtime = GrpcRuntime(remote_peers={"tls": node.address}, options=trusted)
        async with runtime:
            await runtime.wait_until_ready("conformance")
            reply = await runtime.send_message(
                conf.Echo(text="over mTLS"), AgentId("conformance", "k")
            )
            assert reply.text == "over mTLS"

        anonymous = GrpcRuntime(
            remote_peers={"tls": node.address},
            options=GrpcRuntimeOptions(peer_tls_ca=certificates / "ca.pem", default_timeout=2),
        )
        async with anonymous:
            with pytest.raises(TimeoutError):
                await anonymous.wait_until_ready("conformance", timeout=2)

        async with grpc.aio.insecure_channel(node.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_graceful_stop_flips_health_and_drains_in_flight_calls() -> None:
    node = await start_node(node_command("drain", conformance="conformance"))
    try:
        async with grpc.aio.insecure_channel(node.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="ravi.mesh.v1.AgentService"), timeout=20
            )
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            runtime = GrpcRuntime(remote_peers={"drain": node.address})
            async with runtime:
                await runtime.wait_until_ready("conformance")
                in_flight = asyncio.ensure_future(
                    runtime.send_message(
                        conf.Sleep(millis=1500, tag="drained"), AgentId("conformance", "k")
                    )
                )
                await asyncio.sleep(0.3)
                stopping = asyncio.ensure_future(node.stop(timeout=15))
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
                reply = await in_flight
                assert reply.tag == "drained"
                assert await stopping == 0

                async def refused() -> None:
                    with pytest.raises(RaviError) as caught:
                        await runtime.send_message(conf.Echo(text="x"), AgentId("conformance", "k"))
                    assert caught.value.code in (Code.UNAVAILABLE, Code.NOT_FOUND)

                await eventually(refused)
    finally:
        await node.stop()
