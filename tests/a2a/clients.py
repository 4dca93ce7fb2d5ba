"""Helpers of the tests that drive the gateway with the official Python client (a2a-sdk)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from a2a.client import Client
from a2a.helpers import get_data_parts, get_message_text, new_data_part, new_text_part
from a2a.types import (
    Message,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)

from tests.a2a.conftest import session

BINDINGS = ["JSONRPC", "GRPC", "HTTP+JSON"]
INPUT_REQUIRED = TaskState.TASK_STATE_INPUT_REQUIRED
COMPLETED = TaskState.TASK_STATE_COMPLETED
CANCELED = TaskState.TASK_STATE_CANCELED


def user(
    text: str | None = None,
    *,
    data: Any = None,
    task: Task | None = None,
    context_id: str = "",
) -> SendMessageRequest:
    parts = [new_text_part(text)] if text is not None else []
    if data is not None:
        parts.append(new_data_part(data))
    message = Message(
        role=Role.ROLE_USER,
        message_id=uuid.uuid4().hex,
        parts=parts,
        task_id=task.id if task else "",
        context_id=task.context_id if task else context_id,
    )
    return SendMessageRequest(message=message)


async def events(stream: AsyncIterator[StreamResponse]) -> list[StreamResponse]:
    return [event async for event in stream]


def state(event: StreamResponse) -> TaskState.ValueType | None:
    if event.HasField("task"):
        return event.task.status.state
    if event.HasField("status_update"):
        return event.status_update.status.state
    return None


def states(received: list[StreamResponse]) -> list[TaskState.ValueType]:
    return [s for s in map(state, received) if s is not None]


def first_task(received: list[StreamResponse]) -> Task:
    return next(e.task for e in received if e.HasField("task"))


def approval(received: list[StreamResponse]) -> dict[str, Any]:
    """The approval request of the last input-required update."""
    update = next(
        e.status_update
        for e in reversed(received)
        if e.HasField("status_update") and e.status_update.status.state == INPUT_REQUIRED
    )
    (data,) = get_data_parts(update.status.message.parts)
    assert data["kind"] == "approval_request"
    return dict(data)


async def until_approval(client: Client, text: str) -> tuple[Task, dict[str, Any]]:
    """Stream a task to the assistant up to its approval request."""
    received = await events(client.send_message(user(text), context=session()))
    assert states(received)[-1] == INPUT_REQUIRED, states(received)
    return first_task(received), approval(received)


def result_text(received: list[StreamResponse]) -> str:
    artifact = next(e.artifact_update.artifact for e in received if e.HasField("artifact_update"))
    assert artifact.name == "result"
    return get_message_text(Message(parts=artifact.parts))
