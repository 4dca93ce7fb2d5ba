"""ravi's RestateRuntime on the Restate workloads of `restate_raw.py`.

One agent type `bench` (a Virtual Object with ravi's exclusive `handle`
handler): `RunSteps(n, sync)` runs n `ctx.step` calls of the same trivial
function as the raw floor (async, or plain with `sync`), `Ping` is echoed.
Sends from outside go through `RestateRuntime.send_message` (the ingress, with
an idempotency key and the envelope in protobuf), against a restate-server of
its own.

    step_ms        (median send time with N steps - with 0 steps) / N
    step_cpu_us    the same in this process's CPU time (driver + deployment)
    step_sync_ms   step_ms with the plain function (ravi calls it inline)
    call_p50_ms    sequential echo `send_message`, p50
    call32_per_s   32 concurrent callers on distinct keys, sends/s
    call32_*cpu_us CPU time per send there, of this process and of restate-server
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _workload import TEXT
from restate_raw import RESTATE_SERVER, concurrent, emit, inc, inc_sync, parser, per_step

from ravi import AgentId, BaseAgent, MessageContext, message_handler, message_type
from ravi.integrations.runtime.restate import RestateRuntime
from ravi.testing import running_restate

AGENT = "bench"


@message_type("bench.RunSteps")
@dataclass
class RunSteps:
    n: int
    sync: bool = False


@message_type("bench.Ping")
@dataclass
class Ping:
    text: str
    seq: int


class Bench(BaseAgent):
    @message_handler
    async def on_steps(self, message: RunSteps, ctx: MessageContext) -> int:
        fn = inc_sync if message.sync else inc
        x = 0
        for _ in range(message.n):
            x = await ctx.step("step", fn, x)
        return x

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> Ping:
        return message


async def drive(rt: RestateRuntime, server_pid: int, args: argparse.Namespace) -> dict[str, float]:
    row: dict[str, float] = {}
    steps = AgentId(AGENT, "s")
    for sync, metric in ((False, "step"), (True, "step_sync")):
        row |= await per_step(
            lambda n, sync=sync: rt.send_message(RunSteps(n, sync), steps), metric, args
        )

    echo = AgentId(AGENT, "k1")
    for i in range(args.warmup):
        await rt.send_message(Ping(TEXT, i), echo)
    latencies = []
    for i in range(args.n):
        started = time.perf_counter()
        reply = await rt.send_message(Ping(TEXT, i), echo)
        latencies.append(time.perf_counter() - started)
        assert reply.seq == i
    latencies.sort()
    row["call_p50_ms"] = latencies[len(latencies) // 2] * 1e3
    row["call_p99_ms"] = latencies[int(0.99 * len(latencies))] * 1e3

    row |= await concurrent(
        lambda i, s: rt.send_message(Ping(TEXT, s), AgentId(AGENT, f"c{i}")), server_pid, args
    )
    return row


async def main() -> None:
    args = parser().parse_args()
    with tempfile.TemporaryDirectory(prefix="ravi-bench-restate-") as base:
        async with running_restate(RESTATE_SERVER, Path(base) / "restate") as server:
            rt = RestateRuntime(server.ingress_url, server.admin_url, listen="127.0.0.1:0")
            await Bench.register(rt, AGENT)
            async with rt:
                assert server.process is not None
                row = await drive(rt, server.process.pid, args)
    emit("ravi_restate", row)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
