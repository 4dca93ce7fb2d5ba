"""A thread's record, and how runs, events and answers change it: one model, two stores.

The record is plain JSON, so that the SQLite store of the monolith and the
`ravi.Thread` Restate object keep the very same thing and apply the very same
rules. Every function here is deterministic (the time is passed in), as code
running in a Restate handler must be.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, NoReturn, TypedDict

import jsonschema
from google.protobuf import json_format

from ravi.errors import AlreadyExists, FailedPrecondition, InvalidToolCall, NotFound
from ravi.react.v1 import react_pb2 as pb

logger = logging.getLogger("ravi.server")

RunState = Literal["idle", "running", "completed", "failed", "interrupted"]
ApprovalState = Literal["pending", "answered", "closed"]

TITLE_LENGTH = 120


class ThreadSummary(TypedDict):
    """A thread as the API shows it (`GET /threads/{id}`).

    `status` is idle, running, waiting_for_approval, completed, failed or
    interrupted (a run the server was running when it stopped, on the
    runtimes that are not durable); `submitted` while Restate holds a task no
    worker has taken yet.
    """

    thread_id: str
    title: str
    status: str
    created_at: float
    updated_at: float
    runs: int
    run_id: str
    last_event_id: int
    pending_approvals: list[dict[str, Any]]
    result: dict[str, Any] | None
    error: dict[str, str] | None


class Answered(TypedDict):
    """What `POST /respond/{request_id}` answers.

    `applied` is false when Restate holds the answer durably but no worker
    has applied it yet (it will, once one is up).
    """

    request_id: str
    thread_id: str
    accepted: bool
    applied: bool


def event_json(event: pb.RunEvent) -> dict[str, Any]:
    """A RunEvent as the API shows it: proto3 JSON with field names kept, plus `kind`."""
    data = json_format.MessageToDict(
        event, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    data["seq"] = event.seq  # proto3 JSON writes 64-bit integers as strings
    data["kind"] = event.WhichOneof("kind") or ""
    return data


def new_thread(thread_id: str, now: float) -> dict[str, Any]:
    """The record of a thread nothing has happened on yet."""
    return {
        "thread_id": thread_id,
        "title": "",
        "created_at": now,
        "updated_at": now,
        "runs": 0,
        "run_id": "",
        "agent_type": "",
        "state": "idle",
        "task": None,
        "last_seq": 0,
        "pending": {},
        "result": None,
        "error": None,
    }


def summary(record: dict[str, Any]) -> ThreadSummary:
    """The API's view of a record."""
    state = record["state"]
    status = state
    if state == "running":
        status = "waiting_for_approval" if record["pending"] else "running"
    return {
        "thread_id": record["thread_id"],
        "title": record["title"],
        "status": status,
        "created_at": record["created_at"],
        "updated_at": record["updated_at"],
        "runs": record["runs"],
        "run_id": record["run_id"],
        "last_event_id": record["last_seq"],
        "pending_approvals": list(record["pending"].values()),
        "result": record["result"],
        "error": record["error"],
    }


def start_run(
    record: dict[str, Any],
    *,
    run_id: str,
    agent_type: str,
    content: str,
    max_iterations: int,
    now: float,
) -> None:
    """Mark a run started.

    Raises:
        FailedPrecondition: the thread has a run in progress.
    """
    if record["state"] == "running":
        raise FailedPrecondition(
            f"thread {record['thread_id']!r} has a run in progress "
            f"({summary(record)['status']}); wait for it to finish"
        )
    record.update(
        state="running",
        run_id=run_id,
        agent_type=agent_type,
        runs=record["runs"] + 1,
        task={"content": content, "max_iterations": max_iterations},
        title=record["title"] or content[:TITLE_LENGTH],
        result=None,
        error=None,
        updated_at=now,
    )


def rerun_task(record: dict[str, Any]) -> dict[str, Any]:
    """The task to run again on a thread whose last run failed or was interrupted.

    Raises:
        FailedPrecondition: the last run did not fail and was not interrupted.
    """
    if record["state"] not in ("failed", "interrupted") or record["task"] is None:
        raise FailedPrecondition(
            f"thread {record['thread_id']!r} is {summary(record)['status']}: only a run "
            "that failed or was interrupted can run again"
        )
    task: dict[str, Any] = record["task"]
    return task


