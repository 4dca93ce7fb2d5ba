"""Agents that come and go on LocalRuntime: passivation, eviction, state stores, checkpoints."""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ravi import (
    ActivateInput,
    AgentId,
    BaseAgent,
    Interceptor,
    MessageContext,
    PassivateInput,
    TopicId,
    TypeSubscription,
    message_handler,
)
from ravi.errors import InvalidArgument, StaleState, Unavailable
from ravi.runtime import LocalRuntime
from ravi.state import MemoryStore, PostgresStore, SqliteStore, StateStore, open_store
from ravi.testing import eventually


@dataclass
class Add:
    amount: int


@dataclass
class Hold:
    promise: str


class Tally(BaseAgent):
    """An agent with state: a running total, and a log of its lifecycle."""

    events: ClassVar[list[str]] = []

    def __init__(self) -> None:
        self.total = 0

    @message_handler
    async def on_add(self, message: Add, ctx: MessageContext) -> int:
        self.total += message.amount
        return self.total

    @message_handler
    async def on_hold(self, message: Hold, ctx: MessageContext) -> Any:
        return await ctx.wait_for(message.promise, timeout=10)

    async def save_state(self) -> Mapping[str, Any]:
        Tally.events.append(f"save {self.id.key} {self.total}")
        return {"total": self.total}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        Tally.events.append(f"load {self.id.key} {state['total']}")
        self.total = state["total"]

    async def close(self) -> None:
        Tally.events.append(f"close {self.id.key}")


class Pinned(Tally):
    resident = True


class Plain(BaseAgent):
    """A stateless agent: passivation only releases it."""

    made: ClassVar[int] = 0

    def __init__(self) -> None:
        Plain.made += 1

    @message_handler
    async def on_add(self, message: Add, ctx: MessageContext) -> int:
        return message.amount


@pytest.fixture(autouse=True)
def _reset() -> None:
    Tally.events = []
    Plain.made = 0


async def runtime_with(**options: Any) -> LocalRuntime:
    runtime = LocalRuntime(**options)
    await Tally.register(runtime, "tally")
    await Pinned.register(runtime, "pinned")
    await Plain.register(runtime, "plain")
    return runtime


def add(runtime: LocalRuntime, key: str, amount: int = 1, agent: str = "tally") -> Awaitable[Any]:
    return runtime.send_message(Add(amount), AgentId(agent, key))


async def test_an_idle_agent_is_passivated_and_comes_back_with_its_state() -> None:
    runtime = await runtime_with(idle_timeout=0.05)
    async with runtime:
        assert await add(runtime, "a", 5) == 5
        assert runtime.active_agents() == {"tally": 1, "pinned": 0, "plain": 0}

        async def passivated() -> None:
            assert runtime.active_agents()["tally"] == 0
            assert Tally.events == ["save a 5", "close a"]

        await eventually(passivated)
        assert await add(runtime, "a", 1) == 6
        assert Tally.events[-1] == "load a 5"


async def test_an_agent_in_use_is_never_idle() -> None:
    timeout = 0.3
    runtime = await runtime_with(idle_timeout=timeout)
    loop = asyncio.get_running_loop()
    async with runtime:
        longest = 0.0
        last = loop.time()
        for _ in range(40):
            await add(runtime, "busy")
            now = loop.time()
            longest, last = max(longest, now - last), now
            await asyncio.sleep(0.02)
        # A machine stalled for a whole idle_timeout between two messages makes
        # the agent idle for real; otherwise it must never have gone.
        if longest < timeout:
            assert Tally.events == []
            assert runtime.active_agents()["tally"] == 1
        assert await add(runtime, "busy", 0) == 40


async def test_a_handler_waiting_for_a_promise_keeps_its_agent() -> None:
    runtime = await runtime_with(idle_timeout=0.02)
    async with runtime:
        waiting = asyncio.ensure_future(runtime.send_message(Hold("go"), AgentId("tally", "w")))
        await asyncio.sleep(0.3)
        assert runtime.active_agents()["tally"] == 1
        await runtime.resolve_promise("go", "done")
        assert await waiting == "done"

        async def passivated() -> None:
            assert runtime.active_agents()["tally"] == 0

        await eventually(passivated)


async def test_a_resident_agent_stays_however_idle() -> None:
    runtime = await runtime_with(idle_timeout=0.02, max_active_agents=1)
    async with runtime:
        await add(runtime, "r", agent="pinned")
        await add(runtime, "x")
        await asyncio.sleep(0.2)
        assert runtime.active_agents() == {"tally": 0, "pinned": 1, "plain": 0}


async def test_one_instance_can_be_marked_resident() -> None:
    runtime = await runtime_with(idle_timeout=0.02)
    async with runtime:
        await add(runtime, "kept")
        await add(runtime, "gone")
        for agent in runtime._host.agents():
            if agent.agent_id.key == "kept":
                agent.agent.resident = True

        async def only_kept() -> None:
            assert [m.agent_id.key for m in runtime._host.agents()] == ["kept"]

        await eventually(only_kept)
        await asyncio.sleep(0.1)
        await only_kept()


