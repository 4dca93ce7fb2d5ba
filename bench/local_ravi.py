"""ravi LocalRuntime on the local workloads, the same as AutoGen's anchor scripts."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import ClassVar

from _workload import TEXT, Ping, cpu_seconds, emit, percentile_us, tracing

from ravi import (
    AgentId,
    BaseAgent,
    Interceptor,
    MessageContext,
    TopicId,
    TypeSubscription,
    message_handler,
)
from ravi.runtime import LocalRuntime


class Start:
    def __init__(self, n: int) -> None:
        self.n = n


class Echo(BaseAgent):
    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> Ping:
        return message


class Caller(BaseAgent):
    latencies_ns: ClassVar[list[int]] = []

    @message_handler
    async def on_start(self, message: Start, ctx: MessageContext) -> int:
        echo = AgentId("echo", "default")
        latencies = Caller.latencies_ns
        for i in range(message.n):
            started = time.perf_counter_ns()
            reply = await self.send_message(Ping(TEXT, i), echo)
            latencies.append(time.perf_counter_ns() - started)
            assert reply.seq == i
        return message.n


class Counter:
    count = 0
    target = 0
    done: asyncio.Event


class Sub(BaseAgent):
    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> None:
        Counter.count += 1
        if Counter.count == Counter.target:
            Counter.done.set()


async def rr(n: int, warmup: int, interceptors: list[Interceptor]) -> dict[str, float]:
    runtime = LocalRuntime(interceptors=interceptors)
    await Echo.register(runtime, "echo")
    await Caller.register(runtime, "caller")
    async with runtime:
        caller = AgentId("caller", "default")
        await runtime.send_message(Start(warmup), caller)
        Caller.latencies_ns = []
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        await runtime.send_message(Start(n), caller)
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    latencies = sorted(Caller.latencies_ns)
    return {
        "rr_msgs_s": n / elapsed,
        "rr_cpu_us": cpu / n * 1e6,
        "rr_p50_us": percentile_us(latencies, 0.5),
        "rr_p99_us": percentile_us(latencies, 0.99),
    }


async def rr_paired(
    blocks: int, per_block: int, interceptors: list[Interceptor]
) -> dict[str, float]:
    """Round trips without and with `interceptors`, in alternating blocks in this one process.

    Both runtimes run side by side and take turns (U T T U U T ...), so a
    phase of the shared machine (a neighbour's load, seconds long: the
    untraced round trip alone moves between 4 and 7 us p50 from one run to the
    next) falls on both alike. Each block is one trace (a Start message and
    its round trips, as in `rr`), so with 1% sampling a block is now and then
    sampled whole: `paired_rr_percent`, the median of the blocks' ratios, is
    the unsampled path's cost, as `rr`'s median over runs is;
    `paired_rr_sum_percent`, the ratio of the total times, counts the sampled
    blocks too.
    """
    plain, hooked = LocalRuntime(), LocalRuntime(interceptors=interceptors)
    for runtime in (plain, hooked):
        await Echo.register(runtime, "echo")
        await Caller.register(runtime, "caller")
    caller = AgentId("caller", "default")
    spent: dict[str, list[float]] = {"plain": [], "hooked": []}
    async with plain, hooked:
        for runtime in (plain, hooked):
            await runtime.send_message(Start(per_block), caller)
        for block in range(blocks):
            order = (("plain", plain), ("hooked", hooked))
            for name, runtime in order if block % 2 == 0 else reversed(order):
                Caller.latencies_ns = []
                t0 = time.perf_counter()
                await runtime.send_message(Start(per_block), caller)
                spent[name].append(time.perf_counter() - t0)
    plain_s, hooked_s = spent["plain"], spent["hooked"]
    return {
        "paired_plain_rr_msgs_s": blocks * per_block / sum(plain_s),
        "paired_rr_msgs_s": blocks * per_block / sum(hooked_s),
        "paired_rr_percent": 100
        * statistics.median(p / h for p, h in zip(plain_s, hooked_s, strict=True)),
        "paired_rr_sum_percent": 100 * sum(plain_s) / sum(hooked_s),
    }


async def conc(
    total: int, width: int, warmup: int, interceptors: list[Interceptor]
) -> dict[str, float]:
    runtime = LocalRuntime(interceptors=interceptors)
    await Echo.register(runtime, "echo")
    async with runtime:

        async def caller(i: int, count: int) -> None:
            target = AgentId("echo", f"k{i}")
            for s in range(count):
                await runtime.send_message(Ping(TEXT, s), target)

        await asyncio.gather(*(caller(i, max(1, warmup // width)) for i in range(width)))
        per = total // width
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(i, per) for i in range(width)))
        elapsed = time.perf_counter() - t0
    return {"conc_msgs_s": per * width / elapsed}


async def fanout(
    publishes: int, subscribers: int, warmup: int, interceptors: list[Interceptor]
) -> dict[str, float]:
    runtime = LocalRuntime(interceptors=interceptors)
    for j in range(subscribers):
        await Sub.register(runtime, f"sub{j}")
        await runtime.add_subscription(TypeSubscription("fan", f"sub{j}"))
    async with runtime:
        topic = TopicId("fan", "default")

        async def run(count: int) -> tuple[float, float]:
            Counter.count, Counter.target, Counter.done = 0, count * subscribers, asyncio.Event()
            t0, cpu0 = time.perf_counter(), cpu_seconds()
            for s in range(count):
                await runtime.publish_message(Ping(TEXT, s), topic)
            await Counter.done.wait()
            return time.perf_counter() - t0, cpu_seconds() - cpu0

        await run(warmup)
        elapsed, cpu = await run(publishes)
    return {
        "fanout_deliveries_s": publishes * subscribers / elapsed,
        "fanout_cpu_us": cpu / (publishes * subscribers) * 1e6,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--total", type=int, default=20000)
    parser.add_argument("--conc", type=int, default=100)
    parser.add_argument("--publishes", type=int, default=5000)
    parser.add_argument("--subs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1000)
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--hooks", action="store_true", help="one pass-through interceptor")
    variant.add_argument("--tracing", action="store_true", help="traces to a real Jaeger")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="with --tracing or --hooks: also round trips with and without them, in turns",
    )
    parser.add_argument("--blocks", type=int, default=20)
    args = parser.parse_args()
    async with tracing("bench", args.tracing) as (telemetry, _):
        interceptors = telemetry.interceptors if telemetry else []
        if args.hooks:
            interceptors = [Interceptor()]
        row = await rr(args.n, args.warmup, interceptors)
        row |= await conc(args.total, args.conc, args.warmup, interceptors)
        row |= await fanout(args.publishes, args.subs, args.warmup // args.subs, interceptors)
        if args.paired and interceptors:
            row |= await rr_paired(args.blocks, args.n // args.blocks, interceptors)
    name = (
        "ravi_local_hooks" if args.hooks else "ravi_local_tracing" if args.tracing else "ravi_local"
    )
    emit(name, row)


if __name__ == "__main__":
    asyncio.run(main())
