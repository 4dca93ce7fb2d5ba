"""How long activating an agent takes when its state comes from a store: SQLite and PostgreSQL.

`--agents` counters are saved to the store first (a small JSON state each),
then a LocalRuntime bounded to a few active agents sends one message to each
in turn: every send activates its agent, and the activation (the factory, the
store's load, `load_state`) is timed by an interceptor's `activate` hook. The
PostgreSQL server is real (Debian's, started here on loopback, fsync on): its
load is a claim, one write. Prints p50 and p99 in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from _workload import TEXT, Ping, emit, percentile_us

from ravi import ActivateInput, AgentId, BaseAgent, Interceptor, MessageContext, message_handler
from ravi.runtime import LocalRuntime
from ravi.state import PostgresStore, SqliteStore, StateStore
from ravi.testing import running_postgres


class Counter(BaseAgent):
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> int:
        return len(self.state)

    async def save_state(self) -> Mapping[str, Any]:
        return self.state

    async def load_state(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)


class Timer(Interceptor):
    def __init__(self) -> None:
        self.ns: list[int] = []

    async def activate(
        self, input: ActivateInput, next: Callable[[ActivateInput], Awaitable[None]]
    ) -> None:
        started = time.perf_counter_ns()
        await next(input)
        self.ns.append(time.perf_counter_ns() - started)


async def measure(store: StateStore, agents: int) -> dict[str, float]:
    state = {"seen": 42, "note": TEXT, "tags": ["a", "b", "c"]}
    await store.open("bench-writer")
    for i in range(agents):
        await store.save(AgentId("counter", f"k{i}"), state, 0)
    await store.close()
    timer = Timer()
    runtime = LocalRuntime(max_active_agents=16, state_store=store, interceptors=[timer])
    await Counter.register(runtime, "counter")
    async with runtime:
        for i in range(agents):
            assert await runtime.send_message(Ping(TEXT, i), AgentId("counter", f"k{i}")) == 3
    latencies = sorted(timer.ns)
    return {
        "activation_p50_us": percentile_us(latencies, 0.5),
        "activation_p99_us": percentile_us(latencies, 0.99),
        "activations_s": len(latencies) / (sum(latencies) / 1e9),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", choices=["sqlite", "postgres"])
    parser.add_argument("--agents", type=int, default=2000)
    args = parser.parse_args()
    async with AsyncExitStack() as stack:
        if args.store == "sqlite":
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            store: StateStore = SqliteStore(folder / "state.sqlite3")
        else:
            server = await stack.enter_async_context(running_postgres(durable=True))
            store = PostgresStore(server.dsn)
        row = await measure(store, args.agents)
    emit(f"ravi_activation_{args.store}", row)


if __name__ == "__main__":
    asyncio.run(main())
