"""The Restate commands fail with one clear line when Restate cannot be reached."""

from __future__ import annotations

import socket
import subprocess

import pytest

from ravi.testing import ravi_command

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "arguments",
    [
        "restate worker --listen 127.0.0.1:0 --admin {admin}",
        "serve --runtime restate --port 0 --token t --restate-admin {admin}",
    ],
    ids=["worker", "serve"],
)
def test_an_unreachable_admin_api_is_one_line_and_exit_2(arguments: str, closed_port: int) -> None:
    """A command that cannot start: one line and exit 2 (ravi._cli_errors)."""
    admin = f"http://127.0.0.1:{closed_port}"
    result = subprocess.run(
        [*ravi_command(), *arguments.format(admin=admin).split()],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    command = " ".join(arguments.split()[:2]) if arguments.startswith("restate") else "serve"
    assert last.startswith(f"ravi {command}: Restate's admin API at {admin} is unreachable"), (
        result.stderr
    )
    assert last.endswith("is restate-server running?")
