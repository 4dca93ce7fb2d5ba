"""A real restate-server for tests and `ravi restate dev`: started on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from ravi.testing._processes import exited, free_port, retry_taken_ports, since, terminate

_PR_SET_PDEATHSIG = 1
_PORTS = ("RESTATE_INGRESS__BIND_PORT", "RESTATE_ADMIN__BIND_PORT", "RESTATE_BIND_PORT")


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the server when its parent dies, even by SIGKILL.

    The server runs in a session of its own (a terminal's Ctrl-C is for its
    parent to handle), so without this a `ravi restate dev` or a test killed
    -9 would leave it running, holding its ports and data folder.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _queryable(admin_url: str) -> bool:
    """Whether the admin API's SQL reaches the partitions (a while after the health checks)."""
    request = urllib.request.Request(
        f"{admin_url}/query",
        data=json.dumps({"query": "SELECT count(*) AS n FROM sys_invocation"}).encode(),
        headers={"content-type": "application/json", "accept": "application/json"},
    )
    return _ok_request(request)


def _ok_request(request: urllib.request.Request) -> bool:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class RestateServer:
    """A restate-server process on loopback, with its data kept in `base_dir`.

    `kill()` ends it as a crash would (SIGKILL); `start()` brings it back on
    the same ports and data, as after a restart. `settings` are more
    restate-server settings in their environment form, e.g.
    `{"RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": "1s"}` to suspend an idle
    invocation after one second instead of a minute.
    """

    binary: Path
    base_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    log: Path | None = None

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['RESTATE_INGRESS__BIND_PORT']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['RESTATE_ADMIN__BIND_PORT']}"

    async def start(self, *, timeout: float = 30.0) -> None:
        """Start the server and wait until its admin API (SQL included) and ingress answer.

        The first start picks free ports; a restart keeps them (and its data).
        """
        picked = not self.ports

        async def attempt() -> None:
            if picked:
                self.ports = {name: free_port() for name in _PORTS}
            await self._start(timeout)

        await retry_taken_ports(attempt, retry=picked)

    async def _start(self, timeout: float) -> None:
        env = {
            **os.environ,
            **{name: str(port) for name, port in self.ports.items()},
            "RESTATE_BIND_IP": "127.0.0.1",
            "RESTATE_NODE_NAME": "ravi",
            "RESTATE_DEFAULT_NUM_PARTITIONS": "1",
            "RESTATE_DISABLE_TELEMETRY": "true",
            "RESTATE_LOG_FILTER": os.environ.get("RESTATE_LOG_FILTER", "warn"),
            # Its invoker makes a folder per run in the temporary directory
            # and leaves it there: kept with the rest of its data instead.
            "TMPDIR": str(self.base_dir / "tmp"),
            **self.settings,
        }
        (self.base_dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.log = self.base_dir / "restate-server.log"
        with self.log.open("ab") as log:
            written = log.tell()
            self.process = await asyncio.create_subprocess_exec(
                str(self.binary),
                "--base-dir",
                str(self.base_dir),
                "--no-logo",
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        health = (f"{self.admin_url}/health", f"{self.ingress_url}/restate/health")

        async def ready() -> bool:
            answers = [await asyncio.to_thread(_ok, url) for url in health]
            return all(answers) and await asyncio.to_thread(_queryable, self.admin_url)

        try:
            async with asyncio.timeout(timeout):
                while not await ready():
                    if self.process.returncode is not None:
                        raise exited(
                            "restate-server", self.process.returncode, since(self.log, written)
                        )
                    await asyncio.sleep(0.05)
        except BaseException:
            await self.kill()
            raise

    async def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        self.process = None

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM; SIGKILL after `timeout`)."""
        await terminate(self.process, signal.SIGTERM, timeout)
        self.process = None


@contextlib.asynccontextmanager
async def running_restate(
    binary: Path, base_dir: Path, *, settings: dict[str, str] | None = None
) -> AsyncIterator[RestateServer]:
    """Run restate-server on free loopback ports, with its data in `base_dir`, until the block ends.

    Args:
        binary: the restate-server executable (`make setup` installs it from npm
            into tools/node_modules/@restatedev/restate-server-linux-x64/bin/).
        base_dir: where it keeps its data; a fresh folder gives a fresh server.
        settings: more restate-server settings, as environment variables.
    """
    server = RestateServer(binary, base_dir, settings=dict(settings or {}))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
