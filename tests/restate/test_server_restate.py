"""`ravi serve --runtime restate`: approvals that wait through suspension and every restart.

Real processes: a restate-server that suspends idle invocations after one
second, `ravi restate worker` hosting the demo assistant, and `ravi serve`
holding nothing but a connection to Restate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from ravi.testing import RestateServer, eventually
from tests.restate.processes import (
    Serve,
    Stack,
    events_until,
    invocation_statuses,
    restate_server,
    running_stack,
)

pytestmark = [pytest.mark.restate, pytest.mark.timeout(240)]

KINDS = [
    "started",
    "model_step",
    "tool_result",
    "model_step",
    "approval_request",
    "approval_decision",
    "tool_result",
    "model_step",
    "final",
]


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as running:
        yield running


async def ask(client: httpx.AsyncClient, thread: str) -> list[dict[str, Any]]:
    """Start the demo task on `thread`; its events up to the approval card."""
    started = await client.post("/threads", json={"thread_id": thread, "content": "restate"})
    assert started.status_code == 202, started.text
    assert started.json()["status"] in ("running", "submitted")  # submitted: no worker yet
    return await events_until(client, thread, {"approval_request"})


async def suspended(server: RestateServer, service: str = "assistant") -> None:
    """Wait until Restate has suspended the waiting invocation: no attempt is running."""

    async def check() -> None:
        assert "suspended" in await invocation_statuses(server, service)

    await eventually(check, timeout=60, interval=0.2)


async def card(client: httpx.AsyncClient, thread: str) -> str:
    """The request id of the thread's one pending approval card, read from the front."""
    response = await client.get(f"/threads/{thread}")
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["status"] == "waiting_for_approval", status
    (pending,) = status["pending_approvals"]
    return str(pending["approval_request"]["request_id"])


