"""RuntimeThreads: runs on a LocalRuntime or GrpcRuntime from this process, threads in SQLite."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format

from ravi._agent import BaseAgent, message_handler
from ravi._context import MessageContext
from ravi._ids import AgentId
from ravi._subscriptions import TypeSubscription
from ravi.agents._react import EVENTS_TOPIC
from ravi.errors import AlreadyExists, NotFound, Unavailable, code_of
from ravi.react.v1 import react_pb2 as pb
from ravi.runtime._base import BaseRuntime
from ravi.server import _model as model
from ravi.server._model import Answered, ThreadSummary, event_json
from ravi.server._store import ThreadStore

logger = logging.getLogger("ravi.server")

SINK_TYPE = "ravi.server.events"
READY_WAIT = 2.0
"""Seconds a task waits for a route to the agent type (a peer reconnecting) before a 503."""
_BATCH = 500


class RuntimeThreads:
    """RuntimeThreads runs tasks on a ReAct agent type of a runtime it starts and stops.

    The runtime is a LocalRuntime hosting the agents (the monolith) or a
    GrpcRuntime joining a mesh where they run. Runs are calls from this
    process: neither runtime is durable, so a run in progress when the server
    stops (or dies) ends there. Its thread says `interrupted`, and `rerun`
    runs its task again. Threads, events and approvals are kept in `store`.

    Args:
        runtime: the runtime; started and stopped with the service.
        store: where threads are kept.
        agent_type: the ReAct agent type tasks are sent to.
        run_timeout: seconds a run may take, approvals included.
        events_topic: the topic type the agents publish RunEvents on.
    """

    def __init__(
        self,
        runtime: BaseRuntime,
        *,
        store: ThreadStore,
        agent_type: str = "assistant",
        run_timeout: float = 3600.0,
        events_topic: str = EVENTS_TOPIC,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self._agent_type = agent_type
        self._run_timeout = run_timeout
        self._events_topic = events_topic
        self._runs: set[asyncio.Task[None]] = set()
        self._wakes: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        self._interrupt(self.store.running(), "the server stopped while this run was in progress")
        service = self
        await _EventSink.register(self.runtime, SINK_TYPE, lambda: _EventSink(service))
        await self.runtime.add_subscription(TypeSubscription(self._events_topic, SINK_TYPE))
        await self.runtime.start()
        # A client node of a mesh learns the routes once its peers answered.
        try:
            await self.runtime.wait_until_ready(self._agent_type, timeout=15)
        except TimeoutError:
            logger.warning(
                "no node hosts agent type %r yet; runs fail until one does", self._agent_type
            )

    async def stop(self) -> None:
        """Interrupt the runs in progress (their threads say so), then stop the runtime."""
        # Recorded first: a cancelled agent publishes a `failed` event of its own.
        self._interrupt(self.store.running(), "the server stopped while this run was in progress")
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        try:
            await self.runtime.stop()
        finally:
            self.store.close()

    # --- runs -------------------------------------------------------------------------

    async def run(
        self, thread_id: str, content: str, *, max_iterations: int = 0, new_thread: bool = True
    ) -> ThreadSummary:
        agent = AgentId(self._agent_type, thread_id)  # validates the thread id as a key
        try:
            # A mesh whose node hosting the agent type is away (or reconnecting): say
            # so now, rather than accept a run that can only fail.
            await self.runtime.wait_until_ready(self._agent_type, timeout=READY_WAIT)
        except TimeoutError:
            raise Unavailable(
                f"no node hosts agent type {self._agent_type!r} now: is the mesh up? "
                "Try again once it is"
            ) from None
        run_id = f"run-{uuid.uuid4().hex}"
        with self.store.transaction():
            record = self.store.get(thread_id)
            if record is None:
                if not new_thread:
                    raise NotFound(f"no thread {thread_id!r}")
                self.store.make_room()
                record = model.new_thread(thread_id, time.time())
            model.start_run(
                record,
                run_id=run_id,
                agent_type=self._agent_type,
                content=content,
                max_iterations=max_iterations,
                now=time.time(),
            )
            self.store.put(record)
        task = pb.Task(thread_id=thread_id, content=content, max_iterations=max_iterations)
        running = asyncio.create_task(self._drive(agent, task, run_id))
        self._runs.add(running)
        running.add_done_callback(self._runs.discard)
        self._notify(thread_id)
        return model.summary(record)

    async def rerun(self, thread_id: str) -> ThreadSummary:
        task = model.rerun_task(self._record(thread_id))
        return await self.run(
            thread_id, task["content"], max_iterations=task["max_iterations"], new_thread=False
        )

    async def _drive(self, agent: AgentId, task: pb.Task, run_id: str) -> None:
        started = time.monotonic()
        try:
            result = await self.runtime.send_message(
                task, agent, timeout=self._run_timeout, message_id=run_id
            )
        except Exception as error:  # the thread records how its run ended
            failure = {"code": code_of(error).name, "message": str(error)}
            logger.warning(
                "thread %s: run %s failed after %.1f s: %s: %s",
                agent.key,
                run_id,
                time.monotonic() - started,
                failure["code"],
                failure["message"],
            )
            self._finish(agent.key, run_id, error=failure)
            return
        logger.info(
            "thread %s: run %s completed in %.1f s", agent.key, run_id, time.monotonic() - started
        )
        reply = json_format.MessageToDict(result, preserving_proto_field_name=True)
        self._finish(agent.key, run_id, result=reply)

    def _finish(
        self,
        thread_id: str,
        run_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        with self.store.transaction():
            record = self.store.get(thread_id)
            if record is None:
                return
            closed = model.finish_run(record, run_id, result=result, error=error, now=time.time())
            self.store.put(record)
            self.store.set_approvals(thread_id, closed)
        self._notify(thread_id)

    def _interrupt(self, records: list[dict[str, Any]], why: str) -> None:
        for record in records:
            logger.warning(
                "thread %s: run %s interrupted: %s", record["thread_id"], record["run_id"], why
            )
            error = {"code": "ABORTED", "message": f"{why}; it can run again from the start"}
            with self.store.transaction():
                closed = model.finish_run(
                    record, record["run_id"], error=error, state="interrupted", now=time.time()
                )
                self.store.put(record)
                self.store.set_approvals(record["thread_id"], closed)

    # --- reading ----------------------------------------------------------------------

    def _record(self, thread_id: str) -> dict[str, Any]:
        record = self.store.get(thread_id)
        if record is None:
            raise NotFound(f"no thread {thread_id!r}")
        return record

    async def thread(self, thread_id: str) -> ThreadSummary:
        return model.summary(self._record(thread_id))

    async def threads(self) -> list[ThreadSummary]:
        return [model.summary(r) for r in self.store.recent(1000)]

    async def events(self, thread_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        sent = after
        while True:
            wake = self._wakes.setdefault(thread_id, asyncio.Event())
            batch = self.store.events_after(thread_id, sent, _BATCH)
            for event in batch:
                sent = event["seq"]
                yield event
            if len(batch) < _BATCH:
                await wake.wait()

    def _notify(self, thread_id: str) -> None:
        """Wake every stream following the thread."""
        wake = self._wakes.pop(thread_id, None)
        if wake is not None:
            wake.set()

    # --- events and approvals ------------------------------------------------------

    def record_event(self, event: pb.RunEvent) -> None:
        """Keep a RunEvent the agent published (one delivered twice is kept once)."""
        thread_id = event.thread_id
        with self.store.transaction():
            kept = self.store.add_event(thread_id, event_json(event))
            if kept is None:
                return
            record = self.store.get(thread_id) or model.new_thread(thread_id, time.time())
            changed = model.apply_event(record, kept, time.time())
            self.store.put(record)
            self.store.set_approvals(thread_id, changed)
        self._notify(thread_id)

    async def respond(self, request_id: str, answer: pb.ApprovalAnswer) -> Answered:
        with self.store.transaction():
            found = self.store.approval(request_id)
            model.check_answerable(request_id, found[1] if found else None)
            assert found is not None
            thread_id = found[0]
            model.check_edit(self._record(thread_id)["pending"].get(request_id), answer)
            # Claimed before the promise is resolved: two answers racing get one winner.
            self.store.set_approvals(thread_id, {request_id: "answered"})
        try:
            await self.runtime.resolve_promise(f"approval-{request_id}", answer)
        except AlreadyExists:
            raise AlreadyExists(f"approval request {request_id!r} was answered already") from None
        except BaseException:
            with self.store.transaction():
                self.store.set_approvals(thread_id, {request_id: "pending"})
            raise
        with self.store.transaction():
            record = self._record(thread_id)
            model.answered(record, request_id, time.time())
            self.store.put(record)
        self._notify(thread_id)
        return {"request_id": request_id, "thread_id": thread_id, "accepted": True, "applied": True}


class _EventSink(BaseAgent):
    """Receives the RunEvents of every thread for the service's store."""

    def __init__(self, service: RuntimeThreads) -> None:
        self._service = service

    @message_handler
    async def on_event(self, event: pb.RunEvent, ctx: MessageContext) -> None:
        self._service.record_event(event)
