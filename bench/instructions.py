"""Instructions per message, counted by valgrind: figures load cannot move.

Three workloads, each with no interceptor, one pass-through interceptor, or what
`ravi.telemetry.configure()` installs, its traces unsampled (the path of 99%
of messages at 1% sampling; the endpoint is never reached):

- round trip: two agents on a LocalRuntime, one asking the other in a loop
  (`local_ravi.py`'s round trip, its agents);
- remote publish, remote round trip: two GrpcRuntime nodes in one process on
  loopback, as `grpc_ravi.py` runs them; node A publishes in a loop and node
  B's subscriber counts, or node A asks B's echo agent in a loop. The count is
  of both nodes and every thread (gRPC's own too).

Each variant runs under callgrind twice, with two loop lengths (per workload);
the difference of the two totals over the difference of the messages leaves
out start-up and imports.

    .venv/bin/python bench/instructions.py              # needs valgrind on PATH
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from local_ravi import Caller, Echo, Start

from ravi import AgentId, Interceptor, TopicId
from ravi.runtime import LocalRuntime

VARIANTS = ("none", "hook", "tracing-unsampled")
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def installed(variant: str) -> list[Interceptor]:
    if variant == "hook":
        return [Interceptor()]
    if variant == "tracing-unsampled":
        from ravi.telemetry import configure

        # No export attempt during the run: the exporters' threads would add
        # instructions that grow with the (valgrind-slowed) wall time. Roots
        # (a client's publishes) are never sampled.
        os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "3600000"
        os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "3600000"
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = "0"
        telemetry = configure("bench", endpoint="http://127.0.0.1:9")
        assert telemetry is not None
        return telemetry.interceptors
    return []


async def round_trips(variant: str, n: int) -> None:
    runtime = LocalRuntime(interceptors=installed(variant))
    await Echo.register(runtime, "echo")
    await Caller.register(runtime, "caller")
    async with runtime:
        # An unsampled traceparent makes every run take the unsampled path.
        await runtime.send_message(
            Start(n), AgentId("caller", "default"), metadata={"traceparent": UNSAMPLED}
        )
    # No exporter shutdown: its retries to the unreached endpoint are not the
    # round trip's cost.
    os._exit(0)


@contextlib.asynccontextmanager
async def two_nodes(variant: str) -> AsyncIterator[Any]:
    """Node A, a GrpcRuntime peered with node B (`grpc_agents`' agents), both here."""
    # Imported here: more modules make a larger heap for the collector to
    # scan, which the local round trips would count too.
    import grpc_agents

    from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions

    interceptors = installed(variant)
    # Under valgrind the process runs tens of times slower, one thread at a
    # time: pings would go unanswered, and their count would grow with time.
    slow = {"keepalive_time": 3600.0, "keepalive_timeout": 600.0}
    b = GrpcRuntime(
        port=0, options=GrpcRuntimeOptions(node_id="b", **slow), interceptors=interceptors
    )
    await grpc_agents.setup(b)
    async with b:
        a = GrpcRuntime(
            port=0,
            remote_peers={"b": b.address},
            options=GrpcRuntimeOptions(node_id="a", **slow),
            interceptors=interceptors,
        )
        async with a:
            await a.wait_until_ready("echo")
            # B follows A (its Subscribe stream) once A has connected to it.
            for _ in range(1000):
                if any(peer.connected for peer in b.peers()):
                    break
                await asyncio.sleep(0.01)
            yield a


async def remote_publishes(variant: str, n: int) -> None:
    from _workload import TEXT
    from grpc_agents import Arm, Ping, Wait

    async with two_nodes(variant) as a:
        ctl, topic = AgentId("ctl", "default"), TopicId("fan", "default")
        for count in (100, n):  # a warm-up, then the counted publishes
            await a.send_message(Arm(count), ctl)
            for s in range(count):
                await a.publish_message(Ping(TEXT, s), topic)
            done = await a.send_message(Wait(), ctl, timeout=600)
            assert done.count == count
    os._exit(0)


async def remote_round_trips(variant: str, n: int) -> None:
    from _workload import TEXT
    from grpc_agents import Ping

    async with two_nodes(variant) as a:
        echo = AgentId("echo", "default")
        for count in (100, n):  # a warm-up, then the counted round trips
            for s in range(count):
                await a.send_message(Ping(TEXT, s), echo)
    os._exit(0)


# Each workload with its two lengths: a remote round trip waits on loopback,
# which valgrind slows most.
WORKLOADS = {
    "round_trip": (round_trips, 2000, 8000),
    "remote_publish": (remote_publishes, 2000, 8000),
    "remote_round_trip": (remote_round_trips, 500, 1500),
}


def counted(workload: str, variant: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                *(sys.executable, __file__, "--child", workload, variant, str(n)),
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        assert found is not None, "no total in callgrind's output"
        return int(found[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("WORKLOAD", "VARIANT", "N"))
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    parser.add_argument("--short", type=int, help="fewer messages (default per workload)")
    parser.add_argument("--long", type=int, help="more messages (default per workload)")
    args = parser.parse_args()
    if args.child:
        workload, variant, n = args.child
        asyncio.run(WORKLOADS[workload][0](variant, int(n)))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on PATH (apt-get install valgrind)")
    for workload in args.workload or list(WORKLOADS):
        _, short, long = WORKLOADS[workload]
        short, long = args.short or short, args.long or long
        row = {}
        for variant in VARIANTS:
            spent = counted(workload, variant, long) - counted(workload, variant, short)
            row[variant] = round(spent / (long - short))
        row["tracing-unsampled / none"] = round(row["none"] / row["tracing-unsampled"], 3)
        print(json.dumps({"bench": f"instructions_per_{workload}", **row}), flush=True)


if __name__ == "__main__":
    main()
