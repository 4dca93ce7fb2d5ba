"""The bare-asyncio floor of the local workloads: queues and futures, no runtime."""

from __future__ import annotations

import argparse
import asyncio
import time

from _workload import TEXT, Ping, emit, percentile_us


async def rr(n: int, warmup: int) -> dict[str, float]:
    queue: asyncio.Queue[tuple[Ping, asyncio.Future[Ping]]] = asyncio.Queue()

    async def echo() -> None:
        while True:
            message, reply = await queue.get()
            reply.set_result(message)

    worker = asyncio.create_task(echo())
    loop = asyncio.get_running_loop()
    latencies: list[int] = []

    async def caller(count: int) -> None:
        for i in range(count):
            started = time.perf_counter_ns()
            reply: asyncio.Future[Ping] = loop.create_future()
            queue.put_nowait((Ping(TEXT, i), reply))
            assert (await reply).seq == i
            latencies.append(time.perf_counter_ns() - started)

    await caller(warmup)
    latencies.clear()
    t0 = time.perf_counter()
    await caller(n)
    elapsed = time.perf_counter() - t0
    worker.cancel()
    latencies.sort()
    return {
        "rr_msgs_s": n / elapsed,
        "rr_p50_us": percentile_us(latencies, 0.5),
        "rr_p99_us": percentile_us(latencies, 0.99),
    }


async def conc(total: int, width: int, warmup: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    queues = [asyncio.Queue[tuple[Ping, asyncio.Future[Ping]]]() for _ in range(width)]

    async def echo(queue: asyncio.Queue[tuple[Ping, asyncio.Future[Ping]]]) -> None:
        while True:
            message, reply = await queue.get()
            reply.set_result(message)

    workers = [asyncio.create_task(echo(q)) for q in queues]

    async def caller(i: int, count: int) -> None:
        for s in range(count):
            reply: asyncio.Future[Ping] = loop.create_future()
            queues[i].put_nowait((Ping(TEXT, s), reply))
            await reply

    await asyncio.gather(*(caller(i, max(1, warmup // width)) for i in range(width)))
    per = total // width
    t0 = time.perf_counter()
    await asyncio.gather(*(caller(i, per) for i in range(width)))
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.cancel()
    return {"conc_msgs_s": per * width / elapsed}


async def fanout(publishes: int, subscribers: int) -> dict[str, float]:
    queues = [asyncio.Queue[Ping]() for _ in range(subscribers)]
    done = asyncio.Event()
    count = 0
    target = publishes * subscribers

    async def consume(queue: asyncio.Queue[Ping]) -> None:
        nonlocal count
        while True:
            await queue.get()
            count += 1
            if count == target:
                done.set()

    workers = [asyncio.create_task(consume(q)) for q in queues]
    t0 = time.perf_counter()
    for s in range(publishes):
        message = Ping(TEXT, s)
        for queue in queues:
            queue.put_nowait(message)
    await done.wait()
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.cancel()
    return {"fanout_deliveries_s": target / elapsed}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--total", type=int, default=20000)
    parser.add_argument("--conc", type=int, default=100)
    parser.add_argument("--publishes", type=int, default=5000)
    parser.add_argument("--subs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1000)
    args = parser.parse_args()
    row = await rr(args.n, args.warmup)
    row |= await conc(args.total, args.conc, args.warmup)
    row |= await fanout(args.publishes, args.subs)
    emit("floor_local", row)


if __name__ == "__main__":
    asyncio.run(main())
