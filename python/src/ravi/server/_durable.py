"""The Restate objects that keep `ravi serve --runtime restate`'s threads: served by the workers.

- `ravi.Thread`, a Virtual Object keyed by thread id, is a thread's record
  (`meta`, the JSON of `ravi.server._model`), its events (`event:<seq>`, one
  state entry each), its approval requests (`approval:<request id>`) and
  the summary of each of its runs (`run:<run id>`). It receives the agents'
  RunEvents as a subscriber of the events topic, starts and cancels runs,
  and answers approvals. Its handlers are exclusive: one change at a
  time per thread, so two answers to one request get one winner.
- `ravi.ThreadRuns`, a Service, drives one run: a durable call to the agent,
  for as long as the run takes (approvals included), then the outcome to the
  thread. The call outlives every restart; nothing waits for it in memory.

The web front reads these records with Restate's SQL (the admin API), so it
needs no worker to show threads, and keeps nothing itself.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any, cast

import restate
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from restate.serde import BytesSerde

from ravi._ids import AgentId
from ravi._mesh import codec
from ravi._serialization import MessageRegistry
from ravi._subscriptions import TypeSubscription
from ravi.agents._react import EVENTS_TOPIC
from ravi.errors import (
    AlreadyExists,
    Cancelled,
    Code,
    FailedPrecondition,
    NotFound,
    RaviError,
    code_of,
    error_for,
    from_call_failure,
)
from ravi.integrations.runtime.restate import RestateRuntime
from ravi.integrations.runtime.restate._context import CANCELLED_STATUS, PROMISES
from ravi.integrations.runtime.restate._errors import terminal_of
from ravi.integrations.runtime.restate._runtime import DEADLINE_KEY
from ravi.mesh.v1 import agent_service_pb2, types_pb2
from ravi.react.v1 import react_pb2 as pb
from ravi.server import _model as model
from ravi.server._model import ApprovalState

logger = logging.getLogger("ravi.server.restate")

THREAD = "ravi.Thread"
THREAD_RUNS = "ravi.ThreadRuns"
EVENT_PREFIX = "event:"
APPROVAL_PREFIX = "approval:"
RUN_PREFIX = "run:"
CANCELLED = {"code": "CANCELLED", "message": "the run was cancelled"}

_BYTES = BytesSerde()
_IO: dict[str, Any] = {
    "accept": "*/*",
    "content_type": "application/json",
    "input_serde": _BYTES,
    "output_serde": _BYTES,
}


def event_key(seq: int) -> str:
    """The state key of a thread's event: zero-padded, so keys sort as seqs do."""
    return f"{EVENT_PREFIX}{seq:012d}"


def thread_services(registry: MessageRegistry) -> list[restate.VirtualObject | restate.Service]:
    """`ravi.Thread` and `ravi.ThreadRuns`, decoding messages with `registry`."""
    return [_thread_object(registry), _runs_service(registry)]


async def _record_of(ctx: restate.ObjectContext) -> dict[str, Any] | None:
    data = await ctx.get("meta", serde=_BYTES)
    return json.loads(data) if data is not None else None


def _keep(
    ctx: restate.ObjectContext,
    record: dict[str, Any],
    approvals: dict[str, ApprovalState] | None = None,
) -> None:
    ctx.set("meta", json.dumps(record).encode(), serde=_BYTES)
    for request_id, state in (approvals or {}).items():
        ctx.set(f"{APPROVAL_PREFIX}{request_id}", state.encode(), serde=_BYTES)
    run = model.run_of(record)
    if run is not None:
        ctx.set(f"{RUN_PREFIX}{run['run_id']}", json.dumps(run).encode(), serde=_BYTES)


async def _launch(
    ctx: restate.ObjectContext, record: dict[str, Any], request: dict[str, Any], now: float
) -> bytes:
    """Start a run on the record, and the ThreadRuns invocation that drives it."""
    try:
        model.start_run(
            record,
            run_id=request["run_id"],
            agent_type=request["agent_type"],
            content=request["content"],
            max_iterations=request["max_iterations"],
            now=now,
        )
    except RaviError as error:
        raise terminal_of(error) from None
    drive = {**request, "thread_id": ctx.key()}
    sent = ctx.generic_send(THREAD_RUNS, "run", json.dumps(drive).encode())
    # Kept to cancel the run by: cancelling it cancels the agent's invocation too.
    record["run_invocation"] = await sent.invocation_id()
    _keep(ctx, record)
    return json.dumps(model.summary(record)).encode()


