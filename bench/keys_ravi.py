"""Many distinct keys, each sent one message, on LocalRuntime with a bound on active agents.

The workload of DESIGN.md section 8, "Memory": 1,000,000 distinct keys
touched once with `max_active_agents=10_000` end at <= 200 MiB RSS. With
`--stateful` every agent has state (a counter) kept in a SQLite store in a
temporary folder, so passivation writes each one to disk. Prints the RSS at
the end, its peak (VmHWM) and the rate. `--before` passes no lifecycle option,
to measure a checkout from before passivation
(`PYTHONPATH=../ravi-before/python/src`), where every key stays active.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _workload import TEXT, Ping, emit

from ravi import AgentId, BaseAgent, MessageContext, message_handler
from ravi.runtime import LocalRuntime


class Echo(BaseAgent):
    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> Ping:
        return message


class Counter(BaseAgent):
    def __init__(self) -> None:
        self.seen = 0

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> Ping:
        self.seen += 1
        return message

    async def save_state(self) -> Mapping[str, Any]:
        return {"seen": self.seen}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        self.seen = state["seen"]


def memory_mib() -> tuple[float, float]:
    """The process's resident set now and its peak, in MiB (Linux /proc)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--max-active-agents", type=int, default=10_000)
    parser.add_argument("--stateful", action="store_true", help="counters in a SQLite store")
    parser.add_argument("--before", action="store_true", help="a ravi without passivation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.before:
            runtime = LocalRuntime()
        else:
            from ravi.state import SqliteStore  # a ravi from before passivation has none

            store = SqliteStore(Path(folder) / "state.sqlite3") if args.stateful else None
            runtime = LocalRuntime(max_active_agents=args.max_active_agents, state_store=store)
        await (Counter if args.stateful else Echo).register(runtime, "agent")
        message = Ping(TEXT, 0)
        async with runtime:
            started_rss, _ = memory_mib()
            t0 = time.perf_counter()
            for i in range(args.keys):
                await runtime.send_message(message, AgentId("agent", f"key-{i}"))
            elapsed = time.perf_counter() - t0
            rss, peak = memory_mib()
            active = args.keys if args.before else runtime.active_agents()["agent"]
    emit(
        "ravi_keys_stateful" if args.stateful else "ravi_keys",
        {
            "keys": args.keys,
            "active_agents": active,
            "rss_mib": rss,
            "peak_rss_mib": peak,
            "start_rss_mib": started_rss,
            "keys_s": args.keys / elapsed,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
