"""Node processes for tests: start a real `ravi node` (or any node program) and stop it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_SERVING = re.compile(rb"(?:node|server) (?P<node>\S+) serving on (?P<address>\S+)")
_IN_USE = ("address in use", "address already in use")
PORT_ATTEMPTS = 3
"""Starts of a server on freshly picked ports before a port taken meanwhile is an error."""


def free_port() -> int:
    """A loopback port free now.

    Another process may take it before the server it is meant for binds it:
    a server started on picked ports retries on new ones (`PortTaken`).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PortTaken(RuntimeError):
    """A server exited at start because another process had taken a port picked for it."""


async def retry_taken_ports(start: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
    """`start()` a server, again (it picks new ports each time) while a port it picked was taken.

    With `retry` False (a restart on ports it must keep) a taken port is an error at once.
    """
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            return await start()
        except PortTaken:
            if not retry:
                raise
    return await start()


def since(log: Path, offset: int) -> str:
    """What a server wrote to `log` from `offset` on (its part of a log kept across starts)."""
    with log.open("rb") as file:
        file.seek(offset)
        return file.read().decode(errors="replace")


def exited(name: str, returncode: int, log: str) -> RuntimeError:
    """The error for a server that exited before it was ready, with the end of its log."""
    message = f"{name} exited with {returncode}: {log[-2000:]}"
    if any(words in log.lower() for words in _IN_USE):
        return PortTaken(message)
    return RuntimeError(message)


@dataclass
class NodeProcess:
    """A node program running as a child process, with the address it announced."""

    process: asyncio.subprocess.Process
    node_id: str
    address: str
    output: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    async def stop(self, *, timeout: float = 10.0) -> int:
        """Stop gracefully with SIGTERM (SIGKILL after `timeout`); returns the exit code."""
        await terminate(self.process, signal.SIGTERM, timeout)
        await self._finish()
        assert self.process.returncode is not None
        return self.process.returncode

    async def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self._finish()

    async def _finish(self) -> None:
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._drain, 5)


async def terminate(
    process: asyncio.subprocess.Process | None, how: signal.Signals, timeout: float
) -> None:
    """Stop a child process with the signal `how`, and with SIGKILL after `timeout` seconds."""
    if process is None or process.returncode is not None:
        return
    process.send_signal(how)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()


async def start_node(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> NodeProcess:
    """Start a node program and wait for its "node ID serving on ADDR" line.

    Works for `ravi node`, `ravi-go node` and `ravi-node node`: each prints that
    line once it serves; and for `ravi serve` ("server TYPE serving on ADDR").
    The child's output is kept in `NodeProcess.output`.

    Raises:
        RuntimeError: the program exited, or did not announce itself in time.
    """
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    assert process.stdout is not None
    output: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                line = await process.stdout.readline()
                if not line:
                    await process.wait()
                    raise RuntimeError(
                        f"{command[0]} exited with {process.returncode} before serving:\n"
                        + "".join(output)
                    )
                output.append(line.decode(errors="replace"))
                found = _SERVING.search(line)
                if found:
                    break
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    node = NodeProcess(process, found["node"].decode(), found["address"].decode(), output=output)
    node._drain = asyncio.get_running_loop().create_task(_collect(process, output))
    return node


async def _collect(process: asyncio.subprocess.Process, output: list[str]) -> None:
    assert process.stdout is not None
    async for line in process.stdout:
        output.append(line.decode(errors="replace"))  # noqa: PERF401 - kept as it arrives


@contextlib.asynccontextmanager
async def running_node(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> AsyncIterator[NodeProcess]:
    """`start_node` as a context manager that always stops the node."""
    node = await start_node(command, env=env, cwd=cwd, timeout=timeout)
    try:
        yield node
    finally:
        await node.stop()


def ravi_command() -> list[str]:
    """The command that runs this interpreter's `ravi` command line."""
    return [sys.executable, "-m", "ravi"]