async def _deliver(ctx: restate.ObjectContext, registry: MessageRegistry, data: bytes) -> None:
    try:
        event = codec.decode(
            registry, agent_service_pb2.SendRequest.FromString(data).envelope.payload
        )
    except (DecodeError, RaviError) as error:
        logger.warning("thread %s: a delivery that does not decode: %s", ctx.key(), error)
        return
    if not isinstance(event, pb.RunEvent):
        return
    key = event_key(event.seq)
    if await ctx.get(key, serde=_BYTES) is not None:
        return  # delivered before
    now = await ctx.time()
    record = await _record_of(ctx) or model.new_thread(ctx.key(), now)
    encoded = model.event_json(event)
    ctx.set(key, json.dumps(encoded).encode(), serde=_BYTES)
    _keep(ctx, record, model.apply_event(record, encoded, now))


async def _respond(ctx: restate.ObjectContext, request: dict[str, Any]) -> model.Answered:
    request_id = str(request["request_id"])
    state = await ctx.get(f"{APPROVAL_PREFIX}{request_id}", serde=_BYTES)
    try:
        model.check_answerable(request_id, cast("ApprovalState", state.decode()) if state else None)
    except RaviError as error:
        raise terminal_of(error) from None
    try:
        await ctx.generic_call(
            PROMISES, "resolve", bytes.fromhex(request["value"]), key=f"approval-{request_id}"
        )
    except restate.TerminalError as error:
        if error.status_code != CANCELLED_STATUS:
            raise
        ctx.set(f"{APPROVAL_PREFIX}{request_id}", b"answered", serde=_BYTES)
        raise terminal_of(
            AlreadyExists(f"approval request {request_id!r} was answered already")
        ) from None
    record = await _record_of(ctx)
    assert record is not None  # an approval is only kept with its thread
    model.answered(record, request_id, await ctx.time())
    _keep(ctx, record, {request_id: "answered"})
    return {"request_id": request_id, "thread_id": ctx.key(), "accepted": True, "applied": True}


def _thread_object(registry: MessageRegistry) -> restate.VirtualObject:
    thread = restate.VirtualObject(THREAD, description="A conversation thread of ravi serve.")

    @thread.handler("start", **_IO)
    async def start(ctx: restate.ObjectContext, data: bytes) -> bytes:
        """Start a run: {run_id, agent_type, content, max_iterations, timeout, create}."""
        request = json.loads(data)
        now = await ctx.time()
        record = await _record_of(ctx)
        if await ctx.get(f"{RUN_PREFIX}{request['run_id']}", serde=_BYTES) is not None:
            assert record is not None  # a run is only kept with its thread
            return json.dumps(model.summary(record)).encode()  # started before: once is enough
        if record is None:
            if not request["create"]:
                raise terminal_of(NotFound(f"no thread {ctx.key()!r}"))
            record = model.new_thread(ctx.key(), now)
        return await _launch(ctx, record, request, now)

    @thread.handler("rerun", **_IO)
    async def rerun(ctx: restate.ObjectContext, data: bytes) -> bytes:
        """Run the last task again: {run_id, agent_type, timeout}."""
        request = json.loads(data)
        record = await _record_of(ctx)
        if record is None:
            raise terminal_of(NotFound(f"no thread {ctx.key()!r}"))
        try:
            task = model.rerun_task(record)
        except RaviError as error:
            raise terminal_of(error) from None
        agent_type = record["agent_type"] or request["agent_type"]
        rerun = {**request, **task, "agent_type": agent_type}
        return await _launch(ctx, record, rerun, await ctx.time())

    @thread.handler("deliver", **_IO)
    async def deliver(ctx: restate.ObjectContext, data: bytes) -> bytes:
        """A RunEvent published on the events topic (a SendRequest, as every delivery)."""
        await _deliver(ctx, registry, data)
        return b""

    @thread.handler("finish", **_IO)
    async def finish(ctx: restate.ObjectContext, data: bytes) -> bytes:
        """How a run ended, from ThreadRuns: {run_id, result | error}."""
        outcome = json.loads(data)
        record = await _record_of(ctx)
        if record is None:
            return b""
        closed = model.finish_run(
            record,
            outcome["run_id"],
            result=outcome.get("result"),
            error=outcome.get("error"),
            now=await ctx.time(),
        )
        _keep(ctx, record, closed)
        return b""

    @thread.handler("cancel", **_IO)
    async def cancel(ctx: restate.ObjectContext, data: bytes) -> bytes:
        """Cancel the run in progress: {run_id}; its RunSummary after."""
        run_id = json.loads(data)["run_id"]
        record = await _record_of(ctx)
        if record is None or await ctx.get(f"{RUN_PREFIX}{run_id}", serde=_BYTES) is None:
            raise terminal_of(NotFound(f"no run {run_id!r}"))
        if record["run_id"] != run_id or record["state"] != "running":
            status = model.summary(record)["status"] if record["run_id"] == run_id else "over"
            raise terminal_of(
                FailedPrecondition(
                    f"run {run_id!r} is {status}: only a run in progress can be cancelled"
                )
            )
        closed = model.finish_run(record, run_id, error=dict(CANCELLED), now=await ctx.time())
        _keep(ctx, record, closed)
        invocation = record.get("run_invocation")
        if invocation:
            ctx.cancel_invocation(invocation)
        return json.dumps(model.run_of(record)).encode()

    @thread.handler("respond", **_IO)
    async def respond(ctx: restate.ObjectContext, data: bytes) -> bytes:
        """Answer an approval request: {request_id, value (a Payload, hex)}."""
        return json.dumps(await _respond(ctx, json.loads(data))).encode()

    return thread