def finish_run(
    record: dict[str, Any],
    run_id: str,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, str] | None = None,
    state: RunState | None = None,
    now: float,
) -> dict[str, ApprovalState]:
    """Record how a run ended, once (by its last event or by its reply, whichever comes first).

    Returns the approvals this closes: asked by the run, never answered.
    """
    if record["run_id"] != run_id or record["state"] != "running":
        return {}
    final: RunState = state or ("failed" if error is not None else "completed")
    record.update(state=final, result=result, error=error, updated_at=now)
    closed: dict[str, ApprovalState] = dict.fromkeys(record["pending"], "closed")
    record["pending"] = {}
    return closed


def apply_event(
    record: dict[str, Any], event: dict[str, Any], now: float
) -> dict[str, ApprovalState]:
    """Apply a RunEvent (as `event_json` gives it) to the record.

    Returns the approvals whose state changed.
    """
    record["last_seq"] = max(record["last_seq"], event["seq"])
    record["updated_at"] = now
    kind = event["kind"]
    if kind == "approval_request":
        request_id = event["approval_request"]["request_id"]
        if event["run_id"] == record["run_id"] and record["state"] == "running":
            record["pending"][request_id] = event
            return {request_id: "pending"}
        return {request_id: "closed"}
    if kind == "approval_decision":
        request_id = event["approval_decision"]["request_id"]
        record["pending"].pop(request_id, None)
        return {request_id: "answered"}
    if kind == "final":
        return finish_run(record, event["run_id"], result=event["final"], now=now)
    if kind == "failed":
        return finish_run(record, event["run_id"], error=dict(event["failed"]), now=now)
    return {}


def check_answerable(request_id: str, state: ApprovalState | None) -> None:
    """Refuse an answer to a request that is unknown, ended or answered.

    Raises:
        NotFound: no such request.
        FailedPrecondition: the run that asked ended without an answer.
        AlreadyExists: it was answered already.
    """
    if state is None:
        raise NotFound(f"no approval request {request_id!r}")
    if state == "closed":
        raise FailedPrecondition(
            f"approval request {request_id!r} is no longer pending: the run that asked ended"
        )
    if state == "answered":
        raise AlreadyExists(f"approval request {request_id!r} was answered already")


def check_edit(request: dict[str, Any] | None, answer: pb.ApprovalAnswer) -> None:
    """Refuse an edit whose arguments the tool would not take, before it is sent.

    `request` is the pending `approval_request` event (as `event_json` gives
    it); its `parameters_json` is the tool's JSON schema. An agent that sent
    none gets its edits unchecked here (it still validates them itself).

    Raises:
        InvalidToolCall: the edited arguments are not a JSON object, or do not
            match the schema; `problems` lists each problem.
    """
    if answer.action != pb.APPROVAL_ACTION_EDIT or request is None:
        return
    asked = request.get("approval_request", {})
    tool = asked.get("call", {}).get("tool", "")
    try:
        arguments = json.loads(answer.arguments_json or "{}")
    except json.JSONDecodeError as error:
        _refuse(tool, [((), f"not valid JSON: {error}")])
    if not isinstance(arguments, dict):
        _refuse(tool, [((), "must be a JSON object")])
    schema_json = asked.get("parameters_json", "")
    if not schema_json:
        return
    try:
        schema = json.loads(schema_json)
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except (json.JSONDecodeError, jsonschema.SchemaError) as error:
        logger.warning(
            "tool %r publishes a schema that is not one (%s): edits go unchecked", tool, error
        )
        return
    problems = [
        (tuple(problem.absolute_path), problem.message)
        for problem in sorted(
            validator_class(schema).iter_errors(arguments),
            key=lambda e: (list(map(str, e.absolute_path)), e.message),
        )
    ]
    if problems:
        _refuse(tool, problems)


def _refuse(tool: str, problems: list[tuple[tuple[str | int, ...], str]]) -> NoReturn:
    listed = "; ".join(
        f"{'.'.join(map(str, where)) or 'arguments'}: {what}" for where, what in problems
    )
    raise InvalidToolCall(
        f"the edited arguments for tool {tool!r} do not validate: {listed}", problems=problems
    )


def answered(record: dict[str, Any], request_id: str, now: float) -> None:
    """Take an answered request off the record's pending approvals."""
    record["pending"].pop(request_id, None)
    record["updated_at"] = now
