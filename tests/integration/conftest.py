"""Fixtures of the integration tests: real `ravi node` processes on loopback."""

from __future__ import annotations

from collections.abc import Sequence

from ravi.testing import ravi_command
from tests.paths import REPO_ROOT


def node_command(
    node_id: str,
    *,
    conformance: str | None = None,
    peers: Sequence[str] = (),
    listen: str = "127.0.0.1:0",
    setup: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """A `ravi node` command: optionally hosting the conformance agent as `conformance`."""
    command = [*ravi_command(), "node", "--node-id", node_id, "--listen", listen]
    command += ["--app-dir", str(REPO_ROOT)]
    if conformance is not None:
        command += ["--setup", "ravi.testing:conformance_setup"]
        command += ["--setup-arg", f"agent_type={conformance}"]
    for function in setup:
        command += ["--setup", function]
    for index, address in enumerate(peers):
        command += ["--peer", f"p{index}={address}"]
    return [*command, *extra]