async def test_beyond_max_active_agents_the_least_recently_used_goes() -> None:
    runtime = await runtime_with(max_active_agents=3)
    async with runtime:
        for key in "abc":
            await add(runtime, key)
        await add(runtime, "a")  # a was used since: b is the least recently used
        await add(runtime, "d")
        assert runtime.active_agents()["tally"] == 3
        keys = sorted(m.agent_id.key for m in runtime._host.agents())
        assert keys == ["a", "c", "d"]
        assert await add(runtime, "b", 10) == 11
        assert Tally.events.count("load b 1") == 1


async def test_many_stateless_keys_stay_bounded_and_store_nothing() -> None:
    store = MemoryStore()
    runtime = await runtime_with(max_active_agents=50, state_store=store)
    async with runtime:
        for i in range(2000):
            assert await add(runtime, f"k{i}", i, agent="plain") == i
        assert runtime.active_agents()["plain"] <= 50
        assert Plain.made == 2000
    assert len(store) == 0


async def test_memory_stays_bounded_however_many_keys() -> None:
    # DESIGN.md's memory target is a benchmark (bench/keys_ravi.py: 1,000,000
    # keys); this is its quick guard: an instance kept per key would hold
    # about 50 MiB more here.
    runtime = await runtime_with(max_active_agents=100)
    async with runtime:
        for i in range(2000):
            await add(runtime, f"warm-{i}", agent="plain")
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(20_000):
                await add(runtime, f"key-{i}", agent="plain")
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert runtime.active_agents()["plain"] <= 100
        assert grown < 2 * 1024 * 1024, f"{grown} bytes more for 20,000 keys"


async def test_concurrent_first_messages_share_one_activation() -> None:
    runtime = await runtime_with(max_active_agents=2)
    async with runtime:
        results = await asyncio.gather(*(add(runtime, "same") for _ in range(20)))
        assert sorted(results) == list(range(1, 21))
        assert Tally.events == []


async def test_an_agent_busy_beyond_the_bound_is_kept_until_it_is_idle() -> None:
    runtime = await runtime_with(max_active_agents=1)
    async with runtime:
        waiting = asyncio.ensure_future(runtime.send_message(Hold("p"), AgentId("tally", "w")))
        await asyncio.sleep(0.05)
        assert await add(runtime, "other") == 1
        assert runtime.active_agents()["tally"] == 2  # w is busy: over the bound for now
        await runtime.resolve_promise("p", 1)
        await waiting
        await add(runtime, "third")
        assert runtime.active_agents()["tally"] == 1


async def test_publications_activate_and_passivate_too() -> None:
    runtime = await runtime_with(idle_timeout=0.05)
    await runtime.add_subscription(TypeSubscription("adds", "tally"))
    async with runtime:
        await runtime.publish_message(Add(3), TopicId("adds", "p"))
        await runtime.stop_when_idle(timeout=5)
    assert Tally.events == ["save p 3", "close p"]


