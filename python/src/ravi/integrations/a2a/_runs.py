"""What the gateway needs of the server's threads, runs and approvals, in one seam.

The A2A tasks of ReAct agents are runs of the server's thread machinery; this
module is the only place that knows how the server keeps them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ravi.errors import NotFound
from ravi.server import RaviServer
from ravi.server._app import Respond


@dataclass(frozen=True)
class ThreadView:
    """ThreadView is what the gateway knows of a thread at one moment."""

    thread_id: str
    agent_type: str | None
    """The agent type its runs are on, once one published an event."""
    run_id: str
    running: bool
    last_seq: int
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The approval requests waiting, by request id (their RunEvents as JSON)."""


class ThreadRuns(Protocol):
    """ThreadRuns starts runs on threads, follows their events and takes their approvals."""

    async def view(self, thread_id: str) -> ThreadView | None:
        """The thread now, or None when there is no such thread."""

    async def start(self, thread_id: str, content: str, *, run_id: str, agent_type: str) -> None:
        """Start a run of a task on a thread (created if new).

        Raises:
            BadId: the thread id is not a valid agent key.
            FailedPrecondition: the thread has a run in progress.
        """

    async def respond(self, request_id: str, answer: Respond) -> None:
        """Answer a pending approval request, as POST /respond does."""

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run in progress; False when no such run is in progress."""

    def run_events(self, thread_id: str, run_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
        """The run's events after seq `after`, as they come, up to its `final` or `failed`.

        A run that ends without one (its agent type is gone, its deadline
        passed before it began) still ends the iteration with a `failed`.
        """


class ServerRuns:
    """ServerRuns is ThreadRuns over a RaviServer's own store and runs."""

    def __init__(self, server: RaviServer) -> None:
        self._server = server

    async def view(self, thread_id: str) -> ThreadView | None:
        try:
            thread = self._server.store.get(thread_id)
        except NotFound:
            return None
        owner = next(
            (e["agent_type"] for e in reversed(thread.events) if e.get("agent_type")), None
        )
        return ThreadView(
            thread_id=thread.id,
            agent_type=owner,
            run_id=thread.run_id,
            running=thread.running,
            last_seq=thread.last_seq,
            pending=dict(thread.pending),
        )

    async def start(self, thread_id: str, content: str, *, run_id: str, agent_type: str) -> None:
        self._server.launch(thread_id, content, run_id=run_id, agent_type=agent_type)

    async def respond(self, request_id: str, answer: Respond) -> None:
        await self._server.respond(request_id, answer)

    async def cancel(self, run_id: str) -> bool:
        return await self._server.cancel(run_id)

    async def run_events(
        self, thread_id: str, run_id: str, after: int
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            thread = self._server.store.get(thread_id)
        except NotFound:
            yield _ended(run_id, after, {"code": "NOT_FOUND", "message": "the thread is gone"})
            return
        seen = after
        while True:
            wake = thread.wake
            for event in [e for e in thread.events if e["seq"] > seen]:
                seen = event["seq"]
                if event["run_id"] == run_id:
                    yield event
                    if event["kind"] in ("final", "failed"):
                        return
            if thread.run_id != run_id or not thread.running:
                error = thread.error if thread.run_id == run_id else None
                yield _ended(run_id, seen, error or {"code": "UNKNOWN", "message": "the run ended"})
                return
            await wake.wait()


def _ended(run_id: str, seq: int, error: dict[str, str]) -> dict[str, Any]:
    return {"kind": "failed", "failed": error, "run_id": run_id, "seq": seq}
