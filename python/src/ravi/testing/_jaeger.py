"""A real Jaeger (v2 all-in-one, in memory) for tests and the traced demo."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ravi.testing._processes import NodeProcess

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
    ports = {name: _free_port() for name in _PORTS}
    env = {
        **os.environ,
        **{name: str(port) for name, port in ports.items()},
        # Jaeger's own tracing would export to the default endpoint.
        "OTEL_SDK_DISABLED": "true",
        "OTEL_TRACES_EXPORTER": "none",
    }
    process = await asyncio.create_subprocess_exec(
        str(binary),
        "--config",
        str(config),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
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
                    raise RuntimeError(f"jaeger exited with {process.returncode}")
                with contextlib.suppress(OSError):
                    if json.loads(await asyncio.to_thread(_get, health)).get("healthy"):
                        break
                await asyncio.sleep(0.1)
        yield jaeger
    finally:
        await NodeProcess(process, "jaeger", "").stop()
