"""ThreadService: what a front end needs of threads, runs and approvals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from ravi.react.v1 import react_pb2 as pb
from ravi.server._model import Answered, RunSummary, ThreadSummary, ended


class ThreadService(Protocol):
    """ThreadService runs tasks on conversation threads and keeps what happened on them.

    A front end (the HTTP API and its page, the A2A gateway) is written
    against this protocol alone. Two implementations: `RuntimeThreads` runs tasks on
    a LocalRuntime or GrpcRuntime from this process and keeps the threads in
    a `ThreadStore` (SQLite); `RestateThreads` keeps nothing in the process:
    runs, events and approvals live in Restate, so any number of front ends
    can serve the same threads and a restart of one loses nothing.

    Events are `RunEvent`s as JSON (`event_json`), numbered per thread by
    `seq` from 1. A run is one task on a thread, found by its id: the A2A
    gateway shows each as an A2A task (`run_status`, `run_events`, `cancel`).

    Errors are `ravi.errors`: `NotFound` for an unknown thread, run or
    approval request, `FailedPrecondition` for a thread with a run in
    progress, a run that ended or an approval whose run ended,
    `AlreadyExists` for an approval answered already, `Unavailable` when the
    backend cannot be reached.
    """

    async def start(self) -> None:
        """Start serving (the runtime, the connection to Restate)."""

    async def stop(self) -> None:
        """Stop serving. Durable runs go on; runs of this process are interrupted."""

    async def run(
        self,
        thread_id: str,
        content: str,
        *,
        max_iterations: int = 0,
        new_thread: bool = True,
        run_id: str | None = None,
        agent_type: str | None = None,
    ) -> ThreadSummary:
        """Start a run of a task on a thread (created when `new_thread` and missing).

        Returns the thread's status once the run has started; the run goes on
        after this returns.

        Args:
            thread_id: the thread, which is the agent key.
            content: the task.
            max_iterations: model steps at most (0: the agent's own limit).
            new_thread: create the thread when it is missing (else NotFound).
            run_id: the run's id, which is also the Task message's id; a new
                one when None. Starting the same run id twice starts it once.
            agent_type: the ReAct agent type that runs it (the service's own when None).
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

    async def run_status(self, run_id: str) -> RunSummary:
        """One run's status, also once its thread has moved on to later runs."""

    async def runs(self, thread_id: str | None = None) -> list[RunSummary]:
        """The runs of a thread (of every thread when None), the latest first (1,000 at most)."""

    def run_events(
        self, run_id: str, after: int = 0, *, follow: bool = True
    ) -> AsyncIterator[dict[str, Any]]:
        """The run's events with a `seq` above `after`, up to its end.

        The last one is always the run's `final` or `failed`: when the run
        ended without such an event (cancelled, past its deadline, interrupted,
        or its reply arrived before its last event), one is made from its
        summary (`ravi.server._model.ended`), so a follower always learns how
        the run ended, as soon as the service knows it. With `follow`, the
        iteration waits for each new event until then; without, it yields the
        events kept so far and stops.

        Raises:
            NotFound: no such run (on the first iteration).
        """

    async def cancel(self, run_id: str) -> RunSummary:
        """Cancel a run in progress: it ends `failed` with the code CANCELLED at once.

        Its pending approvals close; the agent is told (a durable run is
        cancelled in Restate, the waits and calls it is in included).

        Raises:
            NotFound: no such run.
            FailedPrecondition: the run has ended already.
        """


async def follow_run(
    run: RunSummary,
    after: int,
    *,
    follow: bool,
    events_after: Callable[[int], Awaitable[list[dict[str, Any]]]],
    moved_on: Callable[[int], Awaitable[RunSummary]],
    batch: int,
) -> AsyncIterator[dict[str, Any]]:
    """`ThreadService.run_events` over what a store reads: both implementations follow runs so.

    Args:
        run: the run's summary, read before any of its events.
        after: yield the events with a seq above this.
        follow: wait for new events until the run ends.
        events_after: the thread's events after a seq, `batch` at most.
        moved_on: waits until the thread has events after a seq or the run is
            no longer in progress (at once when so already), then reads the
            run's summary again.
        batch: the most events `events_after` returns.
    """
    run_id = run["run_id"]
    sent = max(after, run["after_event_id"])
    while True:
        events = await events_after(sent)
        for event in events:
            sent = event["seq"]
            if event["run_id"] == run_id:
                yield event
                if event["kind"] in ("final", "failed"):
                    return
        if len(events) == batch:
            continue
        # Read before the events above: an end it shows has its event there, if any.
        last = ended(run, sent)
        if last is not None:
            yield last
            return
        if not follow:
            return
        run = await moved_on(sent)
