"""A mesh of every language of interop/languages.toml for the interop matrix.

With Python, Go and Node: py hosts the Python conformance agent and the demo's
orchestrator, searcher and writer (no reviewer: the Go one reviews); go hosts
the Go conformance agent and the reviewer (which formats approved drafts with
the Node formatter); nd hosts the Node conformance agent and the formatter.
Every node peers with the others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import pytest_asyncio

from ravi.testing import NodeProcess, start_node
from tests.languages import LANGUAGES as ALL

LANGUAGES = tuple(ALL)
"""Every language of interop/languages.toml, Python (the reference) first."""
MEMBERS = LANGUAGES[1:]
"""The languages other than the reference implementation."""
CONFORMANCE = {language: f"conformance-{language}" for language in LANGUAGES}
NODE_IDS = {language: ALL[language].short for language in LANGUAGES}


def _command(language: str) -> Callable[..., list[str]]:
    def command(node_id: str, *peers: str, listen: str = "127.0.0.1:0") -> list[str]:
        return ALL[language].command(
            node_id,
            listen=listen,
            conformance_type=CONFORMANCE[language],
            demo=True,
            peers=peers,
        )

    return command


COMMANDS = {language: _command(language) for language in LANGUAGES}
"""A node of each language in the interop mesh: its conformance agent and its part of the demo."""
python_node = COMMANDS["python"]


@dataclass
class Mesh:
    nodes: dict[str, NodeProcess]

    def addresses(self, *exclude: str) -> Sequence[str]:
        return [n.address for name, n in self.nodes.items() if name not in exclude]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[Mesh]:
    # Each node peers with those started before it; they learn the later ones.
    started: dict[str, NodeProcess] = {}
    try:
        for language in LANGUAGES:
            peers = [node.address for node in started.values()]
            started[language] = await start_node(COMMANDS[language](NODE_IDS[language], *peers))
        yield Mesh(started)
    finally:
        for node in reversed(list(started.values())):
            await node.stop()
