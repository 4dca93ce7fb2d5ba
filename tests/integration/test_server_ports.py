"""The servers the tests start find new ports when another process took the ones picked for them.

A port is picked free and bound by the server a moment later; on a busy
machine another process may bind it in between (CI once lost a restate-server
start to this). Each helper then starts the server again on new ports; a
restart on ports it must keep fails clearly instead.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ravi.testing import (
    RestateServer,
    _jaeger,
    _postgres,
    _restate,
    running_jaeger,
    running_postgres,
    running_restate,
)
from ravi.testing._processes import PortTaken, free_port
from tests.paths import REPO_ROOT, RESTATE_SERVER, TOOLS_BIN

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port another process (this one) listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def first_taken(port: int, count: int) -> Callable[[], int]:
    """A `free_port` that answers `port` for its first `count` calls, then really free ones."""
    answers = iter([port] * count)
    return lambda: next(answers, None) or free_port()


async def test_restate_server_moves_to_new_ports(
    tmp_path: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_restate, "free_port", first_taken(taken, len(_restate._PORTS)))
    async with running_restate(RESTATE_SERVER, tmp_path / "restate") as server:
        assert taken not in server.ports.values()


async def test_a_restart_on_a_taken_port_is_a_clear_error(tmp_path: Path, taken: int) -> None:
    server = RestateServer(RESTATE_SERVER, tmp_path / "restate")
    server.ports = {name: free_port() for name in _restate._PORTS}
    server.ports["RESTATE_ADMIN__BIND_PORT"] = taken
    with pytest.raises(PortTaken, match=r"restate-server exited with .*in use"):
        await server.start()
    assert server.process is None


async def test_postgres_moves_to_a_new_port(taken: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_postgres, "free_port", first_taken(taken, 1))
    async with running_postgres() as server:
        assert server.port != taken


async def test_jaeger_moves_to_new_ports(taken: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_jaeger, "free_port", first_taken(taken, len(_jaeger._PORTS)))
    async with running_jaeger(TOOLS_BIN / "jaeger", REPO_ROOT / "tools" / "jaeger.yaml") as jaeger:
        assert f":{taken}" not in jaeger.otlp_endpoint