async def test_stop_saves_every_agent_and_a_new_runtime_loads_it(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    runtime = await runtime_with(state_store=SqliteStore(path))
    async with runtime:
        await add(runtime, "a", 2)
        await add(runtime, "b", 3)
    assert sorted(Tally.events) == ["close a", "close b", "save a 2", "save b 3"]
    again = await runtime_with(state_store=f"sqlite:{path}")
    async with again:
        assert await add(again, "a", 1) == 3
        assert await add(again, "b", 1) == 4


async def test_each_message_checkpoint_saves_before_the_reply(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3")
    runtime = await runtime_with(state_store=store, checkpoint="each_message")
    async with runtime:
        for expected in range(1, 4):
            assert await add(runtime, "c") == expected
            stored = await store.load(AgentId("tally", "c"))
            assert (stored.state, stored.version) == ({"total": expected}, expected)


async def test_a_stale_copy_is_refused_and_discarded(tmp_path: Path) -> None:
    # Two runtimes over one store hold the same key: the one that saves second
    # held an older version, so its write is refused and its copy dropped.
    path = tmp_path / "state.sqlite3"
    first = await runtime_with(state_store=SqliteStore(path), checkpoint="each_message")
    second = await runtime_with(state_store=SqliteStore(path), checkpoint="each_message")
    async with first, second:
        assert await add(first, "k") == 1
        assert await add(second, "k") == 2  # activated from the store: version 1
        with pytest.raises(StaleState, match="was not saved"):
            await add(first, "k")
        assert first.active_agents()["tally"] == 0
        assert await add(first, "k") == 3  # loaded afresh: version 2
        with pytest.raises(StaleState):
            await add(second, "k")
    store = SqliteStore(path)
    await store.open("check")
    stored = await store.load(AgentId("tally", "k"))
    await store.close()
    assert stored.state == {"total": 3}


async def test_a_stale_copy_fails_its_queued_messages_too(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = await runtime_with(state_store=SqliteStore(path), checkpoint="each_message")
    second = await runtime_with(state_store=SqliteStore(path), checkpoint="each_message")
    async with first, second:
        await add(first, "q")
        await add(second, "q")
        outcomes = await asyncio.gather(
            *(add(first, "q") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(o, StaleState) for o in outcomes), outcomes
        assert first.mailbox_depths().get("tally", 0) == 0


class Lifecycles(Interceptor):
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def activate(
        self, input: ActivateInput, next: Callable[[ActivateInput], Awaitable[None]]
    ) -> None:
        await next(input)
        self.seen.append(f"activate {input.agent_id} v{input.loaded_version}")

    async def passivate(
        self, input: PassivateInput, next: Callable[[PassivateInput], Awaitable[None]]
    ) -> None:
        await next(input)
        self.seen.append(f"passivate {input.agent_id} {input.reason} saved={input.saved}")


async def test_interceptors_see_activations_and_passivations_with_their_reason() -> None:
    hooks = Lifecycles()
    runtime = await runtime_with(max_active_agents=1, interceptors=[hooks])
    async with runtime:
        await add(runtime, "a")
        await add(runtime, "b")
        await add(runtime, "a")
    # A passivation saves in the background; the next activation of its key
    # waits for it, so a's second activation loads what its passivation saved.
    assert hooks.seen == [
        "activate tally/a v0",
        "activate tally/b v0",
        "passivate tally/a capacity saved=True",
        "activate tally/a v1",
        "passivate tally/b capacity saved=True",
        "passivate tally/a stop saved=True",
    ]


class Unsaveable(Tally):
    async def save_state(self) -> Mapping[str, Any]:
        return {"when": object()}


async def test_state_that_is_not_json_is_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    runtime = LocalRuntime(checkpoint="each_message")
    await Unsaveable.register(runtime, "bad")
    async with runtime:
        for _ in range(2):  # nothing was written: the instance stays
            with pytest.raises(InvalidArgument, match="not JSON-compatible"):
                await runtime.send_message(Add(1), AgentId("bad", "x"))
        assert runtime.active_agents()["bad"] == 1
    with caplog.at_level(logging.ERROR, logger="ravi"):
        runtime = LocalRuntime(max_active_agents=1)
        await Unsaveable.register(runtime, "bad")
        async with runtime:
            await runtime.send_message(Add(1), AgentId("bad", "x"))
            await runtime.send_message(Add(1), AgentId("bad", "y"))
    assert "not JSON-compatible" in caplog.text


async def test_a_store_that_cannot_open_fails_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    runtime = LocalRuntime(state_store=SqliteStore(blocker / "state.sqlite3"))
    with pytest.raises(Unavailable, match="cannot open the state store"):
        await runtime.start()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"idle_timeout": -1}, "idle_timeout must not be negative"),
        ({"max_active_agents": -1}, "max_active_agents must not be negative"),
        ({"checkpoint": "sometimes"}, "checkpoint must be one of passivation, each_message"),
    ],
)
def test_bad_lifecycle_settings_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalRuntime(**options)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_stores_version_every_write(store: str, tmp_path: Path) -> None:
    opened: StateStore = MemoryStore() if store == "memory" else SqliteStore(tmp_path / "s.db")
    agent = AgentId("t", "k")
    await opened.open("node")
    try:
        assert (await opened.load(agent)).version == 0
        assert await opened.save(agent, {"n": 1}, 0) == 1
        assert await opened.save(agent, {"n": 2}, 1) == 2
        for wrong in (0, 1, 3):
            with pytest.raises(StaleState, match=f"had version {wrong}, the store has version 2"):
                await opened.save(agent, {"n": 9}, wrong)
        loaded = await opened.load(agent)
        assert (loaded.state, loaded.version, loaded.held_by) == ({"n": 2}, 2, "")
        with pytest.raises(InvalidArgument, match="not JSON-compatible"):
            await opened.save(agent, {"n": {1, 2}}, 2)
    finally:
        await opened.close()


def test_store_urls() -> None:
    assert isinstance(open_store("memory"), MemoryStore)
    relative = open_store("sqlite:state.db")
    assert isinstance(relative, SqliteStore)
    assert relative.path == Path("state.db")
    absolute = open_store("sqlite:///var/lib/ravi/state.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == Path("/var/lib/ravi/state.db")
    shared = open_store("postgresql://ravi:secret@db:5432/ravi")
    assert isinstance(shared, PostgresStore)
    assert "secret" not in repr(shared)
    for bad in ("mysql://x", "sqlite:", "redis"):
        with pytest.raises(InvalidArgument):
            open_store(bad)
