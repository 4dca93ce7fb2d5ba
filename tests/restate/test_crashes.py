"""Crash tests with real processes: kill -9 the worker or the restate-server, and resume.

The worker is `ravi restate worker` serving tests/restate/app.py on a fixed
port (a worker must come back at the same address for its invocations to
resume); the restate-server keeps its data in the test's folder.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ravi.integrations.runtime.restate import RestateSettings, RestateWorkflowClient
from ravi.testing import RestateServer, eventually
from tests.paths import RESTATE_SERVER
from tests.restate.processes import Worker

pytestmark = [pytest.mark.restate, pytest.mark.timeout(240)]


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[RestateServer]:
    restate_server = RestateServer(RESTATE_SERVER, tmp_path / "restate")
    await restate_server.start()
    try:
        yield restate_server
    finally:
        await restate_server.stop()


@pytest_asyncio.fixture
async def worker(server: RestateServer, tmp_path: Path) -> AsyncIterator[Worker]:
    process = Worker(server, tmp_path, "tests.restate.app:setup")
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@pytest_asyncio.fixture
async def client(server: RestateServer) -> AsyncIterator[RestateWorkflowClient]:
    async with RestateWorkflowClient(
        RestateSettings(server.ingress_url, server.admin_url)
    ) as workflows:
        yield workflows


def executions(folder: Path) -> list[str]:
    log = folder / "executions.log"
    return log.read_text().split() if log.exists() else []


async def status_of(client: RestateWorkflowClient, workflow_id: str, wanted: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any]:
        status = await client.query_workflow(workflow_id)
        assert status["status"] == wanted, status
        return status

    return await eventually(reached, timeout=60, interval=0.1)


async def approve_until_completed(
    client: RestateWorkflowClient, workflow_id: str, waiting: dict[str, Any], tmp_path: Path
) -> None:
    """Approve the charge the workflow waits for; it completes, the step before it ran once."""
    (approval,) = waiting["pending_approvals"]
    assert approval["promise"] == f"approval-{approval['request_id']}"
    assert waiting["waiting_for"] == [approval["promise"]]
    resolved = await client.resolve_promise(
        workflow_id=workflow_id, promise_name=approval["promise"], value={"action": "approve"}
    )
    assert resolved == "resolved"
    status = await status_of(client, workflow_id, "completed")
    assert status["result"]["content"].startswith("charged 500")
    assert executions(tmp_path) == ["before"]


async def test_a_killed_worker_does_not_repeat_completed_steps(
    worker: Worker, client: RestateWorkflowClient, tmp_path: Path
) -> None:
    workflow_id = await client.start_agent_workflow(
        thread_id="crash-steps", user_content="go", model="steps"
    )

    async def step_c_running() -> None:
        assert executions(tmp_path) == ["a", "b", "c"]

    await eventually(step_c_running, timeout=30, interval=0.02)
    await worker.kill()  # kill -9 while step c runs
    await worker.start()
    status = await status_of(client, workflow_id, "completed")
    assert status["result"]["content"] == "recorded c"
    ran = executions(tmp_path)
    assert (ran.count("a"), ran.count("b")) == (1, 1)  # journaled: never again
    assert ran.count("c") == 2  # the step running at the crash runs again
    print(f"executions after kill -9 during step c: {ran}")


async def test_an_approval_pending_across_a_worker_restart_resumes_there(
    worker: Worker, client: RestateWorkflowClient, tmp_path: Path
) -> None:
    workflow_id = await client.start_agent_workflow(
        thread_id="crash-approval", user_content="go", model="approval"
    )
    waiting = await status_of(client, workflow_id, "waiting_for_approval")
    await worker.kill()
    await worker.start()
    await approve_until_completed(client, workflow_id, waiting, tmp_path)
    assert charges(tmp_path) == {f"{workflow_id}/tool-2-1": 500}


async def test_a_killed_restate_server_keeps_the_pending_approval(
    server: RestateServer, worker: Worker, client: RestateWorkflowClient, tmp_path: Path
) -> None:
    workflow_id = await client.start_agent_workflow(
        thread_id="crash-server", user_content="go", model="approval"
    )
    waiting = await status_of(client, workflow_id, "waiting_for_approval")
    await server.kill()  # kill -9 the server itself
    await server.start()
    await approve_until_completed(client, workflow_id, waiting, tmp_path)


def charges(folder: Path) -> dict[str, int]:
    db = sqlite3.connect(folder / "ledger.db")
    try:
        return dict(db.execute("SELECT key, cents FROM charges").fetchall())
    finally:
        db.close()


def attempts(folder: Path, key: str) -> int:
    db = sqlite3.connect(folder / "ledger.db")
    try:
        (count,) = db.execute("SELECT count(*) FROM attempts WHERE key = ?", (key,)).fetchone()
        return int(count)
    finally:
        db.close()


async def test_a_payment_is_charged_once_whatever_the_kill_point(
    worker: Worker, client: RestateWorkflowClient, tmp_path: Path
) -> None:
    randomness = random.Random(20261126)
    repeated = 0
    for run in range(20):
        workflow_id = await client.start_agent_workflow(
            thread_id=f"ledger-{run}", user_content="go", model="ledger"
        )
        # The run takes ~0.3-0.6 s after its start: kills land before, inside and
        # after the charge step.
        await asyncio.sleep(randomness.uniform(0.0, 1.2))
        await worker.kill()
        await worker.start()
        status = await status_of(client, workflow_id, "completed")
        key = f"{workflow_id}/tool-2-1"
        assert status["result"]["content"] == f"charged 1000 (key {key})"
        assert charges(tmp_path)[key] == 1000
        repeated += attempts(tmp_path, key) > 1
    assert len(charges(tmp_path)) == 20  # exactly one charge per run
    print(f"20 kill points: the charge step ran again after {repeated} of them, charged once")


async def test_a_run_naming_an_unknown_model_fails_with_not_found(
    worker: Worker, client: RestateWorkflowClient
) -> None:
    workflow_id = await client.start_agent_workflow(
        thread_id="no-model", user_content="go", model="nope"
    )
    status = await status_of(client, workflow_id, "failed")
    assert status["error"]["code"] == "NOT_FOUND"
    assert status["error"]["message"].startswith("no model 'nope' (the models: ")
    shown = ("waiting_for", "pending_approvals")  # views of the state, not the result
    assert await client.wait_for_result(workflow_id, timeout=30) == {
        k: v for k, v in status.items() if k not in shown
    }
