"""The official JavaScript A2A client (@a2a-js/sdk, Node 20) drives `ravi serve --a2a`.

interop/a2a-js/src/drive.ts walks card discovery, a plain agent, a ReAct task
through input-required to completed, reject, a refused edit, tasks/get,
tasks/cancel and a resubscribe after a dropped stream; here it runs once per
binding against the gateway of tests/a2a/conftest.py.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.a2a.conftest import TOKEN, Gateway
from tests.paths import REPO_ROOT

pytestmark = [
    pytest.mark.a2a,
    pytest.mark.interop,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(120),
]

DRIVER = REPO_ROOT / "interop" / "a2a-js" / "dist" / "src" / "drive.js"
STEPS = [
    "discovery",
    "send to a plain agent",
    "stream through input-required to completed",
    "reject",
    "edit with bad arguments is refused",
    "cancel",
    "resubscribe after dropping the stream",
]


@pytest.mark.parametrize("binding", ["JSONRPC", "GRPC", "HTTP+JSON"])
async def test_the_js_client_drives_the_gateway(gateway: Gateway, binding: str) -> None:
    assert DRIVER.exists(), f"{DRIVER} is missing: run `make build-node`"
    process = await asyncio.create_subprocess_exec(
        "node",
        str(DRIVER),
        "--server",
        gateway.url,
        "--token",
        TOKEN,
        "--binding",
        binding,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = stdout.decode()
    assert process.returncode == 0, output + stderr.decode()
    assert output.splitlines() == [f"ok {step}" for step in STEPS]
