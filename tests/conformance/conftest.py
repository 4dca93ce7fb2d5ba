"""Fixtures of the protocol conformance suite: one running node per implementation.

The suite talks to nodes over raw gRPC only, so it runs unchanged against every
language of interop/languages.toml (Python, Go and Node). Each implementation hosts the conformance
agent (proto/ravi/conformance/v1/conformance.proto) as "conformance"; known gaps
are listed in exclusions.toml with their reason.
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from ravi.testing import NodeProcess, start_node
from tests.languages import LANGUAGES, Language

TOKEN = "conformance-secret"
MAX_MESSAGE_BYTES = 1024 * 1024
EXCLUSIONS = tomllib.loads((Path(__file__).parent / "exclusions.toml").read_text())
CONFORMANCE_TYPE = "conformance"


@dataclass(frozen=True)
class Implementation:
    name: str
    language: str
    entry: Language

    def command(self, node_id: str, *extra: str) -> list[str]:
        return self.entry.command(
            node_id,
            "--max-message-bytes",
            str(MAX_MESSAGE_BYTES),
            *extra,
            conformance_type=CONFORMANCE_TYPE,
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or "implementation" not in callspec.params:
            continue
        name = callspec.params["implementation"]
        reason = EXCLUSIONS.get(name, {}).get(item.originalname)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


@pytest.fixture(scope="module", params=list(LANGUAGES))
def implementation(request: pytest.FixtureRequest) -> Implementation:
    implementation = Implementation(request.param, request.param, LANGUAGES[request.param])
    if not implementation.entry.available():
        pytest.fail(
            f"the {request.param} node is not built: run `make build` (or `make test`) first"
        )
    return implementation


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(implementation: Implementation) -> AsyncIterator[NodeProcess]:
    started = await start_node(implementation.command(f"{implementation.name}-node"))
    try:
        yield started
    finally:
        await started.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secured_node(implementation: Implementation) -> AsyncIterator[NodeProcess]:
    command = implementation.command(
        f"{implementation.name}-secured", "--token", TOKEN, "--health-without-auth"
    )
    started = await start_node(command)
    try:
        yield started
    finally:
        await started.stop()
