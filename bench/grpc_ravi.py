"""ravi GrpcRuntime on the gRPC workloads, as AutoGen's anchor script runs them.

Node B is a `ravi node` process hosting echo, sub (subscribed to "fan") and ctl;
the driver A is a GrpcRuntime node in this process, peered with B. Sends go A ->
B (a Connect stream); publishes go out on B's Subscribe stream to A.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from _workload import TEXT, cpu_seconds, emit, percentile_us, tracing
from grpc_agents import Arm, Done, Ping, Wait

from ravi import AgentId, Interceptor, TopicId
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.testing import ravi_command, running_node

BENCH = Path(__file__).resolve().parent


async def drive(a: GrpcRuntime, b_pid: int, args: argparse.Namespace) -> dict[str, float]:
    row: dict[str, float] = {}

    def cpu() -> float:
        """CPU seconds of both nodes (every thread of each)."""
        return cpu_seconds() + cpu_seconds(b_pid)

    echo = AgentId("echo", "default")
    for i in range(args.warmup):
        await a.send_message(Ping(TEXT, i), echo)
    latencies: list[int] = []
    t0, cpu0 = time.perf_counter(), cpu()
    for i in range(args.n):
        started = time.perf_counter_ns()
        reply = await a.send_message(Ping(TEXT, i), echo)
        latencies.append(time.perf_counter_ns() - started)
        assert reply.seq == i
    row["rr_msgs_s"] = args.n / (time.perf_counter() - t0)
    row["rr_cpu_us"] = (cpu() - cpu0) / args.n * 1e6
    latencies.sort()
    row["rr_p50_us"] = percentile_us(latencies, 0.5)
    row["rr_p99_us"] = percentile_us(latencies, 0.99)

    async def worker(i: int, count: int) -> None:
        target = AgentId("echo", f"k{i}")
        for s in range(count):
            await a.send_message(Ping(TEXT, s), target)

    await asyncio.gather(*(worker(i, 2) for i in range(args.conc)))
    per = args.total // args.conc
    t0, cpu0 = time.perf_counter(), cpu()
    await asyncio.gather(*(worker(i, per) for i in range(args.conc)))
    row["conc_msgs_s"] = per * args.conc / (time.perf_counter() - t0)
    row["conc_cpu_us"] = (cpu() - cpu0) / (per * args.conc) * 1e6

    ctl, topic = AgentId("ctl", "default"), TopicId("fan", "default")
    for count in (args.warmup, args.publishes):
        await a.send_message(Arm(count), ctl)
        started, cpu0 = time.monotonic(), cpu()
        for s in range(count):
            await a.publish_message(Ping(TEXT, s), topic)
        done = await a.send_message(Wait(), ctl, timeout=120)
        assert isinstance(done, Done)
        assert done.count == count
        published_cpu = cpu() - cpu0
    row["pub_deliveries_s"] = args.publishes / (done.t_last - started)
    row["pub_cpu_us"] = published_cpu / args.publishes * 1e6
    return row


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--total", type=int, default=6400)
    parser.add_argument("--conc", type=int, default=64)
    parser.add_argument("--publishes", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--hooks", action="store_true", help="one pass-through interceptor")
    variant.add_argument("--tracing", action="store_true", help="both nodes trace to a Jaeger")
    variant.add_argument(
        "--tracing-sink",
        action="store_true",
        help="both nodes trace to an OTLP endpoint that keeps nothing (no Jaeger on the cores)",
    )
    args = parser.parse_args()
    command = [*ravi_command(), "node", "--node-id", "b", "--listen", "127.0.0.1:0"]
    command += ["--app-dir", str(BENCH), "--setup", "grpc_agents:setup"]
    traced = args.tracing or args.tracing_sink
    async with tracing("a", traced, sink=args.tracing_sink) as (telemetry, endpoint):
        interceptors = telemetry.interceptors if telemetry else []
        if args.hooks:
            interceptors = [Interceptor()]
        if endpoint:
            command += ["--otlp-endpoint", endpoint]
        async with running_node(command) as b:
            a = GrpcRuntime(
                port=0,
                remote_peers={"b": b.address},
                options=GrpcRuntimeOptions(node_id="a"),
                interceptors=interceptors,
            )
            async with a:
                await a.wait_until_ready("echo")
                await asyncio.sleep(0.5)  # b subscribes to a's stream once a described it
                row = await drive(a, b.process.pid, args)
    name = "ravi_grpc_hooks" if args.hooks else "ravi_grpc_tracing" if traced else "ravi_grpc"
    emit(name + ("_sink" if args.tracing_sink else ""), row)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
