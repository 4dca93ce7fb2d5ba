"""A2A tasks of ReAct agents are runs of the server's ThreadService: the mapping, and the store.

A task's updates are made from its run's events, always the same way
(`updates`), and a task read from the store is those updates applied in
order to the run's first message (`RunTasks.snapshot`). So what a stream
showed and what `tasks/get` shows agree, and the task needs no state of its
own: on `RestateThreads` it lives in Restate, and survives the restart of
every process, the gateway's included.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from a2a.helpers import new_text_part
from a2a.server.context import ServerCallContext
from a2a.server.tasks import InMemoryTaskStore, TaskStore
from a2a.server.tasks.task_manager import append_artifact_to_task
from a2a.types import (
    Artifact,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from google.protobuf.timestamp_pb2 import Timestamp

from ravi.errors import FailedPrecondition, NotFound
from ravi.integrations.a2a._cards import ExposedAgent
from ravi.integrations.a2a._parts import data_of, text_and_data
from ravi.server import RunSummary, ThreadService
from ravi.server import _model as model

Update: TypeAlias = TaskStatusUpdateEvent | TaskArtifactUpdateEvent

ENDS = ("final", "failed")
"""The kinds of a run's last event."""

_UNKNOWN_KEPT = 1000


def updates(exposed: ExposedAgent, event: Mapping[str, Any]) -> list[Update]:
    """The task updates a run event makes: a status update, after the result artifact at the end.

    Each message's id is the run's and the event's seq, so an update made
    twice (a stream, then `tasks/get`) is the same update.
    """
    run_id, thread_id = event["run_id"], event["thread_id"]
    kind = event["kind"]

    def status(state: TaskState, text: str = "", data: Any = None) -> Update:
        message = None
        if data is not None:
            message = Message(
                role=Role.ROLE_AGENT,
                message_id=f"{run_id}/{event['seq']}",
                task_id=run_id,
                context_id=thread_id,
                parts=text_and_data(text, data),
            )
        return TaskStatusUpdateEvent(
            task_id=run_id,
            context_id=thread_id,
            status=TaskStatus(state=state, message=message, timestamp=_now()),
        )

    if kind == "approval_request":
        text, data = approval(exposed, event)
        return [status(TaskState.TASK_STATE_INPUT_REQUIRED, text, data)]
    if kind == "final":
        result = event["final"]
        artifact = Artifact(
            artifact_id=f"{run_id}/result",
            name="result",
            parts=text_and_data(result.get("content", ""), result),
        )
        return [
            TaskArtifactUpdateEvent(task_id=run_id, context_id=thread_id, artifact=artifact),
            status(TaskState.TASK_STATE_COMPLETED),
        ]
    if kind == "failed":
        failed = event["failed"]
        cancelled = failed.get("code") == "CANCELLED"
        state = TaskState.TASK_STATE_CANCELED if cancelled else TaskState.TASK_STATE_FAILED
        return [status(state, failed.get("message", ""), dict(failed))]
    return [status(TaskState.TASK_STATE_WORKING, summary(event), dict(event))]


