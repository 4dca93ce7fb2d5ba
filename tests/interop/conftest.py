"""A mesh of three languages for the interop matrix: Python, Go and Node nodes.

py hosts the Python conformance agent and the demo's orchestrator, searcher and
writer (no reviewer: the Go one reviews); go hosts the Go conformance agent and
the reviewer (which formats approved drafts with the Node formatter); nd hosts
the Node conformance agent and the formatter. Every node peers with the others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest_asyncio

from ravi.testing import NodeProcess, ravi_command, start_node
from tests.conformance.conftest import GO_BINARY, NODE_CLI
from tests.paths import REPO_ROOT

LANGUAGES = ("python", "go", "node")
CONFORMANCE = {language: f"conformance-{language}" for language in LANGUAGES}


def python_node(node_id: str, *peers: str, listen: str = "127.0.0.1:0") -> list[str]:
    command = [*ravi_command(), "node", "--node-id", node_id, "--listen", listen]
    command += ["--setup", "ravi.testing:conformance_setup"]
    command += ["--setup-arg", f"agent_type={CONFORMANCE['python']}"]
    command += ["--setup", "ravi._demo.nodes:node_a", "--setup", "ravi._demo.nodes:writer"]
    command += ["--setup-arg", f"docs={REPO_ROOT / 'docs'}"]
    return command + [f"--peer=p{i}={address}" for i, address in enumerate(peers)]


def go_node(node_id: str, *peers: str, listen: str = "127.0.0.1:0") -> list[str]:
    command = [str(GO_BINARY), "node", "--node-id", node_id, "--listen", listen]
    command += ["--conformance-type", CONFORMANCE["go"], "--format-with", "formatter"]
    for i, address in enumerate(peers):
        command += ["--peer", f"p{i}={address}"]
    return command


def node_node(node_id: str, *peers: str, listen: str = "127.0.0.1:0") -> list[str]:
    command = ["node", str(NODE_CLI), "node", "--node-id", node_id, "--listen", listen]
    command += ["--conformance-type", CONFORMANCE["node"]]
    for i, address in enumerate(peers):
        command += ["--peer", f"p{i}={address}"]
    return command


COMMANDS = {"python": python_node, "go": go_node, "node": node_node}


@dataclass
class Mesh:
    nodes: dict[str, NodeProcess]

    def addresses(self, *exclude: str) -> Sequence[str]:
        return [n.address for name, n in self.nodes.items() if name not in exclude]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[Mesh]:
    started: dict[str, NodeProcess] = {}
    try:
        started["python"] = await start_node(python_node("py"))
        started["go"] = await start_node(go_node("go", started["python"].address))
        started["node"] = await start_node(
            node_node("nd", started["python"].address, started["go"].address)
        )
        yield Mesh(started)
    finally:
        for node in reversed(list(started.values())):
            await node.stop()
