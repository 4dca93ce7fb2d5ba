"""grpcurl with server reflection only: every type a client needs resolves on every node.

docs/protocol.md promises that grpcurl needs no .proto files: this lists the symbols a
client relies on, describes each through reflection, invokes both reflection versions, and
checks that an error's google.rpc.ErrorInfo detail prints decoded.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from ravi.testing import NodeProcess
from tests.paths import REPO_ROOT

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

GRPCURL = REPO_ROOT / ".tools" / "bin" / "grpcurl"
SYMBOLS = [
    "ravi.mesh.v1.AgentService",
    "ravi.mesh.v1.SendRequest",
    "ravi.mesh.v1.SendResponse",
    "ravi.mesh.v1.MultiplexRequest",
    "ravi.mesh.v1.SubscribeResponse",
    "ravi.mesh.v1.Payload",
    "ravi.mesh.v1.ErrorReason",
    "google.rpc.Status",
    "google.rpc.ErrorInfo",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "ravi.conformance.v1.Echo",
]


async def grpcurl(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL), "-plaintext", "-max-time", "20", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.parametrize("symbol", SYMBOLS)
async def test_reflection_describes(node: NodeProcess, symbol: str) -> None:
    code, output = await grpcurl(node.address, "describe", symbol)
    assert code == 0, output
    assert symbol.rsplit(".", 1)[-1] in output


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_both_reflection_versions_can_be_invoked(node: NodeProcess, version: str) -> None:
    code, output = await grpcurl(
        "-d",
        '{"listServices": ""}',
        node.address,
        f"grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
    )
    assert code == 0, output
    assert "ravi.mesh.v1.AgentService" in output


async def test_error_details_print_decoded(node: NodeProcess) -> None:
    payload = {"type": "ravi.conformance.v1.Unhandled", "contentType": "application/json"}
    request = {
        "recipient": {"type": "conformance", "key": "k"},
        "envelope": {"payload": {**payload, "data": "e30="}},
    }
    code, output = await grpcurl(
        "-format-error", "-d", json.dumps(request), node.address, "ravi.mesh.v1.AgentService/Send"
    )
    assert code != 0
    assert "type.googleapis.com/google.rpc.ErrorInfo" in output, output
    assert '"reason": "NO_HANDLER"' in output, output
