"""What the server knows of each thread: its events, runs, pending approvals."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from ravi._agent import BaseAgent, message_handler
from ravi._context import MessageContext
from ravi.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from ravi.react.v1 import react_pb2 as pb


def event_json(event: pb.RunEvent) -> dict[str, Any]:
    """A RunEvent as the API shows it: proto3 JSON with field names kept, plus `kind`."""
    data = json_format.MessageToDict(
        event, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    data["seq"] = event.seq  # proto3 JSON writes 64-bit integers as strings
    data["kind"] = event.WhichOneof("kind") or ""
    return data


@dataclass
class Thread:
    """One conversation: its events in order, and the state of its current run."""

    id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    last_seq: int = 0
    running: bool = False
    runs: int = 0
    run_id: str = ""
    title: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> str:
        """idle, running, waiting_for_approval, completed or failed."""
        if self.running:
            return "waiting_for_approval" if self.pending else "running"
        if self.error is not None:
            return "failed"
        return "completed" if self.result is not None else "idle"

    def notify(self) -> None:
        """Wake every stream waiting on this thread."""
        self.updated_at = time.time()
        wake, self.wake = self.wake, asyncio.Event()
        wake.set()

    def summary(self) -> dict[str, Any]:
        return {
            "thread_id": self.id,
            "title": self.title,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "runs": self.runs,
            "last_event_id": self.last_seq,
            "pending_approvals": list(self.pending.values()),
            "result": self.result,
            "error": self.error,
        }


class ThreadStore:
    """ThreadStore keeps the threads in memory, the least recently used evicted past a limit.

    Threads with a run in progress are never evicted; a new thread is refused
    while `max_threads` threads are all running.
    """

    def __init__(self, *, max_threads: int = 1000, max_events: int = 10_000) -> None:
        self._threads: OrderedDict[str, Thread] = OrderedDict()
        self._requests: dict[str, str] = {}  # approval request id -> thread id
        self._answered: set[str] = set()
        self._closed: set[str] = set()  # asked by a run that ended unanswered
        self._max_threads = max_threads
        self._max_events = max_events

    def get(self, thread_id: str) -> Thread:
        thread = self._threads.get(thread_id)
        if thread is None:
            raise NotFound(f"no thread {thread_id!r}")
        return thread

    def threads(self) -> list[Thread]:
        """Every thread, the most recently active first."""
        return list(reversed(self._threads.values()))

    def _thread(self, thread_id: str) -> Thread:
        thread = self._threads.get(thread_id)
        if thread is None:
            self._evict()
            thread = self._threads[thread_id] = Thread(thread_id)
        self._threads.move_to_end(thread_id)
        return thread

    def _evict(self) -> None:
        while len(self._threads) >= self._max_threads:
            idle = next((t for t in self._threads.values() if not t.running), None)
            if idle is None:
                raise ResourceExhausted(
                    f"all {self._max_threads} threads have a run in progress; try again later"
                )
            del self._threads[idle.id]
            for request_id in [r for r, t in self._requests.items() if t == idle.id]:
                del self._requests[request_id]
                self._answered.discard(request_id)
                self._closed.discard(request_id)

    def start_run(self, thread_id: str, run_id: str, content: str) -> Thread:
        """Mark a run started on the thread (created if new).

        Raises:
            FailedPrecondition: the thread has a run in progress.
        """
        thread = self._thread(thread_id)
        if thread.running:
            raise FailedPrecondition(
                f"thread {thread_id!r} has a run in progress ({thread.status}); "
                "wait for it to finish"
            )
        thread.running, thread.result, thread.error = True, None, None
        thread.runs += 1
        thread.run_id = run_id
        thread.title = thread.title or content[:120]
        thread.notify()
        return thread

    def finish_run(
        self,
        thread: Thread,
        run_id: str,
        result: dict[str, Any] | None,
        error: dict[str, str] | None,
    ) -> None:
        """Record how a run ended (once: by its last event or by its reply, which come first)."""
        if thread.run_id != run_id or not thread.running:
            return
        thread.running, thread.result, thread.error = False, result, error
        for request_id in thread.pending:
            self._closed.add(request_id)
        thread.pending.clear()
        thread.notify()

    def add(self, event: pb.RunEvent) -> None:
        """Record an event; one already recorded (the same seq) is ignored."""
        thread = self._thread(event.thread_id)
        if event.seq <= thread.last_seq:
            return
        data = event_json(event)
        thread.last_seq = event.seq
        thread.events.append(data)
        del thread.events[: -self._max_events]
        kind = data["kind"]
        if kind == "approval_request":
            request_id = event.approval_request.request_id
            self._requests[request_id] = thread.id
            thread.pending[request_id] = data
        elif kind == "approval_decision":
            request_id = event.approval_decision.request_id
            self._answered.add(request_id)
            thread.pending.pop(request_id, None)
        elif kind == "final":
            self.finish_run(thread, event.run_id, data["final"], None)
        elif kind == "failed":
            self.finish_run(thread, event.run_id, None, dict(data["failed"]))
        self._threads.move_to_end(thread.id)
        thread.notify()

    def claim(self, request_id: str) -> Thread:
        """Claim the answer to an approval request, before resolving its promise.

        Raises:
            NotFound: no such request (or its thread was evicted).
            AlreadyExists: it was answered already.
        """
        thread_id = self._requests.get(request_id)
        if thread_id is None or thread_id not in self._threads:
            raise NotFound(f"no approval request {request_id!r}")
        if request_id in self._answered:
            raise AlreadyExists(f"approval request {request_id!r} was answered already")
        if request_id in self._closed:
            raise FailedPrecondition(
                f"approval request {request_id!r} is no longer pending: the run that asked ended"
            )
        self._answered.add(request_id)
        return self._threads[thread_id]

    def unclaim(self, request_id: str) -> None:
        """Give a claim back when the answer could not be delivered."""
        self._answered.discard(request_id)


class EventSink(BaseAgent):
    """EventSink receives the RunEvents of every thread for the server's store."""

    def __init__(self, store: ThreadStore) -> None:
        self._store = store

    @message_handler
    async def on_event(self, event: pb.RunEvent, ctx: MessageContext) -> None:
        self._store.add(event)
