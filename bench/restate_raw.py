"""The floor of the Restate workloads: a raw restate-sdk app, no ravi.

A Virtual Object `bench_raw` with exclusive handlers: `steps` runs N
`ctx.run_typed` steps of a trivial async function (default serde, as a user of
the SDK would write it), `steps_sync` the same with a plain function (which the
SDK runs on its thread pool), `steps_bytes` with bytes in and out and an
explicit BytesSerde (the cheapest step the SDK offers); `echo` returns its JSON
input. It is served with hypercorn (HTTP/2 cleartext on a socket bound here),
registered with the admin API and driven through the ingress with aiohttp,
against a restate-server of its own (`ravi.testing.running_restate`, fresh
data directory).

    step_ms            (median invocation time with N steps - with 0 steps) / N
    step_cpu_us        the same in this process's CPU time (driver + deployment)
    step_sync_ms       step_ms with the plain function
    step_bytes_ms      step_ms with bytes in and out (BytesSerde): the SDK's least
    call_p50_ms        sequential echo object call through the ingress, p50
    call_idem_p50_ms   the same with an idempotency key (as ravi sends)
    call32_per_s       32 concurrent callers on distinct keys, calls/s
    call32_*cpu_us     CPU time per call there, of this process and of restate-server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import restate
from _workload import REPO, TEXT
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app
from restate.serde import BytesSerde

from ravi.testing import running_restate

RESTATE_SERVER = REPO / "tools/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
OBJECT = "bench_raw"


async def inc(x: int) -> int:
    return x + 1


def inc_sync(x: int) -> int:
    return x + 1


async def inc_bytes(x: bytes) -> bytes:
    return (int.from_bytes(x) + 1).to_bytes(8)


BYTES_STEP: restate.RunOptions[bytes] = restate.RunOptions(serde=BytesSerde())

bench = restate.VirtualObject(OBJECT)


@bench.handler()
async def steps(ctx: restate.ObjectContext, n: int) -> int:
    x = 0
    for _ in range(n):
        x = await ctx.run_typed("step", inc, x=x)
    return x


@bench.handler()
async def steps_sync(ctx: restate.ObjectContext, n: int) -> int:
    """The SDK runs a plain function's step on its thread pool executor."""
    x = 0
    for _ in range(n):
        x = await ctx.run_typed("step", inc_sync, x=x)
    return x


@bench.handler()
async def steps_bytes(ctx: restate.ObjectContext, n: int) -> int:
    """The least an SDK step costs: bytes in and out, no serde to look up."""
    x = (0).to_bytes(8)
    for _ in range(n):
        x = await ctx.run_typed("step", inc_bytes, BYTES_STEP, x)
    return int.from_bytes(x)


@bench.handler()
async def echo(ctx: restate.ObjectContext, ping: dict[str, Any]) -> dict[str, Any]:
    return ping


