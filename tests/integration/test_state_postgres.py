"""The PostgreSQL state store against a real server: versions, holders, leases, hand-over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ravi import AgentId
from ravi.errors import StaleState, Unavailable
from ravi.runtime import LocalRuntime
from ravi.state import PostgresStore
from ravi.testing import PostgresServer, running_postgres
from tests.unit.test_lifecycle import Add, Tally

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(120),
]

AGENT = AgentId("counter", "k")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def postgres() -> AsyncIterator[PostgresServer]:
    async with running_postgres() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def stores(postgres: PostgresServer) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    first, second = PostgresStore(postgres.dsn, lease=1.5), PostgresStore(postgres.dsn, lease=1.5)
    await asyncio.gather(first.open("node-a"), second.open("node-b"))
    try:
        yield first, second
    finally:
        await asyncio.gather(first.close(), second.close())
        cleanup = PostgresStore(postgres.dsn)
        await cleanup.open("cleanup")
        assert cleanup._pool is not None
        await cleanup._pool.execute("TRUNCATE ravi_agent_state")
        await cleanup.close()


async def test_a_live_holder_keeps_its_agent_until_it_lets_go(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = stores
    claimed = await first.load(AGENT)
    assert (claimed.state, claimed.version, claimed.held_by) == (None, 0, "")
    version = await first.save(AGENT, {"n": 1}, claimed.version)
    assert (await second.load(AGENT)).held_by == "node-a"
    # The holder may save again and again while it holds the agent...
    version = await first.save(AGENT, {"n": 2}, version)
    # ...and lets it go with its last save: the other node gets what it saved.
    version = await first.save(AGENT, {"n": 3}, version, release=True)
    taken = await second.load(AGENT)
    assert (taken.state, taken.version, taken.held_by) == ({"n": 3}, version, "")
    with pytest.raises(StaleState, match="held by node 'node-b'"):
        await first.save(AGENT, {"n": 99}, version)
    assert await second.save(AGENT, {"n": 4}, version) == version + 1


async def test_the_agents_of_a_dead_node_are_free_once_its_lease_lapses(
    postgres: PostgresServer, stores: tuple[PostgresStore, PostgresStore]
) -> None:
    _, second = stores
    dying = PostgresStore(postgres.dsn, lease=1.5)
    await dying.open("node-dead")
    version = await dying.save(AGENT, {"n": 1}, (await dying.load(AGENT)).version)
    # Killed: no close (which would drop the lease at once), no renewals.
    assert dying._renewer is not None
    dying._renewer.cancel()
    assert (await second.load(AGENT)).held_by == "node-dead"
    loop = asyncio.get_running_loop()
    started = loop.time()
    while (taken := await second.load(AGENT)).held_by:
        assert loop.time() - started < 10, "the lease never lapsed"
        await asyncio.sleep(0.1)
    assert taken.state == {"n": 1}
    assert loop.time() - started >= 0.5
    with pytest.raises(StaleState):
        await dying.save(AGENT, {"n": 2}, version)
    assert dying._pool is not None
    await dying._pool.close()


async def test_a_node_restarted_under_its_id_gets_its_agents_back_at_once(
    postgres: PostgresServer, stores: tuple[PostgresStore, PostgresStore]
) -> None:
    first, second = stores
    version = await first.save(AGENT, {"n": 5}, (await first.load(AGENT)).version)
    restarted = PostgresStore(postgres.dsn)
    await restarted.open("node-a")
    try:
        again = await restarted.load(AGENT)
        assert (again.state, again.version, again.held_by) == ({"n": 5}, version, "")
        assert (await second.load(AGENT)).held_by == "node-a"
    finally:
        await restarted.close()


async def test_a_closed_store_lets_its_agents_go(
    postgres: PostgresServer, stores: tuple[PostgresStore, PostgresStore]
) -> None:
    _, second = stores
    leaving = PostgresStore(postgres.dsn)
    await leaving.open("node-leaving")
    await leaving.save(AGENT, {"n": 7}, (await leaving.load(AGENT)).version)
    await leaving.close()
    assert (await second.load(AGENT)).state == {"n": 7}


async def test_concurrent_writers_of_one_version_one_wins(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, _ = stores
    version = (await first.load(AGENT)).version
    outcomes = await asyncio.gather(
        *(first.save(AGENT, {"n": i}, version) for i in range(10)), return_exceptions=True
    )
    assert sum(1 for o in outcomes if isinstance(o, int)) == 1
    assert sum(1 for o in outcomes if isinstance(o, StaleState)) == 9


async def test_an_unreachable_server_is_a_clear_error() -> None:
    store = PostgresStore("postgresql://ravi@127.0.0.1:1/postgres", timeout=2)
    with pytest.raises(Unavailable, match=r"cannot reach the state store postgresql://ravi@"):
        await store.open("node")


async def test_two_runtimes_hand_an_agent_over_through_the_store(postgres: PostgresServer) -> None:
    # The second runtime's activation waits while the first holds the agent,
    # and goes on with what the first saved once it passivated the agent.
    first = LocalRuntime(state_store=PostgresStore(postgres.dsn), checkpoint="each_message")
    second = LocalRuntime(state_store=PostgresStore(postgres.dsn))
    for runtime in (first, second):
        await Tally.register(runtime, "tally")
    async with first, second:
        agent = AgentId("tally", "moving")
        assert await first.send_message(Add(2), agent) == 2
        waiting = asyncio.ensure_future(second.send_message(Add(3), agent, timeout=20))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        mailbox = next(iter(first._host.agents()))
        task = first._host.passivate(mailbox, "moved")
        assert task is not None
        await task
        assert await waiting == 5
        with pytest.raises(Unavailable, match="is held by node"):
            await first.send_message(Add(1), agent, timeout=0.5)
