"""A member of a `dns:` pool for the rebalancing tests: a node whose pool name resolves from a file.

It runs what `ravi node` runs (a GrpcRuntime hosting the counter agent,
stopped gracefully on SIGTERM), with one difference: the pool's name is
resolved by reading the JSON list of addresses the test writes to `--answers`,
so that the test scales the pool the way a Kubernetes Deployment changes
what its headless Service resolves to, on loopback and without a DNS server.

    python -m tests.integration.pool_node --listen 127.0.0.2:PORT --node-id ID \\
        --pool writers.test:PORT --answers FILE --state-store postgresql://...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path

from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions, PeerDiscovery
from ravi.testing import counter_setup


def file_resolver(answers: Path) -> PeerDiscovery:
    async def resolve(host: str, port: int) -> list[str]:
        addresses: list[str] = json.loads(await asyncio.to_thread(answers.read_text))
        return addresses

    return PeerDiscovery(interval=0.1, resolver=resolve, drain_timeout=5)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--pool", required=True, help="NAME:PORT")
    parser.add_argument("--answers", type=Path, required=True)
    parser.add_argument("--state-store", required=True)
    parser.add_argument("--checkpoint", default="passivation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    host, _, port = args.listen.rpartition(":")
    runtime = GrpcRuntime(
        host,
        int(port),
        {"pool": f"dns:{args.pool}"},
        options=GrpcRuntimeOptions(
            node_id=args.node_id, state_store=args.state_store, checkpoint=args.checkpoint
        ),
        discovery=file_resolver(args.answers),
    )
    await counter_setup(runtime)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await runtime.start()
    print(f"ravi node {runtime.node_id} serving on {runtime.address}", flush=True)
    try:
        await stopping.wait()
    finally:
        await runtime.stop()


if __name__ == "__main__":
    asyncio.run(main())
