"""A2A tasks on Restate are durable: each survives kill -9 of every process, its approval included.

`ravi serve --runtime restate --a2a` in front (it keeps nothing: the tasks are
the runs Restate keeps), `ravi restate worker` hosting the A2A test agents,
and a restate-server that suspends idle invocations after a second. Four
tasks wait for their approvals, over JSON-RPC and gRPC; the worker, the
restate-server and the front are killed -9 in turn and started again, and
after each kill `tasks/get` still shows every task `input-required` with its
approval. Then one task is approved by its client while a resubscribed
stream follows it, one over gRPC, one is approved on the web page (its
subscriber sees it complete without a message), and one is canceled.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.helpers import get_data_parts
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import A2AError

from ravi.testing import RestateServer, eventually
from tests.a2a.clients import (
    CANCELED,
    COMPLETED,
    INPUT_REQUIRED,
    events,
    result_text,
    states,
    until_approval,
    user,
)
from tests.a2a.conftest import Gateway, session
from tests.restate.processes import (
    TOKEN,
    Serve,
    Worker,
    free_port,
    invocation_statuses,
    restate_server,
)

pytestmark = [pytest.mark.restate, pytest.mark.a2a, pytest.mark.timeout(420)]

# What a client sees while a process it depends on restarts.
RESTARTING = (A2AError, httpx.HTTPError, grpc.RpcError, OSError, AssertionError)
# The tasks, by how each ends, and the binding its client speaks.
TASKS = {
    "approved": "JSONRPC",
    "approved over gRPC": "GRPC",
    "answered on the web page": "JSONRPC",
    "canceled": "GRPC",
}


async def suspended(server: RestateServer, count: int) -> None:
    """Every waiting run is suspended in Restate: no attempt of the agent is in progress."""

    async def check() -> None:
        statuses = await invocation_statuses(server, "assistant")
        assert sorted(s for s in statuses if s != "completed") == ["suspended"] * count, statuses

    await eventually(check, timeout=90, interval=0.25, retry_on=(AssertionError, KeyError))


async def still_waiting(gateway: Gateway, binding: str, task: Task, asked: dict[str, Any]) -> None:
    """`tasks/get` shows the task input-required, with the very approval it asked."""

    async def check() -> None:
        async with gateway.connected("assistant", binding) as client:
            fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
        assert fetched.status.state == INPUT_REQUIRED, fetched.status
        assert fetched.context_id == task.context_id
        (shown,) = get_data_parts(fetched.status.message.parts)
        assert shown == asked

    await eventually(check, timeout=90, interval=0.5, retry_on=RESTARTING)


async def approved_while_followed(gateway: Gateway, binding: str, task: Task) -> None:
    """The client approves; a stream that resubscribed to the task sees it complete too."""
    async with gateway.connected("assistant", binding) as client:
        following = client.subscribe(SubscribeToTaskRequest(id=task.id), context=session())
        snapshot = await anext(following)
        assert snapshot.task.status.state == INPUT_REQUIRED
        received = await events(client.send_message(user("approve", task=task), context=session()))
        assert states(received)[-1] == COMPLETED
        assert result_text(received).startswith("Done. Report sent to team@example.com")
        later = await asyncio.wait_for(events(following), 90)
        assert states(later)[-1] == COMPLETED


async def answered_on_the_web_page(gateway: Gateway, task: Task, asked: dict[str, Any]) -> None:
    """The page's answer moves the task on with no A2A message; its subscriber sees the end."""
    async with gateway.connected("assistant", "JSONRPC") as client:
        following = client.subscribe(SubscribeToTaskRequest(id=task.id), context=session())
        assert (await anext(following)).task.status.state == INPUT_REQUIRED
        async with gateway.api() as api:
            answered = await api.post(
                f"/respond/{asked['request_id']}", json={"action": "reject", "reason": "no"}
            )
        assert answered.status_code == 200, answered.text
        later = await asyncio.wait_for(events(following), 90)
        assert states(later)[-1] == COMPLETED
        assert result_text(later).startswith("I did not send the report.")
        fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
        assert fetched.status.state == COMPLETED