def approval(exposed: ExposedAgent, event: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The text and data part of an `input-required` status: the approval request."""
    request = event["approval_request"]
    call = request["call"]
    arguments = json.loads(call.get("arguments_json") or "{}")
    data: dict[str, Any] = {
        "kind": "approval_request",
        "request_id": request["request_id"],
        "tool": call["tool"],
        "arguments": arguments,
        "description": request.get("description", ""),
        "run_id": event["run_id"],
        "seq": event["seq"],
    }
    tool = exposed.tool(call["tool"])
    if tool is not None:
        data["parameters"] = tool.spec.parameters
    text = (
        f"{call['tool']} wants to run with {json.dumps(arguments)}. Answer approve or "
        'reject (text), or a data part {"action": "approve" | "reject" | "edit", '
        '"arguments": {...}, "reason": "..."}.'
    )
    return text, data


def summary(event: Mapping[str, Any]) -> str:
    """A line of text for a run event, for clients that show text."""
    kind = event["kind"]
    if kind == "started":
        return f"Working on: {event['started'].get('content', '')}"
    if kind == "model_step":
        step = event["model_step"]
        calls = ", ".join(c["tool"] for c in step.get("tool_calls", []))
        return str(step.get("content") or f"Calling {calls}")
    if kind == "tool_result":
        result = event["tool_result"]
        return f"{result['call']['tool']}: {result.get('output', '')}"
    if kind == "approval_decision":
        decision = event["approval_decision"]
        action = str(decision["answer"].get("action", "")).removeprefix("APPROVAL_ACTION_")
        return f"Approval {decision['request_id']}: {action.lower()}"
    return str(kind)


def settled(run: RunSummary, event: Mapping[str, Any]) -> Mapping[str, Any]:
    """The last event of a run as its summary has it, when the two disagree.

    The summary records the first end it heard of: a run the server
    interrupted when it stopped is `interrupted` there, though its agent,
    cancelled then, said CANCELLED in its own `failed` event.
    """
    last = model.ended(run, int(event["seq"]))
    if last is None or last["kind"] == event["kind"] == "final":
        return event
    return last


def asked(task: Task) -> dict[str, Any] | None:
    """The approval request a waiting task's status message carries."""
    message = task.status.message if task.status.HasField("message") else None
    for part in message.parts if message is not None else ():
        if part.HasField("data"):
            data = data_of(part)
            if isinstance(data, dict) and data.get("kind") == "approval_request":
                return data
    return None


class RunTasks(TaskStore):
    """RunTasks is a2a-sdk's task store for one ReAct agent type, read from its runs.

    A task is a run of the ThreadService (the task id is the run id), so a
    task read here is what the service keeps now: a task that waits for an
    approval answered on the web page, or whose run ended (cancelled, past
    its deadline), says so at once. Nothing is written: the SDK's own writes
    are what the run's events say already, except two. A task canceled
    without its executor (the gateway restarted since) cancels its run, and a
    task whose run the service does not know (`keep`) is kept in memory.

    Args:
        threads: the thread service the runs are on.
        exposed: the agent type; runs of other types are not its tasks.
    """

    def __init__(self, threads: ThreadService, exposed: ExposedAgent) -> None:
        self._threads = threads
        self._exposed = exposed
        self._unknown: OrderedDict[str, Task] = OrderedDict()

    async def snapshot(self, task_id: str) -> tuple[Task, int] | None:
        """The task now, and the seq of the last event it shows (0: none)."""
        try:
            run = await self._threads.run_status(task_id)
        except NotFound:
            task = self._unknown.get(task_id)
            return None if task is None else (_copy(task), 0)
        if run["agent_type"] != self._exposed.agent_type:
            return None
        self._unknown.pop(task_id, None)
        events = [e async for e in self._threads.run_events(task_id, follow=False)]
        return self.task_of(run, events)

    def task_of(
        self, run: RunSummary, events: Sequence[Mapping[str, Any]] | None = None
    ) -> tuple[Task, int]:
        """The task of a run, and the seq of the last event it shows.

        Args:
            run: the run's summary.
            events: its events so far; None makes the task of the summary
                alone (no history): its pending approval, or how it ended.
        """
        if events is None:
            waiting = [e for e in run["pending_approvals"] if e["run_id"] == run["run_id"]]
            last = model.ended(run, run["last_event_id"])
            events = waiting[:1] + ([last] if last is not None else [])
        task = Task(
            id=run["run_id"],
            context_id=run["thread_id"],
            status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
            history=[_user(run["run_id"], run["thread_id"], "task", run["content"])],
        )
        seq = 0
        for event in events:
            if event["kind"] == "approval_decision":
                task.history.append(_answer(event))
            shown = settled(run, event) if event["kind"] in ENDS else event
            for update in updates(self._exposed, shown):
                _apply(task, update)
            seq = max(seq, int(event["seq"]))
        if task.status.state == TaskState.TASK_STATE_SUBMITTED and run["status"] == "running":
            task.status.state = TaskState.TASK_STATE_WORKING  # no event yet
        task.status.timestamp.CopyFrom(_at(run))
        return task, seq

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        found = await self.snapshot(task_id)
        return None if found is None else found[0]

    def keep(self, task: Task) -> None:
        """Keep a task whose run the service does not know, in memory, until it does.

        Its run was refused, or Restate holds it and no worker has started it
        yet; the SDK's later writes of the task update what is kept.
        """
        self._unknown[task.id] = _copy(task)
        while len(self._unknown) > _UNKNOWN_KEPT:
            self._unknown.popitem(last=False)

    async def save(self, task: Task, context: ServerCallContext) -> None:
        if task.status.state == TaskState.TASK_STATE_CANCELED:
            # Canceled by the SDK for lack of an executor here: the run is what ends.
            with contextlib.suppress(NotFound, FailedPrecondition):
                await self._threads.cancel(task.id)
        if task.id in self._unknown:
            self._unknown[task.id] = _copy(task)

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        runs = await self._threads.runs(params.context_id or None)
        # The SDK's own filters and pages, over the tasks of this agent's runs.
        page = InMemoryTaskStore()
        known = set()
        for run in runs:
            if run["agent_type"] == self._exposed.agent_type:
                known.add(run["run_id"])
                await page.save(self.task_of(run)[0], context)
        for task in self._unknown.values():
            if task.id not in known:
                await page.save(task, context)
        return await page.list(params, context)

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        """Tasks are the threads' history, kept by the thread service: nothing is deleted here."""


def _apply(task: Task, update: Update) -> None:
    """Apply an update as the SDK's TaskManager does: the last status message goes to history."""
    if isinstance(update, TaskArtifactUpdateEvent):
        append_artifact_to_task(task, update)
        return
    if task.status.HasField("message"):
        task.history.append(task.status.message)
    task.status.CopyFrom(update.status)


def _user(run_id: str, thread_id: str, name: str, text: str) -> Message:
    return Message(
        role=Role.ROLE_USER,
        message_id=f"{run_id}/{name}",
        task_id=run_id,
        context_id=thread_id,
        parts=[new_text_part(text)],
    )


def _answer(event: Mapping[str, Any]) -> Message:
    """The answer to an approval as the user's message (the web page's answers too)."""
    decision = event["approval_decision"]
    answer = decision["answer"]
    action = str(answer.get("action", "")).removeprefix("APPROVAL_ACTION_").lower()
    fields: dict[str, Any] = {"action": action, "request_id": decision["request_id"]}
    if answer.get("arguments_json"):
        fields["arguments"] = json.loads(answer["arguments_json"])
    if answer.get("reason"):
        fields["reason"] = answer["reason"]
    message = _user(event["run_id"], event["thread_id"], f"{event['seq']}/answer", action)
    message.parts.extend(text_and_data("", fields))
    return message


def _copy(task: Task) -> Task:
    copied = Task()
    copied.CopyFrom(task)
    return copied


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _at(run: RunSummary) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(run["updated_at"] * 1e9))
    return stamp
