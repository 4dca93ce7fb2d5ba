"""ThreadStore and the thread model: numbering, approvals, bounds, one server per folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ravi.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidToolCall,
    NotFound,
    ResourceExhausted,
)
from ravi.react.v1 import react_pb2 as pb
from ravi.server import ThreadStore
from ravi.server import _model as model


def event(run_id: str, seq: int, kind: str = "model_step", **body: object) -> dict[str, object]:
    return {"run_id": run_id, "seq": seq, "kind": kind, kind: body}


def test_the_store_numbers_events_and_keeps_a_redelivery_once(tmp_path: Path) -> None:
    store = ThreadStore.open(tmp_path)
    try:
        first = [store.add_event("t", event("run-1", seq)) for seq in (1, 2)]
        assert [e["seq"] for e in first if e] == [1, 2]
        assert store.add_event("t", event("run-1", 2)) is None  # delivered twice
        # A restarted agent numbers from 1 again: the store goes on from 3.
        again = store.add_event("t", event("run-2", 1))
        assert again is not None
        assert again["seq"] == 3
        assert [e["run_id"] for e in store.events_after("t", 1, 10)] == ["run-1", "run-2"]
    finally:
        store.close()


def test_one_folder_serves_one_store(tmp_path: Path) -> None:
    store = ThreadStore.open(tmp_path)
    try:
        with pytest.raises(FailedPrecondition, match="another ravi server keeps its threads"):
            ThreadStore.open(tmp_path)
    finally:
        store.close()
    ThreadStore.open(tmp_path).close()  # free again once closed


def test_a_runs_end_closes_what_is_pending_not_what_was_answered() -> None:
    store = ThreadStore.memory()
    store.set_approvals("t", {"a": "pending", "b": "pending"})
    store.set_approvals("t", {"b": "answered"})
    store.set_approvals("t", {"a": "closed", "b": "closed"})
    assert (store.approval("a"), store.approval("b")) == (("t", "closed"), ("t", "answered"))
    for state, error in [
        (None, NotFound),
        ("closed", FailedPrecondition),
        ("answered", AlreadyExists),
    ]:
        with pytest.raises(error):
            model.check_answerable("x", state)  # type: ignore[arg-type]


def test_memory_keeps_the_recent_threads_and_never_drops_a_running_one() -> None:
    store = ThreadStore.memory(max_threads=2)
    for index, state in enumerate(["running", "completed"]):
        record = model.new_thread(f"t{index}", float(index))
        record["state"] = state
        store.put(record)
    store.make_room()  # drops t1, the idle one
    assert store.get("t1") is None
    assert store.get("t0") is not None
    store.put({**model.new_thread("t2", 3.0), "state": "running"})
    with pytest.raises(ResourceExhausted):
        store.make_room()


def test_a_thread_runs_one_task_at_a_time_and_reruns_only_what_did_not_finish() -> None:
    record = model.new_thread("t", 0.0)
    model.start_run(record, run_id="r1", agent_type="a", content="hi", max_iterations=0, now=1.0)
    with pytest.raises(FailedPrecondition, match="has a run in progress"):
        model.start_run(record, run_id="r2", agent_type="a", content="x", max_iterations=0, now=2)
    model.apply_event(record, event("r1", 1, "approval_request", request_id="q"), 2.0)
    assert model.summary(record)["status"] == "waiting_for_approval"
    closed = model.finish_run(record, "r1", error={"code": "ABORTED"}, state="interrupted", now=3)
    assert (closed, model.summary(record)["status"]) == ({"q": "closed"}, "interrupted")
    assert model.rerun_task(record) == {"content": "hi", "max_iterations": 0}
    model.start_run(record, run_id="r2", agent_type="a", content="hi", max_iterations=0, now=4.0)
    model.apply_event(record, event("r2", 2, "final", content="done"), 5.0)
    assert model.summary(record)["status"] == "completed"
    with pytest.raises(FailedPrecondition, match="only a run that failed or was interrupted"):
        model.rerun_task(record)


def _edit(arguments: str) -> pb.ApprovalAnswer:
    return pb.ApprovalAnswer(action=pb.APPROVAL_ACTION_EDIT, arguments_json=arguments)


def _request(parameters: str) -> dict[str, Any]:
    call = {"tool": "send_report", "arguments_json": "{}"}
    return {"approval_request": {"request_id": "r", "call": call, "parameters_json": parameters}}


def test_an_edit_is_checked_against_the_schema_the_agent_published(
    caplog: pytest.LogCaptureFixture,
) -> None:
    schema = json.dumps(
        {
            "type": "object",
            "properties": {"to": {"type": "string"}, "n": {"type": "integer", "minimum": 1}},
            "required": ["to"],
            "additionalProperties": False,
        }
    )
    model.check_edit(_request(schema), _edit('{"to": "a@b.c", "n": 2}'))
    model.check_edit(_request(schema), pb.ApprovalAnswer(action=pb.APPROVAL_ACTION_APPROVE))
    with pytest.raises(InvalidToolCall) as caught:
        model.check_edit(_request(schema), _edit('{"n": 0, "x": 1}'))
    assert caught.value.problems == [
        ((), "'to' is a required property"),
        ((), "Additional properties are not allowed ('x' was unexpected)"),
        (("n",), "0 is less than the minimum of 1"),
    ]
    assert str(caught.value).startswith("the edited arguments for tool 'send_report' do not")
    for text, problem in [("[1]", "must be a JSON object"), ("{", "not valid JSON")]:
        with pytest.raises(InvalidToolCall, match=problem):
            model.check_edit(_request(schema), _edit(text))
    # An agent that publishes no schema, or a broken one, gets its edits unchecked here.
    model.check_edit(_request(""), _edit('{"anything": 1}'))
    model.check_edit(_request('{"type": 12}'), _edit('{"anything": 1}'))
    assert "publishes a schema that is not one" in caplog.text
