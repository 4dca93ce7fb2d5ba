"""The A2A workload: sequential message/send round trips by the official Python client.

The agent echoes the workload's Ping (DESIGN.md section 8: a 100-character
string and an int) sent as a data part, and answers with a completed task
whose artifact holds the echo. bench/a2a_bare.py serves it with a2a-sdk alone,
bench/a2a_ravi.py as a ravi agent behind the A2A gateway; both use this
client, over JSON-RPC and over gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc.aio
import httpx
from _workload import TEXT, emit, percentile_us
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.helpers import new_data_part
from a2a.types import Message, Role, SendMessageRequest, TaskState

TOKEN = "bench-token"
PING_TYPE = "bench.Ping"


def request(seq: int) -> SendMessageRequest:
    data = {"@type": PING_TYPE, "text": TEXT, "seq": seq}
    message = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[new_data_part(data)])
    return SendMessageRequest(message=message)


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process has used, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def round_trips(
    card_base: str, binding: str, n: int, warmup: int, server_pid: int
) -> dict[str, float]:
    """`n` sequential message/send round trips on one binding, after `warmup` untimed ones.

    Besides the latencies, the server's CPU time per round trip: on a shared
    machine it varies far less than wall time.
    """
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        card = await A2ACardResolver(http, card_base).get_agent_card()
        config = ClientConfig(
            streaming=False,
            httpx_client=http,
            supported_protocol_bindings=[binding],
            grpc_channel_factory=lambda url: grpc.aio.insecure_channel(
                url, options=[("grpc.primary_user_agent", "bench")]
            ),
        )
        client = ClientFactory(config).create(card)
        context = _context(headers)
        try:
            for seq in range(warmup):
                await _send(client, seq, context)
            latencies: list[int] = []
            cpu_before = cpu_seconds(server_pid)
            started_all = time.perf_counter()
            for seq in range(n):
                started = time.perf_counter_ns()
                await _send(client, seq, context)
                latencies.append(time.perf_counter_ns() - started)
            rate = n / (time.perf_counter() - started_all)
            cpu_us = (cpu_seconds(server_pid) - cpu_before) / n * 1e6
        finally:
            await client.close()
    latencies.sort()
    prefix = binding.lower()
    return {
        f"{prefix}_msgs_s": rate,
        f"{prefix}_p50_us": percentile_us(latencies, 0.5),
        f"{prefix}_p99_us": percentile_us(latencies, 0.99),
        f"{prefix}_server_cpu_us": cpu_us,
    }


def _context(headers: dict[str, str]) -> Any:
    from a2a.client import ClientCallContext

    return ClientCallContext(service_parameters=dict(headers), timeout=30)


async def _send(client: Any, seq: int, context: Any) -> None:
    async for event in client.send_message(request(seq), context=context):
        task = event.task
        if task.status.state != TaskState.TASK_STATE_COMPLETED or not task.artifacts:
            raise RuntimeError(f"the echo did not complete: {task}")


def run(bench: str, serve: Callable[[Any], None]) -> None:
    """Start `serve` in a process of its own, drive it over both bindings, print the row."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    context = mp.get_context("spawn")
    ready: Any = context.Queue()
    server = context.Process(target=serve, args=(ready,), daemon=True)
    server.start()
    pid = server.pid
    assert pid is not None
    try:
        card_base = ready.get(timeout=60)

        async def drive() -> dict[str, float]:
            row: dict[str, float] = {}
            for binding in ("JSONRPC", "GRPC"):
                row |= await round_trips(card_base, binding, args.n, args.warmup, pid)
            return row

        row = asyncio.run(drive())
    finally:
        server.terminate()
        server.join(5)
    emit(bench, row)
