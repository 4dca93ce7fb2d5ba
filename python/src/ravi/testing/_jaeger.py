"""A real Jaeger (v2 all-in-one, in memory) for tests and the traced demo."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ravi.testing._processes import NodeProcess, exited, free_port, retry_taken_ports, since

_PORTS = (
    "JAEGER_OTLP_GRPC_PORT",
    "JAEGER_QUERY_PORT",
    "JAEGER_QUERY_GRPC_PORT",
    "JAEGER_HEALTH_PORT",
)


@dataclass
class Jaeger:
    """A running Jaeger: where to send spans, and where to query them."""

    process: asyncio.subprocess.Process
    otlp_endpoint: str
    query_url: str

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace as Jaeger's HTTP API returns it, or None if it has no such trace."""
        url = f"{self.query_url}/api/traces/{trace_id}"
        try:
            body = await asyncio.to_thread(_get, url)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
        traces = json.loads(body).get("data") or []
        return traces[0] if traces else None


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


@contextlib.asynccontextmanager
async def running_jaeger(
    binary: Path, config: Path, *, timeout: float = 30.0
) -> AsyncIterator[Jaeger]:
    """Run Jaeger on free loopback ports until the block ends.

    Args:
        binary: the jaeger executable (`make setup` builds it into .tools/bin).
        config: its configuration (tools/jaeger.yaml, which reads the ports from
            the environment).
        timeout: seconds to wait for it to report healthy.
    """
    with tempfile.TemporaryDirectory(prefix="ravi-jaeger-") as folder:
        log = Path(folder) / "jaeger.log"
        jaeger = await retry_taken_ports(lambda: _start(binary, config, log, timeout))
        try:
            yield jaeger
        finally:
            await NodeProcess(jaeger.process, "jaeger", "").stop()


async def _start(binary: Path, config: Path, log: Path, timeout: float) -> Jaeger:
    """Jaeger on freshly picked ports, healthy."""
    ports = {name: free_port() for name in _PORTS}
    env = {
        **os.environ,
        **{name: str(port) for name, port in ports.items()},
        # Jaeger's own tracing would export to the default endpoint.
        "OTEL_SDK_DISABLED": "true",
        "OTEL_TRACES_EXPORTER": "none",
    }
    with log.open("ab") as output:
        written = output.tell()
        process = await asyncio.create_subprocess_exec(
            str(binary),
            "--config",
            str(config),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=output,
        )
    jaeger = Jaeger(
        process,
        f"http://127.0.0.1:{ports['JAEGER_OTLP_GRPC_PORT']}",
        f"http://127.0.0.1:{ports['JAEGER_QUERY_PORT']}",
    )
    try:
        health = f"http://127.0.0.1:{ports['JAEGER_HEALTH_PORT']}/status"
        async with asyncio.timeout(timeout):
            while True:
                if process.returncode is not None:
                    raise exited("jaeger", process.returncode, since(log, written))
                with contextlib.suppress(OSError):
                    if json.loads(await asyncio.to_thread(_get, health)).get("healthy"):
                        return jaeger
                await asyncio.sleep(0.1)
    except BaseException:
        await NodeProcess(process, "jaeger", "").stop()
        raise