def _runs_service(registry: MessageRegistry) -> restate.Service:
    runs = restate.Service(THREAD_RUNS, description="Runs of tasks on ravi serve's threads.")

    @runs.handler("run", **_IO)
    async def run(ctx: restate.Context, data: bytes) -> bytes:
        """Send the task to the agent, durably, and tell the thread how the run ended."""
        request = json.loads(data)
        outcome: dict[str, Any] = {"run_id": request["run_id"]}
        timeout: float | None = request.get("timeout")
        body = await _task_request(ctx, registry, request)
        call = ctx.generic_call(request["agent_type"], "handle", body, key=request["thread_id"])
        cancel_call = False
        try:
            if timeout is None:
                reply: bytes | None = await call
            else:
                timer = ctx.sleep(timedelta(seconds=timeout))
                match await restate.select(reply=call, timer=timer):
                    case ["reply", answer]:
                        reply = answer
                    case _:
                        reply, cancel_call = None, True
            outcome |= _outcome_of(registry, reply, timeout)
        except restate.TerminalError as error:
            failure = _error_of_terminal(error)
            outcome["error"] = {"code": failure.code.name, "message": str(failure)}
            # This run was cancelled (by the thread's `cancel`): so is the agent's call.
            cancel_call = isinstance(failure, Cancelled)
        # The thread hears of the deadline before the agent hears of its cancellation.
        ctx.generic_send(THREAD, "finish", json.dumps(outcome).encode(), key=request["thread_id"])
        if cancel_call:
            ctx.cancel_invocation(await call.invocation_id())
        return b""

    return runs


async def _task_request(
    ctx: restate.Context, registry: MessageRegistry, request: dict[str, Any]
) -> bytes:
    """The run's Task to the agent, as a SendRequest, with the run's deadline."""
    agent = AgentId(request["agent_type"], request["thread_id"])
    task = pb.Task(
        thread_id=agent.key,
        content=request["content"],
        max_iterations=request["max_iterations"],
    )
    payload = codec.encode(registry, task)
    envelope = types_pb2.Envelope(message_id=request["run_id"], payload=payload)
    timeout: float | None = request.get("timeout")
    if timeout is not None:
        started = await ctx.time()
        envelope.metadata[DEADLINE_KEY] = str(int((started + timeout) * 1000))
    body = agent_service_pb2.SendRequest(recipient=codec.agent_id_to_wire(agent), envelope=envelope)
    return body.SerializeToString()


def _outcome_of(
    registry: MessageRegistry, reply: bytes | None, timeout: float | None
) -> dict[str, Any]:
    """The `result` or `error` of the agent's reply (None: the run's time was up)."""
    if reply is None:
        message = f"the run did not end within {timeout} s"
        return {"error": {"code": Code.DEADLINE_EXCEEDED.name, "message": message}}
    outcome = agent_service_pb2.CallOutcome.FromString(reply)
    if outcome.HasField("failure"):
        error = from_call_failure(outcome.failure)
        return {"error": {"code": code_of(error).name, "message": str(error)}}
    result = codec.decode(registry, outcome.result.result)
    return {"result": json_format.MessageToDict(result, preserving_proto_field_name=True)}


def _error_of_terminal(error: restate.TerminalError) -> RaviError:
    if error.status_code == CANCELLED_STATUS and error.message == "cancelled":
        return Cancelled("the run was cancelled")
    if error.status_code == 404:
        return NotFound(f"Restate knows no agent of that type: {error.message}")
    return error_for(Code.UNKNOWN, error.message)


async def restate_setup(runtime: RestateRuntime, events_topic: str = EVENTS_TOPIC) -> None:
    """Serve the objects `ravi serve --runtime restate` keeps its threads in.

    `ravi restate worker` and `ravi restate dev` call it for you.

    Args:
        runtime: the worker's runtime (before it starts).
        events_topic: the topic type the agents publish RunEvents on.
    """
    for service in thread_services(runtime.message_registry):
        runtime.add_service(service)
    await runtime.add_subscription(TypeSubscription(events_topic, THREAD))
