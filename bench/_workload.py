"""The shared definition of the local workloads (DESIGN.md section 8).

Message: a dataclass with a 100-character string and an int; the echo handler
returns it. Every benchmark script prints one JSON object on its last line.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

TEXT = "x" * 100


@dataclass
class Ping:
    text: str
    seq: int


def percentile_us(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, every thread, or of process `pid`.

    Per message, it is what a workload costs whatever else the machine runs:
    the figure to read when a shared machine is loaded.
    """
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def emit(bench: str, row: dict[str, float]) -> None:
    print(json.dumps({"bench": bench, **{k: round(v, 1) for k, v in row.items()}}))


@asynccontextmanager
async def tracing(
    node_id: str, enabled: bool, *, sink: bool = False
) -> AsyncIterator[tuple[Any, str | None]]:
    """With `enabled`, a real Jaeger on loopback and telemetry exporting to it, sampled 100%.

    Yields the installed telemetry (None when disabled) and Jaeger's OTLP
    endpoint, for other nodes of the benchmark to export to. The spans are
    flushed before Jaeger stops, outside the measured part. With `sink`, the
    endpoint is `otlp-sink` (interop/go/cmd/otlp-sink) instead, which keeps
    nothing: what tracing costs the nodes when the collector runs elsewhere.
    """
    if not enabled:
        yield None, None
        return
    # Imported here: the floor scripts share this module and need no ravi.
    from ravi.telemetry import configure

    async with running_sink() if sink else running_jaeger() as endpoint:
        telemetry = configure(node_id, endpoint=endpoint)
        try:
            yield telemetry, endpoint
        finally:
            assert telemetry is not None
            telemetry.shutdown()


@asynccontextmanager
async def running_jaeger() -> AsyncIterator[str]:
    """Jaeger (tools/jaeger.yaml) on free loopback ports; yields its OTLP endpoint."""
    from ravi.testing import running_jaeger as jaeger_on

    async with jaeger_on(REPO / ".tools/bin/jaeger", REPO / "tools/jaeger.yaml") as jaeger:
        yield jaeger.otlp_endpoint


@asynccontextmanager
async def running_sink() -> AsyncIterator[str]:
    """`otlp-sink` on a free loopback port (`make build` builds it); yields its OTLP endpoint."""
    from ravi.testing import NodeProcess

    process = await asyncio.create_subprocess_exec(
        str(REPO / ".tools/bin/otlp-sink"),
        "--listen",
        "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), 10)
        if not line.startswith(b"listening on "):
            raise RuntimeError(f"otlp-sink did not start: {line.decode(errors='replace')}")
        yield f"http://{line.split()[-1].decode()}"
    finally:
        await NodeProcess(process, "otlp-sink", "").stop()
