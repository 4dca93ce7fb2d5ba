"""ThreadService: what a front end needs of threads, runs and approvals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from ravi.react.v1 import react_pb2 as pb
from ravi.server._model import Answered, ThreadSummary


class ThreadService(Protocol):
    """ThreadService runs tasks on conversation threads and keeps what happened on them.

    A front end (the HTTP API and its page, an A2A gateway) is written against
    this protocol alone. Two implementations: `RuntimeThreads` runs tasks on
    a LocalRuntime or GrpcRuntime from this process and keeps the threads in
    a `ThreadStore` (SQLite); `RestateThreads` keeps nothing in the process:
    runs, events and approvals live in Restate, so any number of front ends
    can serve the same threads and a restart of one loses nothing.

    Events are `RunEvent`s as JSON (`event_json`), numbered per thread by
    `seq` from 1. Errors are `ravi.errors`: `NotFound` for an unknown thread
    or approval request, `FailedPrecondition` for a thread with a run in
    progress or an approval whose run ended, `AlreadyExists` for an approval
    answered already, `Unavailable` when the backend cannot be reached.
    """

    async def start(self) -> None:
        """Start serving (the runtime, the connection to Restate)."""

    async def stop(self) -> None:
        """Stop serving. Durable runs go on; runs of this process are interrupted."""

    async def run(
        self, thread_id: str, content: str, *, max_iterations: int = 0, new_thread: bool = True
    ) -> ThreadSummary:
        """Start a run of a task on a thread (created when `new_thread` and missing).

        Returns the thread's status once the run has started; the run goes on
        after this returns.
        """

    async def rerun(self, thread_id: str) -> ThreadSummary:
        """Run the thread's last task again, after it failed or was interrupted."""

    async def thread(self, thread_id: str) -> ThreadSummary:
        """One thread's status."""

    async def threads(self) -> list[ThreadSummary]:
        """Every thread's status, the most recently updated first (1,000 at most)."""

    def events(self, thread_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The thread's events with a `seq` above `after`, then each new one as it comes.

        Check that the thread exists (`thread`) first: the iterator does not.
        """

    async def respond(self, request_id: str, answer: pb.ApprovalAnswer) -> Answered:
        """Answer an approval request: the run waiting for it goes on."""
