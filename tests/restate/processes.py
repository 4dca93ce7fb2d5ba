"""The processes of the Restate tests: a worker and a `ravi serve`, each killable and restartable.

Both come back at the address they had (a worker must, for its invocations
to resume; the web front does so the test's client keeps its base URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ravi.testing import NodeProcess, RestateServer, ravi_command, start_node
from tests.integration.test_server import events
from tests.paths import REPO_ROOT, RESTATE_SERVER

TOKEN = "restate-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUSPEND_AFTER = "1s"
"""The tests' inactivity timeout: an idle invocation suspends after it (default: 1 minute)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def restate_server(folder: Path, **settings: str) -> RestateServer:
    """A restate-server that suspends idle invocations after `SUSPEND_AFTER`."""
    return RestateServer(
        RESTATE_SERVER,
        folder,
        settings={"RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": SUSPEND_AFTER, **settings},
    )


class Process:
    """A ravi command that can be killed (-9), stopped (SIGTERM) and started again."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.command = command
        self.env = env or {}
        self.process: NodeProcess | None = None
        self._lines: list[str] = []

    async def start(self) -> None:
        self.process = await start_node(self.command, env=self.env, cwd=REPO_ROOT, timeout=60)

    async def kill(self) -> None:
        if self.process is not None:
            await self.process.kill()
            self._lines = self.process.output
            self.process = None

    async def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        code = await self.process.stop(timeout=timeout)
        self._lines = self.process.output
        self.process = None
        return code

    async def restart(self) -> None:
        await self.kill()
        await self.start()

    @property
    def output(self) -> str:
        """What the process (or the last one, once stopped) printed."""
        return "".join(self.process.output if self.process is not None else self._lines)


class Worker(Process):
    """`ravi restate worker` serving `setup` (the demo assistant by default) on a fixed port."""

    def __init__(
        self,
        server: RestateServer,
        folder: Path,
        *setup: str,
        grace_period: float = 5.0,
    ) -> None:
        command = [*ravi_command(), "restate", "worker", "--ingress", server.ingress_url]
        command += ["--admin", server.admin_url, "--listen", f"127.0.0.1:{free_port()}"]
        command += ["--grace-period", str(grace_period), "--app-dir", str(REPO_ROOT)]
        for function in setup or ("ravi.server:demo_setup",):
            command += ["--setup", function]
        super().__init__(command, {"RAVI_TEST_DIR": str(folder)})


class Serve(Process):
    """`ravi serve --runtime restate` on a fixed port."""

    def __init__(self, server: RestateServer, *extra: str) -> None:
        self.port = free_port()
        command = [*ravi_command(), "serve", "--runtime", "restate", "--port", str(self.port)]
        command += ["--token", TOKEN, "--restate-ingress", server.ingress_url]
        command += ["--restate-admin", server.admin_url, *extra]
        super().__init__(command)

    def client(self, timeout: float = 30) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}", headers=AUTH, timeout=timeout
        )


async def events_until(
    client: httpx.AsyncClient, thread: str, kinds: set[str], after: int = 0, timeout: float = 60
) -> list[dict[str, Any]]:
    """The thread's events after `after`, up to the first of one of `kinds`."""
    seen: list[dict[str, Any]] = []

    async def read() -> None:
        async for event in events(client, thread, after):
            seen.append(event)
            if event["kind"] in kinds:
                return

    await asyncio.wait_for(read(), timeout)
    return seen


@dataclass
class Stack:
    """A restate-server, a worker hosting the demo assistant, and `ravi serve` in front."""

    server: RestateServer
    worker: Worker
    serve: Serve


@contextlib.asynccontextmanager
async def running_stack(
    folder: Path, *serve_args: str, server: RestateServer | None = None
) -> AsyncIterator[Stack]:
    """Start the three (the server: `restate_server` unless given); always stop them."""
    restate = server or restate_server(folder / "restate")
    async with contextlib.AsyncExitStack() as cleanup:
        await restate.start()
        cleanup.push_async_callback(restate.stop)
        worker = Worker(restate, folder)
        cleanup.push_async_callback(worker.stop)
        await worker.start()
        serve = Serve(restate, *serve_args)
        cleanup.push_async_callback(serve.stop)
        await serve.start()
        yield Stack(restate, worker, serve)


async def invocation_statuses(server: RestateServer, service: str) -> list[str]:
    """The status of every invocation of `service` Restate knows (e.g. suspended)."""
    async with httpx.AsyncClient(timeout=30) as admin:
        response = await admin.post(
            f"{server.admin_url}/query",
            json={
                "query": "SELECT status FROM sys_invocation "
                f"WHERE target_service_name = '{service}'"
            },
            headers={"accept": "application/json"},
        )
        response.raise_for_status()
        return [row["status"] for row in response.json()["rows"]]
