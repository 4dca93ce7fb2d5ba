"""The official Python A2A client (a2a-sdk) drives `ravi serve --a2a`, over JSON-RPC and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import grpc
import httpx
import pytest
from a2a.client import (
    A2ACardResolver,
    AuthInterceptor,
    ClientCallContext,
    ClientConfig,
    ClientFactory,
    InMemoryContextCredentialStore,
)
from a2a.helpers import get_data_parts, get_message_text
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    InvalidParamsError,
    ListTasksRequest,
    Message,
    PushNotificationNotSupportedError,
    Role,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
    UnsupportedOperationError,
)
from a2a.utils.errors import A2AError

from ravi.testing import eventually, ravi_command, running_node, start_node
from tests.a2a.clients import (
    BINDINGS,
    CANCELED,
    COMPLETED,
    INPUT_REQUIRED,
    approval,
    events,
    first_task,
    result_text,
    states,
    until_approval,
    user,
)
from tests.a2a.conftest import TOKEN, Gateway, serve_command, session
from tests.paths import REPO_ROOT

pytestmark = [
    pytest.mark.a2a,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(120),
]


async def test_cards_are_public_and_describe_each_agent(gateway: Gateway) -> None:
    async with httpx.AsyncClient() as http:
        main = await A2ACardResolver(http, gateway.url).get_agent_card()
        librarian = await A2ACardResolver(http, gateway.card_url("librarian")).get_agent_card()
    assert main.name == "assistant"
    assert "looks up" in main.description
    skills = {s.id: s for s in main.skills}
    assert set(skills) == {"look_up", "send_report"}
    assert "approval" in skills["send_report"].tags
    bindings = {i.protocol_binding: i for i in main.supported_interfaces}
    assert bindings["JSONRPC"].url == f"{gateway.url}/a2a/assistant"
    assert bindings["GRPC"].tenant == "assistant"
    assert main.security_schemes["bearer"].http_auth_security_scheme.scheme == "bearer"
    assert main.capabilities.streaming
    assert librarian.description == "Librarian finds ravi's notes on a query."
    (skill,) = librarian.skills
    assert skill.id == "ravi.examples.v1.SearchQuery"
    assert skill.description == "Search the notes; `limit` caps the hits."


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_call_without_the_token_is_refused(gateway: Gateway, binding: str) -> None:
    async with gateway.connected("librarian", binding) as client:
        with pytest.raises(A2AError) as refused:
            await client.get_task(GetTaskRequest(id="nope"), context=ClientCallContext())
    cause = refused.value.__cause__
    if binding == "GRPC":
        assert isinstance(cause, grpc.aio.AioRpcError)
        assert cause.code() == grpc.StatusCode.UNAUTHENTICATED
    else:
        assert isinstance(cause, httpx.HTTPStatusError)
        assert cause.response.status_code == 401


@pytest.mark.parametrize("binding", BINDINGS)
async def test_send_to_a_plain_agent_returns_its_reply_as_an_artifact(
    gateway: Gateway, binding: str
) -> None:
    async with gateway.connected("librarian", binding, streaming=False) as client:
        query = {"@type": "ravi.examples.v1.SearchQuery", "query": "approvals", "limit": 2}
        (response,) = await events(client.send_message(user(data=query), context=session()))
        task = response.task
        assert task.status.state == COMPLETED
        assert task.context_id == "default"
        (artifact,) = task.artifacts
        (reply,) = get_data_parts(artifact.parts)
        assert reply["@type"] == "ravi.examples.v1.SearchResult"
        assert [h["snippet"] for h in reply["hits"]] == ["approvals #1", "approvals #2"]
        assert reply["searcher"] == "default"

        # A handler error fails the task with the ravi code; a bad request changes no task.
        failing = {"@type": "ravi.examples.v1.SearchQuery", "query": ""}
        (response,) = await events(client.send_message(user(data=failing), context=session()))
        assert response.task.status.state == TaskState.TASK_STATE_FAILED
        (error,) = get_data_parts(response.task.status.message.parts)
        assert error["code"] == "INVALID_ARGUMENT"
        crashing = {"@type": "ravi.examples.v1.SearchQuery", "query": "boom"}
        (response,) = await events(client.send_message(user(data=crashing), context=session()))
        (error,) = get_data_parts(response.task.status.message.parts)
        assert error["code"] == "UNKNOWN"
        assert error["reason"] == "HANDLER_FAILED"
        assert "the shelf fell over" in error["message"]
        for bad, expected in [
            ({"query": "x"}, "naming its type"),
            ({"@type": "no.such.Type"}, "unknown message type"),
            ({"@type": "ravi.examples.v1.Draft", "text": "x"}, "no handler"),
            ({"@type": "ravi.examples.v1.SearchQuery", "limit": "many"}, "cannot decode"),
        ]:
            with pytest.raises(InvalidParamsError, match=expected):
                await events(client.send_message(user(data=bad), context=session()))
        with pytest.raises(InvalidParamsError, match="one data part"):
            await events(client.send_message(user("find approvals"), context=session()))


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_react_task_streams_to_an_approval_and_completes_once_approved(
    gateway: Gateway, binding: str
) -> None:
    async with gateway.connected("assistant", binding) as client:
        received = await events(client.send_message(user("restate approvals"), context=session()))
        task = first_task(received)
        assert states(received)[0] == TaskState.TASK_STATE_SUBMITTED
        assert set(states(received)[1:-1]) == {TaskState.TASK_STATE_WORKING}
        assert states(received)[-1] == INPUT_REQUIRED
        steps = [
            data["kind"]
            for e in received
            if e.HasField("status_update") and e.status_update.status.HasField("message")
            for data in get_data_parts(e.status_update.status.message.parts)
        ]
        assert steps == ["started", "model_step", "tool_result", "model_step", "approval_request"]
        asked = approval(received)
        assert asked["tool"] == "send_report"
        assert asked["arguments"]["to"] == "team@example.com"
        assert asked["run_id"] == task.id
        assert asked["parameters"]["required"] == ["to", "summary"]

        # The contextId is the server's thread, and the approval its pending card.
        async with gateway.api() as api:
            thread = (await api.get(f"/threads/{task.context_id}")).json()
        assert thread["status"] == "waiting_for_approval"
        assert [p["approval_request"]["request_id"] for p in thread["pending_approvals"]] == [
            asked["request_id"]
        ]

        fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
        assert fetched.status.state == INPUT_REQUIRED
        assert fetched.context_id == task.context_id

        received = await events(client.send_message(user("approve", task=task), context=session()))
        assert states(received)[-1] == COMPLETED
        assert result_text(received).startswith("Done. Report sent to team@example.com")
        fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
        assert fetched.status.state == COMPLETED
        assert get_message_text(Message(parts=fetched.artifacts[0].parts)).startswith("Done.")


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_rejected_call_does_not_run_and_the_task_completes(
    gateway: Gateway, binding: str
) -> None:
    async with gateway.connected("assistant", binding) as client:
        task, _ = await until_approval(client, "grpc")
        reject = {"action": "reject", "reason": "not today"}
        received = await events(
            client.send_message(user(data=reject, task=task), context=session())
        )
        assert states(received)[-1] == COMPLETED
        text = result_text(received)
        assert text.startswith("I did not send the report.")
        assert "not today" in text


@pytest.mark.parametrize("binding", BINDINGS)
async def test_an_edit_with_bad_arguments_is_refused_and_the_task_still_waits(
    gateway: Gateway, binding: str
) -> None:
    async with gateway.connected("assistant", binding) as client:
        task, asked = await until_approval(client, "local")
        for bad in [
            {"action": "edit", "arguments": {"to": 5}},
            {"action": "edit"},
            {"action": "edit", "arguments": "ops@example.com"},
            {"action": "maybe"},
            {"action": "approve", "request_id": "not-a-request"},
        ]:
            with pytest.raises(InvalidParamsError):
                await events(client.send_message(user(data=bad, task=task), context=session()))
        with pytest.raises(InvalidParamsError, match="answer approve or reject"):
            await events(client.send_message(user("perhaps", task=task), context=session()))
        fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
        assert fetched.status.state == INPUT_REQUIRED

        edit = {
            "action": "edit",
            "request_id": asked["request_id"],
            "arguments": {"to": "ops@example.com", "summary": "edited"},
        }
        received = await events(client.send_message(user(data=edit, task=task), context=session()))
        assert states(received)[-1] == COMPLETED
        assert "Report sent to ops@example.com (6 characters" in result_text(received)


@pytest.mark.parametrize("binding", BINDINGS)
async def test_cancel_ends_the_run_waiting_for_approval(gateway: Gateway, binding: str) -> None:
    async with gateway.connected("assistant", binding) as client:
        task, _ = await until_approval(client, "approval")
        canceled = await client.cancel_task(CancelTaskRequest(id=task.id), context=session())
        assert canceled.status.state == CANCELED
        async with gateway.api() as api:
            thread = (await api.get(f"/threads/{task.context_id}")).json()
        assert thread["status"] == "failed"
        assert thread["error"]["code"] == "CANCELLED"
        with pytest.raises(A2AError):
            await client.cancel_task(CancelTaskRequest(id=task.id), context=session())
        # The thread takes the next task.
        received = await events(
            client.send_message(user("grpc", context_id=task.context_id), context=session())
        )
        assert states(received)[-1] == INPUT_REQUIRED
        assert first_task(received).context_id == task.context_id


@pytest.mark.parametrize("binding", BINDINGS)
async def test_cancel_stops_a_working_task_at_once(gateway: Gateway, binding: str) -> None:
    async with gateway.connected("slowpoke", binding) as client:
        stream = client.send_message(user("wait"), context=session())
        task: Task | None = None
        async for event in stream:
            if event.HasField("task"):
                task = event.task
            if event.HasField("status_update") and any(
                data["kind"] == "model_step"
                for data in get_data_parts(event.status_update.status.message.parts)
            ):
                break  # the model asked for the tool call, which takes 120 s
        await stream.aclose()  # type: ignore[attr-defined]
        assert task is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        canceled = await client.cancel_task(CancelTaskRequest(id=task.id), context=session())
        assert canceled.status.state == CANCELED
        assert loop.time() - started < 15  # the tool call would take 120 s


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_dropped_stream_is_resumed_by_resubscribing(gateway: Gateway, binding: str) -> None:
    async with gateway.connected("assistant", binding) as client:
        stream = client.send_message(user("restate"), context=session())
        first = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        task = first.task

        async def waiting() -> None:
            fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
            assert fetched.status.state == INPUT_REQUIRED

        await eventually(waiting, timeout=30)
        resumed = client.subscribe(SubscribeToTaskRequest(id=task.id), context=session())
        snapshot = await anext(resumed)
        assert snapshot.task.id == task.id
        assert snapshot.task.status.state == INPUT_REQUIRED
        (asked,) = get_data_parts(snapshot.task.status.message.parts)
        assert asked["kind"] == "approval_request"

        approved = asyncio.create_task(
            events(client.send_message(user("approve", task=task), context=session()))
        )
        later = await asyncio.wait_for(events(resumed), 60)
        await approved
        assert states(later)[-1] == COMPLETED
        assert result_text(later).startswith("Done. Report sent")


@pytest.mark.parametrize("binding", BINDINGS)
async def test_messages_to_a_busy_or_foreign_context_are_refused(
    gateway: Gateway, binding: str
) -> None:
    async with (
        gateway.connected("assistant", binding) as client,
        gateway.connected("slowpoke", binding) as slow,
    ):
        task, _ = await until_approval(client, "grpc")
        with pytest.raises(UnsupportedOperationError, match="in progress"):
            await events(
                client.send_message(user("again", context_id=task.context_id), context=session())
            )
        with pytest.raises(InvalidParamsError, match="conversation with agent 'assistant'"):
            await events(
                slow.send_message(user("wait", context_id=task.context_id), context=session())
            )
        with pytest.raises(InvalidParamsError, match="contextId"):
            await events(client.send_message(user("x", context_id="bad\nid"), context=session()))
        with pytest.raises(InvalidParamsError, match="text part"):
            await events(client.send_message(user(data={"a": 1}), context=session()))
        await client.cancel_task(CancelTaskRequest(id=task.id), context=session())
        with pytest.raises(A2AError):
            await events(client.send_message(user("approve", task=task), context=session()))


async def test_the_server_api_still_needs_its_token(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        assert (await anonymous.get("/threads")).status_code == 401
        assert (await anonymous.post("/a2a/assistant", json={})).status_code == 401
    async with gateway.api() as api:
        assert (await api.get("/threads")).status_code == 200
    assert TOKEN


async def test_an_approval_answered_on_the_web_page_moves_the_task_on_by_itself(
    gateway: Gateway,
) -> None:
    async with gateway.connected("assistant", "JSONRPC") as client:
        task, asked = await until_approval(client, "grpc")
        following = client.subscribe(SubscribeToTaskRequest(id=task.id), context=session())
        snapshot = await anext(following)
        assert snapshot.task.status.state == INPUT_REQUIRED
        async with gateway.api() as api:
            answered = await api.post(f"/respond/{asked['request_id']}", json={"action": "approve"})
        assert answered.status_code == 200
        # No message to the task: its subscriber sees it go on, and tasks/get shows the end.
        later = await asyncio.wait_for(events(following), 60)
        assert states(later)[-1] == COMPLETED
        assert result_text(later).startswith("Done. Report sent")
        fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
        assert fetched.status.state == COMPLETED
        answers = [m for m in fetched.history if m.role == Role.ROLE_USER]
        assert [get_message_text(m) for m in answers] == ["grpc", "approve"]
        with pytest.raises(UnsupportedOperationError, match="TASK_STATE_COMPLETED"):
            await events(client.send_message(user("go on", task=task), context=session()))


async def test_a_task_past_its_runs_deadline_fails_with_the_code() -> None:
    async with running_node(serve_command("--run-timeout", "2")) as node:
        gateway = Gateway.of(node)
        async with gateway.connected("assistant", "GRPC") as client:
            task, _ = await until_approval(client, "grpc")

            async def failed() -> None:
                fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
                assert fetched.status.state == TaskState.TASK_STATE_FAILED
                (error,) = get_data_parts(fetched.status.message.parts)
                assert error["code"] == "DEADLINE_EXCEEDED"

            # No message needed: the task says how its run ended once it did.
            await eventually(failed, timeout=30)
            with pytest.raises(UnsupportedOperationError, match="TASK_STATE_FAILED"):
                await events(client.send_message(user("approve", task=task), context=session()))


async def test_a_restarted_monolith_still_knows_its_tasks(tmp_path: Path) -> None:
    """Threads in SQLite: a task outlives the server, and says its run was interrupted."""
    command = serve_command("--data-dir", str(tmp_path / "data"))
    async with (
        running_node(command) as node,
        Gateway.of(node).connected("assistant", "JSONRPC") as client,
    ):
        task, _ = await until_approval(client, "grpc")
    async with (
        running_node(command) as node,
        Gateway.of(node).connected("assistant", "GRPC") as client,
    ):
        fetched = await client.get_task(GetTaskRequest(id=task.id), context=session())
        assert fetched.status.state == TaskState.TASK_STATE_FAILED
        (error,) = get_data_parts(fetched.status.message.parts)
        assert error["code"] == "ABORTED"
        assert "can run again" in error["message"]
        received = await events(
            client.send_message(user("grpc", context_id=task.context_id), context=session())
        )
        assert states(received)[-1] == INPUT_REQUIRED


async def test_sigterm_with_a2a_streams_open_exits_0_before_the_grace_period() -> None:
    """Streams that follow a task end at SIGTERM, on both bindings: none holds the server."""
    node = await start_node(serve_command("--grace-period", "3"))
    try:
        gateway = Gateway.of(node)
        async with (
            gateway.connected("assistant", "JSONRPC") as jsonrpc,
            gateway.connected("assistant", "GRPC") as grpc_client,
        ):
            following = []
            for client in (jsonrpc, grpc_client):
                task, _ = await until_approval(client, "grpc")
                stream = client.subscribe(SubscribeToTaskRequest(id=task.id), context=session())
                assert (await anext(stream)).task.status.state == INPUT_REQUIRED
                following.append(asyncio.ensure_future(events(stream)))
            started = time.monotonic()
            code = await node.stop(timeout=20)
            took = time.monotonic() - started
            assert code == 0, "".join(node.output)
            assert took < 3, f"took {took:.1f} s: the streams held the server"
            for stream_ended in following:
                with contextlib.suppress(A2AError, grpc.RpcError, httpx.HTTPError):
                    await asyncio.wait_for(stream_ended, 10)
    finally:
        await node.kill()


async def test_the_gateway_serves_agents_that_run_on_a_mesh() -> None:
    """`ravi serve --runtime grpc --a2a`: agents on a `ravi node`, the server a client."""
    node_command = [*ravi_command(), "node", "--node-id", "agents", "--listen", "127.0.0.1:0"]
    node_command += ["--app-dir", str(REPO_ROOT), "--setup", "tests.a2a.agents:setup"]
    async with running_node(node_command) as agents:
        serve = [*ravi_command(), "serve", "--port", "0", "--token", TOKEN, "--a2a"]
        serve += ["--runtime", "grpc", "--peer", f"agents={agents.address}", "--store", "memory"]
        serve += ["--app-dir", str(REPO_ROOT)]
        for name in ("assistant", "librarian"):
            serve += ["--a2a-agent", f"tests.a2a.agents:{name}"]
        async with running_node(serve) as node:
            gateway = Gateway.of(node)
            async with (
                gateway.connected("librarian", "GRPC", streaming=False) as librarian,
                gateway.connected("assistant", "JSONRPC") as assistant,
            ):
                query = {"@type": "ravi.examples.v1.SearchQuery", "query": "mesh"}
                (response,) = await events(
                    librarian.send_message(user(data=query), context=session())
                )
                (reply,) = get_data_parts(response.task.artifacts[0].parts)
                assert reply["hits"][0]["snippet"] == "mesh #1"

                task, _ = await until_approval(assistant, "restate")
                received = await events(
                    assistant.send_message(user("approve", task=task), context=session())
                )
                assert states(received)[-1] == COMPLETED
                assert result_text(received).startswith("Done. Report sent")

                task, _ = await until_approval(assistant, "grpc")
                canceled = await assistant.cancel_task(
                    CancelTaskRequest(id=task.id), context=session()
                )
                assert canceled.status.state == CANCELED


@pytest.mark.parametrize("binding", BINDINGS)
async def test_tasks_are_listed_and_push_notifications_are_refused(
    gateway: Gateway, binding: str
) -> None:
    async with gateway.connected("assistant", binding) as client:
        task, _ = await until_approval(client, "restate")
        listed = await client.list_tasks(
            ListTasksRequest(context_id=task.context_id), context=session()
        )
        assert [t.id for t in listed.tasks] == [task.id]
        config = TaskPushNotificationConfig(task_id=task.id, url="https://example.test/hook")
        with pytest.raises(PushNotificationNotSupportedError):
            await client.create_task_push_notification_config(config, context=session())
        await client.cancel_task(CancelTaskRequest(id=task.id), context=session())


async def test_a_grpc_tenant_names_a_served_agent_type(gateway: Gateway) -> None:
    async with httpx.AsyncClient() as http:
        card = await A2ACardResolver(http, gateway.url).get_agent_card()
    for interface in card.supported_interfaces:
        interface.tenant = "nope"
    credentials = InMemoryContextCredentialStore()
    await credentials.set_credentials("tests", "bearer", TOKEN)
    config = ClientConfig(
        supported_protocol_bindings=["GRPC"], grpc_channel_factory=grpc.aio.insecure_channel
    )
    client = ClientFactory(config).create(card, interceptors=[AuthInterceptor(credentials)])
    try:
        with pytest.raises(InvalidParamsError, match="no agent type 'nope' here"):
            await client.get_task(GetTaskRequest(id="x"), context=session())
    finally:
        await client.close()