async def canceled(gateway: Gateway, server: RestateServer, task: Task) -> None:
    """`tasks/cancel` ends the run in Restate, the agent's durable wait included."""
    async with gateway.connected("assistant", "GRPC") as client:
        answer = await client.cancel_task(CancelTaskRequest(id=task.id), context=session())
        assert answer.status.state == CANCELED
        fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
        assert fetched.status.state == CANCELED
    async with gateway.api() as api:
        thread = (await api.get(f"/threads/{task.context_id}")).json()
    assert (thread["status"], thread["error"]["code"]) == ("failed", "CANCELLED")

    async def nothing_waits() -> None:
        statuses = await invocation_statuses(server, "assistant")
        assert set(statuses) == {"completed"}, statuses

    await eventually(nothing_waits, timeout=60, interval=0.25)


async def submitted_while_no_worker_is_up(gateway: Gateway, worker: Worker) -> None:
    """A task sent while no worker is up is `submitted`, and goes on once one is."""
    await worker.stop()
    async with gateway.connected("assistant", "JSONRPC", streaming=False) as client:
        (response,) = await events(client.send_message(user("grpc"), context=session()))
        task = response.task
        assert task.status.state == TaskState.TASK_STATE_SUBMITTED
        fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
        assert fetched.status.state == TaskState.TASK_STATE_SUBMITTED
        await worker.start()

        async def waiting() -> None:
            fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
            assert fetched.status.state == INPUT_REQUIRED

        await eventually(waiting, timeout=90, interval=0.5)
        (response,) = await events(
            client.send_message(user("approve", task=task), context=session())
        )
        assert response.task.status.state == COMPLETED


async def test_a2a_tasks_survive_a_kill_of_every_process(tmp_path: Path) -> None:
    server = restate_server(tmp_path / "restate")
    async with contextlib.AsyncExitStack() as cleanup:
        await server.start()
        cleanup.push_async_callback(server.stop)
        worker = Worker(server, tmp_path, "tests.a2a.agents:setup")
        cleanup.push_async_callback(worker.stop)
        await worker.start()
        grpc_binding = f"127.0.0.1:{free_port()}"  # back at the same address after a restart
        librarian = "tests.a2a.agents:librarian"
        serve = Serve(server, "--a2a", "--a2a-grpc", grpc_binding, "--a2a-agent", librarian)
        cleanup.push_async_callback(serve.stop)
        await serve.start()
        gateway = Gateway(f"http://127.0.0.1:{serve.port}", token=TOKEN)

        parked: dict[str, tuple[Task, dict[str, Any]]] = {}
        for name, binding in TASKS.items():
            async with gateway.connected("assistant", binding) as client:
                parked[name] = await until_approval(client, "restate approvals")
        await suspended(server, len(TASKS))

        for victim in (worker, server, serve):
            await victim.kill()
            await victim.start()
            for name, (task, asked) in parked.items():
                await still_waiting(gateway, TASKS[name], task, asked)

        for name in ("approved", "approved over gRPC"):
            await approved_while_followed(gateway, TASKS[name], parked[name][0])
        await answered_on_the_web_page(gateway, *parked["answered on the web page"])
        await canceled(gateway, server, parked["canceled"][0])

        await submitted_while_no_worker_is_up(gateway, worker)

        # A request/reply agent of the workers, called through the front's Restate client.
        async with gateway.connected("librarian", "GRPC", streaming=False) as client:
            query = {"@type": "ravi.examples.v1.SearchQuery", "query": "durable", "limit": 1}
            (response,) = await events(client.send_message(user(data=query), context=session()))
        assert response.task.status.state == TaskState.TASK_STATE_COMPLETED
        (reply,) = get_data_parts(response.task.artifacts[0].parts)
        assert reply["hits"][0]["snippet"] == "durable #1"
