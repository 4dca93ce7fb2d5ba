"""RestateWorkflowClient: the Scaling Out page's sample runs as written; bad input is refused.

A real restate-server and a `ravi restate worker` serving tests/restate/app.py,
whose models are scripts (one of them named "gpt-4o", as on the page).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ravi.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from ravi.integrations.runtime.restate import RestateSettings, RestateWorkflowClient
from ravi.testing import RestateServer, eventually
from tests.paths import REPO_ROOT
from tests.restate.processes import Worker, free_port, restate_server
from tests.restate.test_crashes import charges, executions

pytestmark = [pytest.mark.restate, pytest.mark.timeout(180)]

RESTATE_BLOCK = re.compile(r"^```python restate\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[RestateServer, Worker]]:
    server = restate_server(tmp_path / "restate")
    async with contextlib.AsyncExitStack() as cleanup:
        await server.start()
        cleanup.push_async_callback(server.stop)
        worker = Worker(server, tmp_path, "tests.restate.app:setup")
        cleanup.push_async_callback(worker.stop)
        await worker.start()
        yield server, worker


def settings_of(server: RestateServer, timeout: float = 30.0) -> RestateSettings:
    return RestateSettings(server.ingress_url, server.admin_url, timeout=timeout)


async def waiting(client: RestateWorkflowClient, workflow_id: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any]:
        state = await client.query_workflow(workflow_id)
        assert state["status"] == "waiting_for_approval", state
        return state

    return await eventually(reached, timeout=60, interval=0.1)


async def test_the_scaling_out_pages_sample_runs_as_written(
    stack: tuple[RestateServer, Worker], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = stack
    (block,) = RESTATE_BLOCK.findall((REPO_ROOT / "docs" / "scaling-out.md").read_text())
    code = compile(block, "docs/scaling-out.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"settings": settings_of(server)}
    await eval(code, namespace)  # the page's own code, with only `settings` given
    assert capsys.readouterr().out.startswith("completed charged 4200 (key conv-abc-")
    assert executions(tmp_path) == ["q3"]
    assert list(charges(tmp_path).values()) == [4200]


async def test_a_run_is_queryable_as_soon_as_it_is_started(
    stack: tuple[RestateServer, Worker],
) -> None:
    server, _ = stack
    async with RestateWorkflowClient(settings_of(server)) as client:
        for run in range(6):
            workflow_id = await client.start_agent_workflow(
                thread_id=f"quick-{run}", user_content="go", model="steps"
            )
            state = await client.query_workflow(workflow_id)  # never NotFound
            assert state["status"] in ("pending", "running", "completed"), state


async def test_every_bad_input_gets_its_error(stack: tuple[RestateServer, Worker]) -> None:
    server, _ = stack
    async with RestateWorkflowClient(settings_of(server)) as client:
        with pytest.raises(NotFound, match="no workflow 'nope' has started"):
            await client.query_workflow("nope")
        with pytest.raises(NotFound, match="no workflow 'nope' has started"):
            await client.wait_for_result("nope", timeout=10)
        with pytest.raises(NotFound):
            await client.resolve_promise(
                workflow_id="nope", promise_name="approval-x", value={"action": "approve"}
            )
        with pytest.raises(InvalidArgument):
            await client.start_agent_workflow(thread_id="", user_content="go", model="steps")

        workflow_id = await client.start_agent_workflow(
            thread_id="bad", user_content="go", model="approval", workflow_id="bad-input"
        )
        with pytest.raises(AlreadyExists, match="'bad-input' was started before"):
            await client.start_agent_workflow(
                thread_id="bad", user_content="again", model="approval", workflow_id="bad-input"
            )
        state = await waiting(client, workflow_id)
        (approval,) = state["pending_approvals"]
        assert state["waiting_for"] == [approval["promise"]]
        with pytest.raises(NotFound, match="has not asked for a promise named 'approval-x'"):
            await client.resolve_promise(
                workflow_id=workflow_id, promise_name="approval-x", value={"action": "approve"}
            )
        answer = {"action": "approve"}
        resolved = await client.resolve_promise(
            workflow_id=workflow_id, promise_name=approval["promise"], value=answer
        )
        assert resolved == "resolved"
        result = await client.wait_for_result(workflow_id, timeout=60)
        assert result["status"] == "completed"
        with pytest.raises(FailedPrecondition, match="has ended"):
            await client.resolve_promise(
                workflow_id=workflow_id, promise_name=approval["promise"], value=answer
            )

        second = await client.start_agent_workflow(
            thread_id="twice", user_content="go", model="approval"
        )
        promise = (await waiting(client, second))["pending_approvals"][0]["promise"]
        first, again = await asyncio.gather(
            client.resolve_promise(workflow_id=second, promise_name=promise, value=answer),
            client.resolve_promise(workflow_id=second, promise_name=promise, value=answer),
            return_exceptions=True,
        )
        outcomes = sorted([first, again], key=lambda o: isinstance(o, Exception))
        assert outcomes[0] == "resolved"
        assert isinstance(outcomes[1], AlreadyExists), outcomes

    # Closed by the block: the session is gone.
    with pytest.raises(Unavailable, match="not connected"):
        await client.query_workflow(workflow_id)


async def test_an_answer_while_no_worker_is_up_is_accepted_then_applied(
    stack: tuple[RestateServer, Worker], tmp_path: Path
) -> None:
    server, worker = stack
    async with RestateWorkflowClient(settings_of(server, timeout=3)) as client:
        workflow_id = await client.start_agent_workflow(
            thread_id="down", user_content="go", model="approval"
        )
        promise = (await waiting(client, workflow_id))["pending_approvals"][0]["promise"]
        await worker.kill()
        assert (await client.query_workflow(workflow_id))["status"] == "waiting_for_approval"
        resolved = await client.resolve_promise(
            workflow_id=workflow_id, promise_name=promise, value={"action": "approve"}
        )
        assert resolved == "accepted"  # Restate holds it; not DeadlineExceeded
        await worker.start()
        result = await client.wait_for_result(workflow_id, timeout=60)
    assert result["status"] == "completed"
    assert list(charges(tmp_path).values()) == [500]


async def test_an_unreachable_restate_is_unavailable() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    client = RestateWorkflowClient(RestateSettings(closed, closed, timeout=5))
    with pytest.raises(Unavailable, match="cannot reach Restate's ingress at"):
        await client.connect()
