"""Fixtures of the container tests: a private engine, the stand-in bases, the compose stack.

`make test-containers` runs these tests (and `make test` runs that target): it
installs the engine first. Where the machine cannot run an engine at all (no
root, no namespaces, no overlay filesystem) they skip, saying why.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.containers import _engine, _images
from tests.containers._engine import Engine
from tests.paths import REPO_ROOT

MESH_TOKEN = "containers-mesh-token"
SERVER_TOKEN = "containers-server-token"
PUBLISHED = {"server": 8000, "jaeger": 16686, "restate-ingress": 8080, "restate-admin": 9070}
"""The ports docker-compose.yml publishes that the tests reach from the host."""


@dataclass
class Stack:
    """docker-compose.yml, up in a private engine, and how to reach it from here."""

    engine: Engine
    env: dict[str, str]
    ports: dict[str, int]
    base_images: _images.BaseImages
    host_before: dict[str, list[str]]
    timings: dict[str, float] = field(default_factory=dict)

    def compose(
        self, *arguments: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose ARGUMENTS` in the repository, as a user runs it."""
        return self.engine.docker(
            "compose", *arguments, timeout=timeout, check=check, env=self.env, cwd=REPO_ROOT
        )

    def url(self, published: str) -> str:
        return f"http://127.0.0.1:{self.ports[published]}"

    def inspect(self, *names: str) -> list[dict[str, Any]]:
        result = self.engine.docker("inspect", *names)
        inspected: list[dict[str, Any]] = json.loads(result.stdout)
        return inspected

    def containers(self) -> dict[str, str]:
        """Service -> container id, of every container of the project (stopped too)."""
        result = self.compose("ps", "--all", "--format", "{{.Service}} {{.ID}}")
        return dict(line.split() for line in result.stdout.splitlines() if line.strip())


REPORT: list[str] = []
"""Lines for the end of the run: how long each part took, how large each image is."""


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    reason = _engine.unavailable()
    if reason is not None:
        pytest.skip(f"no container engine can run on this machine: {reason}")
    install = _engine.installed_engine()
    with _engine.running_engine(install, _engine.cache_root() / "runs") as running:
        yield running


@pytest.fixture(scope="session")
def host_before() -> dict[str, list[str]]:
    """The host's firewall rules, links and runtime folders before any engine started."""
    return _engine.host_state()


@pytest.fixture(scope="session")
def stack(host_before: dict[str, list[str]], engine: Engine) -> Iterator[Stack]:
    """`docker compose up --build --wait` with the stand-in bases; `down -v` afterwards."""
    started = time.monotonic()
    bases = _images.prepare(engine, _engine.cache_root() / "images")
    REPORT.extend(_images.rows(bases))
    env = {
        **bases.names,
        "RAVI_TOKEN": MESH_TOKEN,
        "RAVI_SERVER_TOKEN": SERVER_TOKEN,
    }
    running = Stack(engine, env, {}, bases, host_before)
    running.timings["base images"] = time.monotonic() - started
    try:
        started = time.monotonic()
        up = running.compose(
            "up", "--build", "--wait", "--wait-timeout", "300", timeout=2400, check=False
        )
        running.timings["compose up --build --wait"] = time.monotonic() - started
        if up.returncode != 0:
            logs = running.compose("logs", "--no-color", "--tail", "40", check=False).stdout
            raise RuntimeError(
                f"docker compose up failed ({up.returncode}):\n{up.stderr[-6000:]}\n{logs}"
            )
        running.ports = {name: engine.forward(port) for name, port in PUBLISHED.items()}
        REPORT.extend(f"{name}: {seconds:.1f} s" for name, seconds in running.timings.items())
        yield running
    finally:
        running.compose("down", "--volumes", "--timeout", "30", timeout=180, check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the run measured (times, image sizes), printed whether the tests pass or not."""
    if REPORT:
        terminalreporter.section("containers")
        for line in REPORT:
            terminalreporter.write_line(line)