def without_lifespan(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """The SDK's ASGI app, answering hypercorn's lifespan messages itself (it has none)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await app(scope, receive, send)

    return wrapped


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, idempotency_key: str | None = None
) -> Any:
    headers = {"idempotency-key": idempotency_key} if idempotency_key else None
    async with http.post(url, json=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {await response.text()}")
        return await response.json()


async def drive(
    http: aiohttp.ClientSession, ingress: str, server_pid: int, args: argparse.Namespace
) -> dict[str, float]:
    row: dict[str, float] = {}
    variants = (("steps", "step"), ("steps_sync", "step_sync"), ("steps_bytes", "step_bytes"))
    for handler, metric in variants:
        url = f"{ingress}/{OBJECT}/s/{handler}"
        row |= await per_step(lambda n, url=url: post(http, url, n), metric, args)
    url = f"{ingress}/{OBJECT}/k1/echo"
    for i in range(args.warmup):
        await post(http, url, {"text": TEXT, "seq": i})
    for variant, metric in ((False, "call"), (True, "call_idem")):
        latencies = []
        for i in range(args.n):
            key = f"{metric}-{i}" if variant else None
            started = time.perf_counter()
            reply = await post(http, url, {"text": TEXT, "seq": i}, key)
            latencies.append(time.perf_counter() - started)
            assert reply["seq"] == i
        latencies.sort()
        row[f"{metric}_p50_ms"] = latencies[len(latencies) // 2] * 1e3
        row[f"{metric}_p99_ms"] = latencies[int(0.99 * len(latencies))] * 1e3

    row |= await concurrent(
        lambda i, s: post(http, f"{ingress}/{OBJECT}/c{i}/echo", {"text": TEXT, "seq": s}),
        server_pid,
        args,
    )
    return row


async def per_step(
    invoke: Callable[[int], Awaitable[Any]], metric: str, args: argparse.Namespace
) -> dict[str, float]:
    """The cost of one step: invocations with `args.steps` steps less those with none.

    Wall time and this process's CPU time (the driver and the deployment both
    run here), medians of `args.reps` invocations of each, alternated.
    """

    async def timed(n: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        assert await invoke(n) == n
        return time.perf_counter() - wall, time.process_time() - cpu

    await timed(args.steps)
    await timed(0)
    with_steps, without = [], []
    for _ in range(args.reps):
        with_steps.append(await timed(args.steps))
        without.append(await timed(0))
    wall_n, cpu_n = (statistics.median(t[i] for t in with_steps) for i in (0, 1))
    wall_0, cpu_0 = (statistics.median(t[i] for t in without) for i in (0, 1))
    row = {
        f"{metric}_ms": (wall_n - wall_0) / args.steps * 1e3,
        f"{metric}_cpu_us": (cpu_n - cpu_0) / args.steps * 1e6,
    }
    if metric == "step":
        row["step0_call_ms"] = wall_0 * 1e3
    return row


async def concurrent(
    call: Callable[[int, int], Awaitable[Any]], server_pid: int, args: argparse.Namespace
) -> dict[str, float]:
    """Calls/s of `args.conc` callers on keys of their own, the slowest call's ms,
    and the CPU time per call of this process and of restate-server.

    The callers stop after `args.total` calls in all or `args.seconds`.
    """
    await asyncio.gather(*(call(i, 0) for i in range(args.conc)))  # warm each key
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + args.seconds

    async def caller(i: int) -> None:
        nonlocal done
        s = 0
        while done < args.total and time.perf_counter() < deadline:
            t = time.perf_counter()
            await call(i, s)
            latencies.append(time.perf_counter() - t)
            done += 1
            s += 1

    cpu, server = time.process_time(), cpu_seconds(server_pid)
    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(args.conc)))
    elapsed = time.perf_counter() - started
    return {
        "call32_per_s": done / elapsed,
        "call32_max_ms": max(latencies) * 1e3,
        "call32_cpu_us": (time.process_time() - cpu) / done * 1e6,
        "call32_server_cpu_us": (cpu_seconds(server_pid) - server) / done * 1e6,
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50, help="steps in the N-step handler")
    parser.add_argument("--reps", type=int, default=15, help="invocations with N and with 0 steps")
    parser.add_argument("--n", type=int, default=300, help="sequential echo calls")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--total", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=5.0)
    return parser


def emit(bench_name: str, row: dict[str, float]) -> None:
    """One JSON object on the last line; milliseconds need more than one decimal."""
    print(json.dumps({"bench": bench_name, **{k: round(v, 3) for k, v in row.items()}}))


async def main() -> None:
    args = parser().parse_args()
    with tempfile.TemporaryDirectory(prefix="ravi-bench-restate-") as base:
        async with running_restate(RESTATE_SERVER, Path(base) / "restate") as server:
            # IPPROTO_TCP, not socket.socket()'s 0: asyncio sets TCP_NODELAY only on
            # connections accepted from such a listener (40 ms a response without).
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            listener.setblocking(False)
            config = Config()
            config.accesslog = None
            config.errorlog = logging.getLogger("bench.deployment")
            # hypercorn ends an HTTP/2 connection after 1,000 requests by default,
            # failing the invocations in flight on it: Restate retries them after
            # 0.5 s and more, which would stall the concurrent workload.
            config.keep_alive_max_requests = sys.maxsize
            stop = asyncio.Event()
            app = without_lifespan(restate.app([bench]))
            # The listener itself, not an "fd://" bind: one socket object, closed once.
            sockets = Sockets(secure_sockets=[], insecure_sockets=[listener], quic_sockets=[])
            deployment = asyncio.create_task(
                worker_serve(
                    wrap_app(app, config.wsgi_max_body_size, "asgi"),
                    config,
                    sockets=sockets,
                    shutdown_trigger=stop.wait,
                )
            )
            uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
            connector = aiohttp.TCPConnector(limit=256)
            async with aiohttp.ClientSession(connector=connector) as http:
                async with http.post(f"{server.admin_url}/deployments", json={"uri": uri}) as r:
                    if r.status >= 300:
                        raise RuntimeError(f"registration failed: {r.status} {await r.text()}")
                assert server.process is not None
                row = await drive(http, server.ingress_url, server.process.pid, args)
            stop.set()
            await deployment
            listener.close()  # a no-op once hypercorn served it
    emit("restate_raw", row)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
