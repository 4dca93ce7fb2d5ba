"""How long a durable run takes to go on after its worker was down for a while.

An agent workflow (the demo's, served by `ravi restate worker`) waits for its
approval; the worker is killed (-9), the approval is answered (Restate holds
it), and the worker comes back `--outage` seconds after the kill. Restate has
been retrying the run with exponential backoff all along, so the run resumes
at the first retry after the worker is back, not when it is back. Measured:

    recovery_s    from the worker serving again to the run completed

once with restate-server's default retry policy (0.5 s doubling up to 60 s)
and once with `default-retry-policy.max-interval` lowered to `--max-interval`,
the runs interleaved; medians of `--runs`.

    python bench/restate_recovery.py --runs 5 --outage 45 --max-interval 5s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ravi.integrations.runtime.restate import RestateSettings, RestateWorkflowClient
from ravi.testing import NodeProcess, RestateServer, eventually, ravi_command, start_node

BENCH = Path(__file__).resolve().parent
RESTATE_SERVER = (
    BENCH.parent / "tools/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _worker(server: RestateServer, listen: str) -> NodeProcess:
    command = [*ravi_command(), "restate", "worker", "--ingress", server.ingress_url]
    command += ["--admin", server.admin_url, "--listen", listen]
    return await start_node(command, timeout=60)


async def recovery(outage: float, settings: dict[str, str]) -> float:
    """One run: seconds from the worker serving again to the run completed."""
    with tempfile.TemporaryDirectory() as folder:
        server = RestateServer(RESTATE_SERVER, Path(folder), settings=settings)
        await server.start()
        listen = f"127.0.0.1:{_free_port()}"
        worker = await _worker(server, listen)
        try:
            client_settings = RestateSettings(server.ingress_url, server.admin_url, timeout=5)
            async with RestateWorkflowClient(client_settings) as client:
                run = await client.start_agent_workflow(
                    thread_id="outage", user_content="restate", model="demo"
                )

                async def waiting() -> str:
                    state = await client.query_workflow(run)
                    assert state["status"] == "waiting_for_approval", state
                    return str(state["pending_approvals"][0]["promise"])

                promise = await eventually(waiting, timeout=60, interval=0.1)
                await worker.kill()
                killed = time.monotonic()
                await client.resolve_promise(
                    workflow_id=run, promise_name=promise, value={"action": "approve"}
                )
                await asyncio.sleep(max(0.0, outage - (time.monotonic() - killed)))
                worker = await _worker(server, listen)
                back = time.monotonic()
                result = await client.wait_for_result(run, timeout=outage + 300)
                assert result["status"] == "completed", result
                return time.monotonic() - back
        finally:
            await worker.stop()
            await server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--outage", type=float, default=45.0, help="seconds the worker is down")
    parser.add_argument("--max-interval", default="5s", help="the tuned retry interval cap")
    args = parser.parse_args()
    configs = {
        "default": {},
        f"max-interval {args.max_interval}": {
            "RESTATE_DEFAULT_RETRY_POLICY__MAX_INTERVAL": args.max_interval
        },
    }
    measured: dict[str, list[float]] = {name: [] for name in configs}
    for run in range(args.runs):
        for name, settings in configs.items():
            seconds = await recovery(args.outage, settings)
            measured[name].append(seconds)
            print(f"run {run + 1}/{args.runs} {name}: {seconds:.1f} s", file=sys.stderr)
    summary = {
        name: {
            "outage_s": args.outage,
            "recovery_s_median": round(statistics.median(values), 1),
            "recovery_s_min": round(min(values), 1),
            "recovery_s_max": round(max(values), 1),
        }
        for name, values in measured.items()
    }
    for name, figures in summary.items():
        print(
            f"{name:>22}: after a {args.outage:.0f} s outage the run went on "
            f"{figures['recovery_s_median']} s after the worker was back "
            f"(min {figures['recovery_s_min']}, max {figures['recovery_s_max']})"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
