"""Instructions per in-process round trip, counted by valgrind: a figure load cannot move.

Two agents on a LocalRuntime, one asking the other in a loop (`local_ravi.py`'s
round trip, its agents), with no interceptor, one pass-through interceptor, or what
`ravi.telemetry.configure()` installs, its trace unsampled (the path of 99% of
messages at 1% sampling; the endpoint is never reached). Each variant runs
under callgrind twice, with two loop lengths; the difference of the two totals
over the difference of the round trips leaves out start-up and imports.

    .venv/bin/python bench/instructions.py              # needs valgrind on PATH
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from local_ravi import Caller, Echo, Start

from ravi import AgentId, Interceptor
from ravi.runtime import LocalRuntime

VARIANTS = ("none", "hook", "tracing-unsampled")
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


async def child(variant: str, n: int) -> None:
    interceptors: list[Interceptor] = []
    if variant == "hook":
        interceptors = [Interceptor()]
    elif variant == "tracing-unsampled":
        from ravi.telemetry import configure

        # No export attempt during the run: the exporters' threads would add
        # instructions that grow with the (valgrind-slowed) wall time.
        os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "3600000"
        os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "3600000"
        telemetry = configure("bench", endpoint="http://127.0.0.1:9")
        assert telemetry is not None
        interceptors = telemetry.interceptors
    runtime = LocalRuntime(interceptors=interceptors)
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


def counted(variant: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                *(sys.executable, __file__, "--child", variant, str(n)),
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
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "N"))
    parser.add_argument("--short", type=int, default=2000)
    parser.add_argument("--long", type=int, default=8000)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child[0], int(args.child[1])))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on PATH (apt-get install valgrind)")
    row = {}
    for variant in VARIANTS:
        spent = counted(variant, args.long) - counted(variant, args.short)
        row[variant] = round(spent / (args.long - args.short))
    row["tracing-unsampled / none"] = round(row["none"] / row["tracing-unsampled"], 3)
    print(json.dumps({"bench": "instructions_per_round_trip", **row}))


if __name__ == "__main__":
    main()
