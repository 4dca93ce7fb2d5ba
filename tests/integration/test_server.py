"""The ravi server over HTTP: its API, its errors, 50 threads at once, over a mesh, its SQLite
history across restarts, and SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ravi.testing import NodeProcess, eventually, ravi_command, running_node, start_node

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def serve_command(*extra: str) -> list[str]:
    """`ravi serve` on a free port; threads in memory unless `extra` names a --data-dir."""
    store = [] if "--data-dir" in extra else ["--store", "memory"]
    return [*ravi_command(), "serve", "--port", "0", "--token", TOKEN, *store, *extra]


def client_for(server: NodeProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://{server.address}",
        headers=AUTH,
        timeout=30,
        limits=httpx.Limits(max_connections=200),
    )


async def events(
    client: httpx.AsyncClient, thread: str, after: int = 0
) -> AsyncIterator[dict[str, Any]]:
    """The thread's Server-Sent Events, parsed; checks each frame's id and event name."""
    headers = {"Last-Event-ID": str(after)} if after else {}
    async with client.stream("GET", f"/threads/{thread}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                frame[name] = value.removeprefix(" ")
                continue
            if "data" in frame:
                event = json.loads(frame["data"])
                assert frame["id"] == str(event["seq"])
                assert frame["event"] == event["kind"]
                yield event
            frame = {}


async def run_thread(client: httpx.AsyncClient, index: int) -> list[dict[str, Any]]:
    """One thread from task to final answer, answering its approval by index: approve,
    edit or reject."""
    thread = f"th-{index}"
    response = await client.post("/threads", json={"thread_id": thread, "content": f"grpc {index}"})
    assert response.status_code == 202, response.text
    seen: list[dict[str, Any]] = []
    async for event in events(client, thread):
        seen.append(event)
        if event["kind"] == "approval_request":
            request_id = event["approval_request"]["request_id"]
            answer: dict[str, Any] = [
                {"action": "approve"},
                {"action": "edit", "arguments": {"to": f"user{index}@example.com", "summary": "s"}},
                {"action": "reject", "reason": f"not now {index}"},
            ][index % 3]
            answered = await client.post(f"/respond/{request_id}", json=answer)
            assert answered.status_code == 200, answered.text
        if event["kind"] in ("final", "failed"):
            break
    return seen


async def test_fifty_threads_with_approvals_all_complete_without_cross_talk() -> None:
    async with running_node(serve_command()) as server, client_for(server) as client:
        runs = await asyncio.wait_for(
            asyncio.gather(*(run_thread(client, i) for i in range(50))), 90
        )
        for index, seen in enumerate(runs):
            thread = f"th-{index}"
            assert {e["thread_id"] for e in seen} == {thread}
            assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
            assert seen[0]["started"]["content"] == f"grpc {index}"
            final = seen[-1]["final"]["content"]
            if index % 3 == 0:
                assert final.startswith("Done. Report sent to team@example.com")
            elif index % 3 == 1:
                assert final.startswith(f"Done. Report sent to user{index}@example.com")
            else:
                assert final.endswith(f"the tool did not run: not now {index}")
            status = (await client.get(f"/threads/{thread}")).json()
            assert status["status"] == "completed"
            assert status["result"]["content"] == final
        listed = (await client.get("/threads")).json()["threads"]
        assert len(listed) == 50


async def test_every_endpoint_needs_the_token() -> None:
    async with (
        running_node(serve_command()) as server,
        httpx.AsyncClient(base_url=f"http://{server.address}") as anonymous,
    ):
        for method, path in [
            ("GET", "/info"),
            ("GET", "/threads"),
            ("POST", "/threads"),
            ("GET", "/threads/x/events"),
            ("POST", "/respond/x"),
        ]:
            response = await anonymous.request(method, path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = await anonymous.get("/threads", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        # The page holds no data: it is served to anyone and asks for the token itself.
        assert (await anonymous.get("/")).status_code == 200
        assert (await anonymous.get("/threads", params={"token": TOKEN})).status_code == 401


async def test_bad_requests_get_clear_errors_and_the_server_keeps_serving() -> None:
    async with running_node(serve_command()) as server, client_for(server) as client:
        not_json = await client.post("/threads", content=b"{nope")
        assert (not_json.status_code, "not JSON" in not_json.text) == (422, True)
        for body in [
            {},
            {"content": ""},
            {"content": "x", "extra": 1},
            {"content": "x", "thread_id": "a\nb"},
        ]:
            assert (await client.post("/threads", json=body)).status_code == 422, body
        assert (await client.get("/threads/missing")).status_code == 404
        assert (await client.get("/threads/missing/events")).status_code == 404
        assert (
            await client.post("/threads/missing/tasks", json={"content": "x"})
        ).status_code == 404
        unknown = await client.post("/respond/missing", json={"action": "approve"})
        assert unknown.status_code == 404
        assert "no approval request 'missing'" in unknown.json()["error"]

        started = await client.post("/threads", json={"thread_id": "busy", "content": "grpc"})
        assert started.status_code == 202
        request_id = ""
        async for event in events(client, "busy"):
            if event["kind"] == "approval_request":
                request_id = event["approval_request"]["request_id"]
                break
        busy = await client.post("/threads", json={"thread_id": "busy", "content": "again"})
        assert busy.status_code == 409
        status = (await client.get("/threads/busy")).json()
        assert status["status"] == "waiting_for_approval"
        assert [p["approval_request"]["request_id"] for p in status["pending_approvals"]] == [
            request_id
        ]
        for body in [{"action": "maybe"}, {"action": "edit"}, {"action": "approve", "x": 1}]:
            assert (await client.post(f"/respond/{request_id}", json=body)).status_code == 422
        assert (
            await client.post(f"/respond/{request_id}", json={"action": "approve"})
        ).status_code == 200
        again = await client.post(f"/respond/{request_id}", json={"action": "reject"})
        assert again.status_code == 409
        assert "answered already" in again.json()["error"]

        async for event in events(client, "busy", after=5):
            assert event["seq"] > 5
            if event["kind"] == "final":
                break
        follow_up = await client.post("/threads/busy/tasks", json={"content": "restate"})
        assert follow_up.status_code == 202
        assert follow_up.json()["runs"] == 2
        bad_resume = await client.get("/threads/busy/events", headers={"Last-Event-ID": "x"})
        assert bad_resume.status_code == 422
        assert (await client.get("/info")).json()["agent_type"] == "assistant"


async def test_the_server_joins_a_mesh_where_the_agent_runs() -> None:
    node_command = [*ravi_command(), "node", "--listen", "127.0.0.1:0", "--node-id", "agents"]
    node_command += ["--setup", "ravi.server:demo_setup"]
    async with running_node(node_command) as node:
        command = serve_command("--runtime", "grpc", "--peer", f"agents={node.address}")
        async with running_node(command) as server, client_for(server) as client:
            seen = await run_thread(client, 0)
    assert seen[0]["started"]["model"] == "scripted:demo"
    assert seen[-1]["final"]["content"].startswith("Done. Report sent to team@example.com")


async def test_a_task_while_no_node_hosts_the_agent_is_refused_with_503() -> None:
    node_command = [*ravi_command(), "node", "--node-id", "agents"]
    node_command += ["--setup", "ravi.server:demo_setup"]
    node = await start_node([*node_command, "--listen", "127.0.0.1:0"])
    address = node.address
    try:
        command = serve_command("--runtime", "grpc", "--peer", f"agents={address}")
        async with running_node(command) as server, client_for(server) as client:
            await node.kill()

            async def noticed() -> None:
                # The server learns of the crash when its stream to the node
                # breaks; a task posted before that is accepted (and fails).
                assert any(f"peer agents at {address} dropped" in line for line in server.output)

            await eventually(noticed, timeout=10)
            refused = await client.post("/threads", json={"thread_id": "t", "content": "x"})
            assert (refused.status_code, refused.json()["code"]) == (503, "UNAVAILABLE")
            assert "no node hosts agent type 'assistant'" in refused.json()["error"]
            assert (await client.get("/threads")).json()["threads"] == []
            node = await start_node([*node_command, "--listen", address])

            async def accepted() -> None:
                started = await client.post("/threads", json={"thread_id": "t", "content": "x"})
                assert started.status_code == 202, started.text

            await eventually(accepted, timeout=30)
    finally:
        await node.stop()


@pytest.mark.parametrize("runtime", ["local", "grpc"])
async def test_an_edit_that_does_not_validate_is_refused_and_the_card_stays_pending(
    runtime: str,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        command = serve_command()
        if runtime == "grpc":  # the schema travels in the event, from the node hosting the agent
            node = [*ravi_command(), "node", "--listen", "127.0.0.1:0", "--node-id", "agents"]
            node += ["--setup", "ravi.server:demo_setup"]
            agents = await stack.enter_async_context(running_node(node))
            command = serve_command("--runtime", "grpc", "--peer", f"agents={agents.address}")
        server = await stack.enter_async_context(running_node(command))
        client = await stack.enter_async_context(client_for(server))
        await client.post("/threads", json={"thread_id": "edit", "content": "grpc"})
        request = await anext(
            e async for e in events(client, "edit") if e["kind"] == "approval_request"
        )
        asked = request["approval_request"]
        assert json.loads(asked["parameters_json"])["required"] == ["to", "summary"]
        respond = f"/respond/{asked['request_id']}"
        for arguments, problems in [
            (
                {"to": 42},
                [
                    (["arguments"], "'summary' is a required property"),
                    (["arguments", "to"], "42 is not of type 'string'"),
                ],
            ),
            (
                {"to": "a@b.c", "summary": "s", "cc": "x"},
                [(["arguments"], "Additional properties are not allowed ('cc' was unexpected)")],
            ),
        ]:
            refused = await client.post(respond, json={"action": "edit", "arguments": arguments})
            assert refused.status_code == 422, refused.text
            assert refused.json()["code"] == "INVALID_ARGUMENT"
            assert [(p["loc"], p["msg"]) for p in refused.json()["error"]] == problems
        status = (await client.get("/threads/edit")).json()
        assert status["status"] == "waiting_for_approval"
        assert [p["approval_request"]["request_id"] for p in status["pending_approvals"]] == [
            asked["request_id"]
        ]
        edit = {"action": "edit", "arguments": {"to": "boss@example.com", "summary": "s"}}
        assert (await client.post(respond, json=edit)).status_code == 200
        final = await anext(e async for e in events(client, "edit") if e["kind"] == "final")
        assert final["final"]["content"].startswith("Done. Report sent to boss@example.com")


async def test_an_approval_whose_run_ended_is_refused() -> None:
    async with (
        running_node(serve_command("--run-timeout", "1")) as server,
        client_for(server) as client,
    ):
        await client.post("/threads", json={"thread_id": "late", "content": "grpc"})
        request_id, failed = "", {}
        async for event in events(client, "late"):
            if event["kind"] == "approval_request":
                request_id = event["approval_request"]["request_id"]
            if event["kind"] == "failed":
                failed = event["failed"]
                break
        assert failed["code"] == "DEADLINE_EXCEEDED"
        status = (await client.get("/threads/late")).json()
        assert (status["status"], status["error"]["code"]) == ("failed", "DEADLINE_EXCEEDED")
        assert status["title"] == "grpc"
        late = await client.post(f"/respond/{request_id}", json={"action": "approve"})
        assert late.status_code == 409
        assert "no longer pending" in late.json()["error"]


async def approval_card(client: httpx.AsyncClient, thread: str, after: int = 0) -> dict[str, Any]:
    async for event in events(client, thread, after):
        if event["kind"] == "approval_request":
            return event
    raise AssertionError(f"{thread}: the stream ended before an approval card")


async def until_final(client: httpx.AsyncClient, thread: str, after: int) -> dict[str, Any]:
    async for event in events(client, thread, after):
        if event["kind"] in ("final", "failed"):
            return event
    raise AssertionError(f"{thread}: the stream ended before the run did")


async def test_threads_outlive_a_restart_and_a_run_in_flight_is_interrupted(
    tmp_path: Path,
) -> None:
    command = serve_command("--data-dir", str(tmp_path / "data"))
    server = await start_node(command)
    try:
        async with client_for(server) as client:
            done = await run_thread(client, 0)
            await client.post("/threads", json={"thread_id": "cut", "content": "grpc"})
            asked = await approval_card(client, "cut")
    finally:
        await server.kill()  # kill -9 with a run waiting for approval
    async with running_node(command) as server, client_for(server) as client:
        listed = {t["thread_id"]: t for t in (await client.get("/threads")).json()["threads"]}
        assert listed["th-0"]["status"] == "completed"
        assert listed["th-0"]["result"]["content"] == done[-1]["final"]["content"]
        replayed = [e async for e in _until(events(client, "th-0"), "final")]
        assert replayed == done  # every event kept, ids and all
        cut = listed["cut"]
        assert (cut["status"], cut["error"]["code"]) == ("interrupted", "ABORTED")
        assert cut["pending_approvals"] == []
        request_id = asked["approval_request"]["request_id"]
        late = await client.post(f"/respond/{request_id}", json={"action": "approve"})
        assert (late.status_code, late.json()["code"]) == (409, "FAILED_PRECONDITION")
        assert (await client.post("/threads/th-0/rerun")).status_code == 409  # not interrupted
        rerun = await client.post("/threads/cut/rerun")
        assert rerun.status_code == 202, rerun.text
        assert (rerun.json()["status"], rerun.json()["runs"]) == ("running", 2)
        again = await approval_card(client, "cut", after=asked["seq"])
        assert again["run_id"] != asked["run_id"]
        answered = await client.post(
            f"/respond/{again['approval_request']['request_id']}", json={"action": "approve"}
        )
        assert answered.status_code == 200, answered.text
        final = await until_final(client, "cut", again["seq"])
        assert final["final"]["content"].startswith("Done. Report sent to team@example.com")


async def _until(stream: AsyncIterator[dict[str, Any]], kind: str) -> AsyncIterator[dict[str, Any]]:
    async for event in stream:
        yield event
        if event["kind"] == kind:
            return


async def test_one_data_dir_serves_one_server_and_memory_forgets(tmp_path: Path) -> None:
    command = serve_command("--data-dir", str(tmp_path / "data"))
    async with running_node(command):
        second = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 2, output  # a server that cannot start
        assert f"another ravi server keeps its threads in {tmp_path / 'data'}" in output.decode()
    unwritable = tmp_path / "file"
    unwritable.write_text("not a folder")
    refused = await asyncio.create_subprocess_exec(
        *serve_command("--data-dir", str(unwritable)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(refused.communicate(), 60)
    assert refused.returncode == 2
    assert "pass --data-dir DIR, or --store memory" in output.decode()
    async with running_node(serve_command()) as server, client_for(server) as client:
        await run_thread(client, 0)
    async with running_node(serve_command()) as server, client_for(server) as client:
        assert (await client.get("/threads/th-0")).status_code == 404


async def sigterm(server: NodeProcess, limit: float) -> None:
    """SIGTERM the server: it exits 0 within `limit` seconds."""
    started = time.monotonic()
    code = await server.stop(timeout=limit + 10)
    took = time.monotonic() - started
    assert code == 0, "".join(server.output)
    assert took < limit, f"took {took:.1f} s"


@pytest.mark.parametrize("runtime", ["local", "grpc"])
async def test_sigterm_exits_0_within_the_grace_period_idle_and_busy(
    runtime: str, tmp_path: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        extra = ["--data-dir", str(tmp_path / "data"), "--grace-period", "5"]
        if runtime == "grpc":
            node_command = [*ravi_command(), "node", "--listen", "127.0.0.1:0"]
            node_command += ["--node-id", "agents", "--setup", "ravi.server:demo_setup"]
            node = await stack.enter_async_context(running_node(node_command))
            extra += ["--runtime", "grpc", "--peer", f"agents={node.address}"]
        idle = await start_node(serve_command(*extra))
        await sigterm(idle, 3.0)
        busy = await start_node(serve_command(*extra))
        try:
            async with client_for(busy) as client:
                await client.post("/threads", json={"thread_id": "busy", "content": "grpc"})
                await approval_card(client, "busy")
                stream = asyncio.ensure_future(until_final(client, "busy", 0))
                await asyncio.sleep(0.3)  # a stream open, a run waiting for its approval
                await sigterm(busy, 5.0 + 2.0)
                with contextlib.suppress(Exception):
                    await stream
        finally:
            await busy.kill()
        async with running_node(serve_command(*extra)) as again, client_for(again) as client:
            status = (await client.get("/threads/busy")).json()
            assert (status["status"], status["error"]["code"]) == ("interrupted", "ABORTED")


async def test_the_console_tells_what_happens_and_keeps_the_token_out_of_it() -> None:
    server = await start_node(serve_command("--run-timeout", "1"))
    try:
        async with client_for(server) as client:
            await client.post("/threads", json={"thread_id": "late", "content": "grpc"})
            await approval_card(client, "late")  # nobody answers: the run fails at 1 s

            async def failed() -> None:
                assert (await client.get("/threads/late")).json()["status"] == "failed"

            await eventually(failed, timeout=30)
        async with httpx.AsyncClient(base_url=f"http://{server.address}") as browser:
            assert (await browser.get("/", params={"token": TOKEN})).status_code == 200
            assert (await browser.get("/threads")).status_code == 401
    finally:
        await sigterm(server, 7.0)
    console = "".join(server.output)
    assert f"open http://{server.address}/?token=***" in console
    assert TOKEN not in console
    assert "POST /threads 202" in console
    assert "GET /threads/late 200" in console
    assert "GET /?token=*** 200" in console
    assert "GET /threads 401" in console
    assert "thread late: run run-" in console
    assert "failed after" in console
    assert "DEADLINE_EXCEEDED" in console
    assert "SIGTERM: stopping; requests in progress get 5 s" in console
    assert console.rstrip().endswith("ravi server assistant stopped")

    made_up = await start_node([*ravi_command(), "serve", "--port", "0", "--store", "memory"])
    await sigterm(made_up, 7.0)
    (opened,) = [line for line in made_up.output if line.startswith("open http://")]
    token = opened.strip().rpartition("?token=")[2]
    assert len(token) >= 24
    assert "*" not in token
