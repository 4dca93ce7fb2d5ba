"""Clients generated from proto/ alone, in languages with no node, against every node.

Each client of interop/languages.toml ([clients]) runs its checks (Describe, Send with
protobuf and JSON payloads, the Multiplex stream, Subscribe with Publish, the ErrorInfo
reasons) against a Python, a Go and a Node node, and must pass them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ravi.testing import NodeProcess, start_node
from tests.languages import CLIENTS, LANGUAGES, Client

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

AGENT = "conformance"
CHECKS = ("describe", "send-protobuf", "send-json", "multiplex", "subscribe", "error-reasons")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=list(LANGUAGES))
async def node(request: pytest.FixtureRequest) -> AsyncIterator[NodeProcess]:
    language = LANGUAGES[request.param]
    if not language.available():
        pytest.fail(f"the {language.name} node is not built: run `make build` first")
    started = await start_node(
        language.command(f"{language.name}-for-clients", conformance_type=AGENT)
    )
    try:
        yield started
    finally:
        await started.stop()


@pytest.mark.parametrize("client", list(CLIENTS.values()), ids=list(CLIENTS))
async def test_client_passes_every_check(node: NodeProcess, client: Client) -> None:
    if not client.available():
        pytest.fail(f"the {client.name} client is not built: run `make build` first")
    process = await asyncio.create_subprocess_exec(
        *client.command(node.address, AGENT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode()
    assert process.returncode == 0, text
    for check in CHECKS:
        assert f"ok {check}:" in text, text