async def approve_and_finish(
    client: httpx.AsyncClient, thread: str, request_id: str, seen: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    answered = await client.post(f"/respond/{request_id}", json={"action": "approve"})
    assert answered.status_code == 200, answered.text
    assert answered.json() == {
        "request_id": request_id,
        "thread_id": thread,
        "accepted": True,
        "applied": True,
    }
    seen += await events_until(client, thread, {"final", "failed"}, after=seen[-1]["seq"])
    return seen


def assert_completed(seen: list[dict[str, Any]]) -> None:
    assert [e["kind"] for e in seen] == KINDS
    assert [e["seq"] for e in seen] == list(range(1, 10))
    assert seen[-1]["final"]["content"].startswith("Done. Report sent to team@example.com")


async def test_a_card_outlives_suspension_and_a_worker_restart(stack: Stack) -> None:
    async with stack.serve.client() as client:
        seen = await ask(client, "durable")
        await suspended(stack.server)  # the replay must journal what the first attempt did
        await stack.worker.restart()  # kill -9 and start again, the card pending
        request_id = await card(client, "durable")
        assert request_id == seen[-1]["approval_request"]["request_id"]
        assert_completed(await approve_and_finish(client, "durable", request_id, seen))
        status = (await client.get("/threads/durable")).json()
        assert (status["status"], status["runs"], status["last_event_id"]) == ("completed", 1, 9)
        assert status["result"]["content"] == seen[-1]["final"]["content"]


async def test_the_front_keeps_nothing_killed_stopped_or_doubled(stack: Stack) -> None:
    async with stack.serve.client() as client:
        seen = await ask(client, "stateless")
        await stack.serve.restart()  # kill -9 the web front: it held nothing
        request_id = await card(client, "stateless")
        listed = (await client.get("/threads")).json()["threads"]
        assert [(t["thread_id"], t["status"]) for t in listed] == [
            ("stateless", "waiting_for_approval")
        ]
        replayed = await events_until(client, "stateless", {"approval_request"})
        assert replayed == seen  # SSE replays from Restate, ids and all

        # A graceful stop cancels no durable run: the run still waits, suspended.
        assert await stack.serve.stop() == 0
        await suspended(stack.server)
        assert "completed" not in await invocation_statuses(stack.server, "assistant")

        # Two fronts behind one balancer: either shows the card, either takes the answer.
        second = Serve(stack.server)
        await asyncio.gather(stack.serve.start(), second.start())
        try:
            async with second.client() as other:
                assert await card(other, "stateless") == request_id
                answered = await other.post(f"/respond/{request_id}", json={"action": "approve"})
                assert answered.status_code == 200, answered.text
                again = await client.post(f"/respond/{request_id}", json={"action": "reject"})
                assert again.status_code == 409
                assert again.json()["code"] == "ALREADY_EXISTS"
            seen += await events_until(client, "stateless", {"final"}, after=seen[-1]["seq"])
        finally:
            await second.stop()
    assert_completed(seen)


async def test_a_restate_server_restart_mid_wait(stack: Stack) -> None:
    async with stack.serve.client() as client:
        seen = await ask(client, "server-restart")
        await suspended(stack.server)
        await stack.server.kill()  # kill -9 restate-server itself, the card pending
        unavailable = await client.get("/threads/server-restart")
        assert unavailable.status_code == 503
        await stack.server.start()
        request_id = await eventually(lambda: card(client, "server-restart"), timeout=60)
        assert_completed(await approve_and_finish(client, "server-restart", request_id, seen))


async def test_every_bad_answer_gets_its_error(stack: Stack) -> None:
    async with stack.serve.client() as client:
        unknown = await client.post("/respond/nope", json={"action": "approve"})
        assert (unknown.status_code, unknown.json()["code"]) == (404, "NOT_FOUND")
        for path in ["/threads/nope", "/threads/nope/events"]:
            assert (await client.get(path)).status_code == 404, path
        missing = await client.post("/threads/nope/tasks", json={"content": "x"})
        assert (missing.status_code, missing.json()["code"]) == (404, "NOT_FOUND")

        seen = await ask(client, "errors")
        request_id = seen[-1]["approval_request"]["request_id"]
        busy = await client.post("/threads", json={"thread_id": "errors", "content": "again"})
        assert (busy.status_code, busy.json()["code"]) == (409, "FAILED_PRECONDITION")
        rerun = await client.post("/threads/errors/rerun")
        assert (rerun.status_code, rerun.json()["code"]) == (409, "FAILED_PRECONDITION")
        for body in [{"action": "maybe"}, {"action": "edit"}]:
            assert (await client.post(f"/respond/{request_id}", json=body)).status_code == 422
        bad_edit = await client.post(
            f"/respond/{request_id}", json={"action": "edit", "arguments": {"to": 42}}
        )
        assert (bad_edit.status_code, bad_edit.json()["code"]) == (422, "INVALID_ARGUMENT")
        assert {"loc": ["arguments", "to"], "msg": "42 is not of type 'string'"} in (
            bad_edit.json()["error"]
        )
        still = (await client.get("/threads/errors")).json()
        assert (still["status"], len(still["pending_approvals"])) == ("waiting_for_approval", 1)

        # Every worker down: the answer is accepted (Restate holds it), then applied.
        await stack.worker.kill()
        accepted = await client.post(f"/respond/{request_id}", json={"action": "approve"})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["applied"] is False
        await stack.worker.start()
        seen += await events_until(client, "errors", {"final"}, after=seen[-1]["seq"])
        assert_completed(seen)
        late = await client.post(f"/respond/{request_id}", json={"action": "approve"})
        assert (late.status_code, late.json()["code"]) == (409, "ALREADY_EXISTS")


async def test_an_approval_of_a_run_that_timed_out_is_refused(tmp_path: Path) -> None:
    async with (
        running_stack(tmp_path, "--run-timeout", "3") as stack,
        stack.serve.client() as client,
    ):
        seen = await ask(client, "late")
        request_id = seen[-1]["approval_request"]["request_id"]
        seen += await events_until(client, "late", {"failed"}, after=seen[-1]["seq"])

        async def failed() -> dict[str, Any]:
            status = (await client.get("/threads/late")).json()
            assert status["status"] == "failed", status
            return dict(status)

        status = await eventually(failed, timeout=30)
        assert status["error"]["code"] == "DEADLINE_EXCEEDED"
        assert status["pending_approvals"] == []
        late = await client.post(f"/respond/{request_id}", json={"action": "approve"})
        assert (late.status_code, late.json()["code"]) == (409, "FAILED_PRECONDITION")
        assert "no longer pending" in late.json()["error"]
        rerun = await client.post("/threads/late/rerun")
        assert rerun.status_code == 202, rerun.text
        assert rerun.json()["runs"] == 2
        again = await events_until(client, "late", {"approval_request"}, after=seen[-1]["seq"])
        assert again[0]["started"]["content"] == "restate"


async def test_without_a_worker_the_front_says_what_is_missing(tmp_path: Path) -> None:
    server = restate_server(tmp_path / "restate")
    await server.start()
    serve = Serve(server)
    try:
        await serve.start()
        assert "no Restate deployment serves ravi.Thread yet" in serve.output
        async with serve.client() as client:
            assert (await client.get("/threads")).json() == {"threads": []}
            refused = await client.post("/threads", json={"content": "restate"})
            assert (refused.status_code, refused.json()["code"]) == (409, "FAILED_PRECONDITION")
            assert "start `ravi restate worker`" in refused.json()["error"]
    finally:
        await serve.stop()
        await server.stop()
