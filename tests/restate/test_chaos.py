"""20 approvals on the serve path, a random process killed -9 during every wait: each pays once.

`ravi serve --runtime restate` in front, `ravi restate worker` hosting an
assistant whose one tool pays (a SQLite ledger keyed by the idempotency key),
and a restate-server that suspends idle invocations after a second. Each round
asks four approvals at once, waits until Restate has suspended the runs, kills
-9 the worker, the restate-server or the web front and starts it again, checks
that every card is shown again (status and Server-Sent Events replay), then
answers; every other round also kills the worker right after the answers,
while the tool may be paying. Every run must complete, and the ledger hold one
charge per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from ravi.testing import RestateServer, eventually
from tests.restate.processes import Serve, Worker, events_until, restate_server
from tests.restate.test_crashes import attempts, charges

pytestmark = [pytest.mark.restate, pytest.mark.timeout(600)]

ROUNDS = 10
AT_ONCE = 2


async def all_suspended(server: RestateServer, count: int) -> None:
    """Every run of the round waits suspended: no attempt of the agent is in progress."""
    async with httpx.AsyncClient(timeout=30) as admin:

        async def check() -> None:
            response = await admin.post(
                f"{server.admin_url}/query",
                json={
                    "query": "SELECT status FROM sys_invocation "
                    "WHERE target_service_name = 'assistant' AND status <> 'completed'"
                },
                headers={"accept": "application/json"},
            )
            statuses = [row["status"] for row in response.json()["rows"]]
            assert statuses == ["suspended"] * count, statuses

        await eventually(check, timeout=90, interval=0.25, retry_on=(AssertionError, KeyError))


async def card_shown_again(client: httpx.AsyncClient, thread: str, asked: dict[str, Any]) -> None:
    """After the restart, the front shows the same card: in the status and in the event replay."""
    request_id = asked["approval_request"]["request_id"]

    async def shown() -> None:
        response = await client.get(f"/threads/{thread}")
        assert response.status_code == 200, response.text
        status = response.json()
        assert status["status"] == "waiting_for_approval", status
        pending = [p["approval_request"]["request_id"] for p in status["pending_approvals"]]
        assert pending == [request_id]

    await eventually(shown, timeout=90, interval=0.25, retry_on=(AssertionError, httpx.HTTPError))
    replayed = await events_until(client, thread, {"approval_request"}, after=asked["seq"] - 1)
    assert replayed == [asked]


async def test_twenty_approvals_survive_a_kill_during_every_wait(tmp_path: Path) -> None:
    randomness = random.Random(13)
    kinds = ["worker", "restate-server", "serve"]
    victims = kinds * (ROUNDS // len(kinds))
    victims += [randomness.choice(kinds) for _ in range(ROUNDS - len(victims))]
    randomness.shuffle(victims)
    server = restate_server(tmp_path / "restate")
    results: dict[str, dict[str, Any]] = {}
    async with contextlib.AsyncExitStack() as cleanup:
        await server.start()
        cleanup.push_async_callback(server.stop)
        worker = Worker(server, tmp_path, "tests.restate.app:assistant_setup")
        serve = Serve(server)
        cleanup.push_async_callback(worker.stop)
        await worker.start()
        cleanup.push_async_callback(serve.stop)
        await serve.start()
        async with serve.client() as client:
            for round_number, victim in enumerate(victims):
                threads = [f"r{round_number}-t{i}" for i in range(AT_ONCE)]
                for thread in threads:
                    started = await client.post(
                        "/threads", json={"thread_id": thread, "content": "pay"}
                    )
                    assert started.status_code == 202, started.text
                cards = await asyncio.gather(
                    *(events_until(client, t, {"approval_request"}) for t in threads)
                )
                await all_suspended(server, AT_ONCE)
                process = {"worker": worker, "restate-server": server, "serve": serve}[victim]
                await process.kill()  # kill -9, every card of the round waiting
                await process.start()
                for thread, seen in zip(threads, cards, strict=True):
                    await card_shown_again(client, thread, seen[-1])
                for seen in cards:
                    request_id = seen[-1]["approval_request"]["request_id"]
                    answered = await client.post(
                        f"/respond/{request_id}", json={"action": "approve"}
                    )
                    assert answered.status_code == 200, answered.text
                if round_number % 2:
                    await asyncio.sleep(randomness.uniform(0.0, 0.3))
                    await worker.kill()  # the pay step may be running: it runs again, pays once
                    await worker.start()
                finals = await asyncio.gather(
                    *(
                        events_until(client, t, {"final", "failed"}, after=seen[-1]["seq"])
                        for t, seen in zip(threads, cards, strict=True)
                    )
                )
                for thread, final in zip(threads, finals, strict=True):
                    assert final[-1]["kind"] == "final", final
                    results[thread] = final[-1]["final"]
    assert len(results) == ROUNDS * AT_ONCE
    ledger = charges(tmp_path)
    for thread, result in results.items():
        key = f"{result['run_id']}/tool-1-1"
        assert result["content"] == f"charged 700 (key {key})", thread
        assert ledger[key] == 700
    assert len(ledger) == ROUNDS * AT_ONCE  # one charge per run, none twice
    repeated = sum(attempts(tmp_path, key) > 1 for key in ledger)
    print(f"kills: {victims}; the pay step ran again {repeated} times, charged once each")
