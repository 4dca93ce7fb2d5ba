"""The floor of the gRPC workloads: bare grpc.aio between two processes.

A server process answers a unary Echo and a bidirectional Echo stream with raw
bytes (no ravi, no protobuf decoding); the client measures what ravi's gRPC
workloads measure. The bytes are the ravi Ping's JSON encoding, so the payload
size matches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from _workload import TEXT, emit, percentile_us

SERVICE = "bench.Echo"
PAYLOAD = json.dumps({"text": TEXT, "seq": 1}).encode()


def _identity(data: bytes) -> bytes:
    return data


async def _unary(request: bytes, context: Any) -> bytes:
    return request


async def _stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def serve(port_queue: Any) -> None:
    async def run() -> None:
        server = grpc.aio.server()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(
                _unary, request_deserializer=_identity, response_serializer=_identity
            ),
            "Stream": grpc.stream_stream_rpc_method_handler(
                _stream, request_deserializer=_identity, response_serializer=_identity
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_queue.put(port)
        await server.wait_for_termination()

    asyncio.run(run())


async def drive(address: str, args: argparse.Namespace) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        unary = channel.unary_unary(
            f"/{SERVICE}/Unary", request_serializer=_identity, response_deserializer=_identity
        )
        for _ in range(args.warmup):
            await unary(PAYLOAD, timeout=10)
        latencies: list[int] = []
        t0 = time.perf_counter()
        for _ in range(args.n):
            started = time.perf_counter_ns()
            await unary(PAYLOAD, timeout=10)
            latencies.append(time.perf_counter_ns() - started)
        row = {"rr_msgs_s": args.n / (time.perf_counter() - t0)}
        latencies.sort()
        row |= {
            "rr_p50_us": percentile_us(latencies, 0.5),
            "rr_p99_us": percentile_us(latencies, 0.99),
        }

        async def worker(count: int) -> None:
            for _ in range(count):
                await unary(PAYLOAD, timeout=10)

        per = args.total // args.conc
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(per) for _ in range(args.conc)))
        row["conc_msgs_s"] = per * args.conc / (time.perf_counter() - t0)

        stream = channel.stream_stream(
            f"/{SERVICE}/Stream", request_serializer=_identity, response_deserializer=_identity
        )
        call = stream()

        async def produce() -> None:
            for _ in range(args.publishes):
                await call.write(PAYLOAD)
            await call.done_writing()

        t0 = time.perf_counter()
        producer = asyncio.ensure_future(produce())
        received = 0
        async for _ in call:
            received += 1
        await producer
        row["stream_msgs_s"] = received / (time.perf_counter() - t0)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--total", type=int, default=6400)
    parser.add_argument("--conc", type=int, default=64)
    parser.add_argument("--publishes", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    context = mp.get_context("spawn")
    ports: Any = context.Queue()
    server = context.Process(target=serve, args=(ports,), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        row = asyncio.run(drive(f"127.0.0.1:{port}", args))
    finally:
        server.terminate()
        server.join(5)
    emit("floor_grpc", row)


if __name__ == "__main__":
    main()
