"""RestateThreads: threads, runs and approvals that live in Restate; nothing in this process.

Writes go through Restate's ingress to the `ravi.Thread` object the workers
serve (`ravi.server._durable`); reads are SQL on Restate's state through the
admin API, so a page keeps showing threads while every worker is down. Each
write is sent with an idempotency key and then attached to: when no worker
takes it within the timeout, Restate still holds it durably, and the caller
is told it was accepted rather than applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from ravi._ids import AgentId
from ravi._mesh import codec
from ravi._serialization import MessageRegistry, registry
from ravi.errors import FailedPrecondition, NotFound, Unavailable
from ravi.integrations.runtime.restate import RestateSettings, _sql
from ravi.integrations.runtime.restate._errors import error_of_reply
from ravi.react.v1 import react_pb2 as pb
from ravi.server import _model as model
from ravi.server._durable import APPROVAL_PREFIX, EVENT_PREFIX, THREAD, event_key
from ravi.server._model import Answered, ThreadSummary

logger = logging.getLogger("ravi.server.restate")

_BATCH = 500
_LIST_LIMIT = 1000


class RestateThreads:
    """RestateThreads keeps every thread in Restate, so the server holding it keeps nothing.

    Kill the server and start it again, or run several behind one load
    balancer: each shows the same threads, pending approvals and events, and
    any of them takes the answer. A graceful stop leaves every run alone.
    Needs workers that serve `ravi.Thread` (`ravi restate worker` does) and
    the agent type; see docs/restate.md.

    Args:
        settings: Restate's ingress and admin API; `timeout` bounds every request.
        agent_type: the ReAct agent type tasks are sent to.
        run_timeout: seconds a run may take, approvals included; None: no limit.
        poll_interval: seconds between two looks for new events of followed threads.
        apply_wait: seconds a request waits for a worker to apply it; after
            that it is answered as accepted (Restate holds it durably).
        message_registry: encodes approval answers (the same registry as the workers').
    """

    def __init__(
        self,
        settings: RestateSettings,
        *,
        agent_type: str = "assistant",
        run_timeout: float | None = None,
        poll_interval: float = 0.25,
        apply_wait: float = 10.0,
        message_registry: MessageRegistry = registry,
    ) -> None:
        self._settings = settings
        self._ingress = settings.ingress_url.rstrip("/")
        self._admin = settings.admin_url.rstrip("/")
        self._agent_type = agent_type
        self._run_timeout = run_timeout
        self._poll_interval = poll_interval
        self._apply_wait = aiohttp.ClientTimeout(total=apply_wait)
        self._registry = message_registry
        self._http: aiohttp.ClientSession | None = None
        self._watcher: _Watcher | None = None

    async def start(self) -> None:
        """Connect, and check what Restate serves: warn when no worker serves threads yet.

        Raises:
            Unavailable: Restate's admin API cannot be reached.
        """
        self._http = aiohttp.ClientSession(raise_for_status=False)
        try:
            for name in (THREAD, self._agent_type):
                if not await self._service_exists(name):
                    logger.warning(
                        "no Restate deployment serves %s yet: runs start once a worker does "
                        "(`ravi restate worker` serves %s and the demo assistant)",
                        name,
                        THREAD,
                    )
        except BaseException:
            await self.stop()
            raise
        self._watcher = _Watcher(self, self._poll_interval)

    async def stop(self) -> None:
        """Close the connections. Runs are Restate's: none is touched."""
        if self._watcher is not None:
            await self._watcher.close()
            self._watcher = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _service_exists(self, name: str) -> bool:
        url = f"{self._admin}/services/{quote(name, safe='')}"
        try:
            async with self._client().get(url, timeout=self._timeout()) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Unavailable(
                f"Restate's admin API at {self._admin} is unreachable ({error}): "
                "is restate-server running?"
            ) from None
        if status not in (200, 404):
            raise Unavailable(f"Restate's admin API at {self._admin} answered {status}")
        return status == 200

    # --- runs -------------------------------------------------------------------------

    async def run(
        self, thread_id: str, content: str, *, max_iterations: int = 0, new_thread: bool = True
    ) -> ThreadSummary:
        AgentId(self._agent_type, thread_id)  # validates the thread id as a key
        run_id = f"run-{uuid.uuid4().hex}"
        request = {
            **self._run_request(run_id),
            "content": content,
            "max_iterations": max_iterations,
            "create": new_thread,
        }
        reply = await self._invoke(thread_id, "start", request, run_id)
        if reply is None:
            return _submitted(thread_id, run_id, content)
        summary: ThreadSummary = json.loads(reply)
        return summary

    async def rerun(self, thread_id: str) -> ThreadSummary:
        run_id = f"run-{uuid.uuid4().hex}"
        reply = await self._invoke(thread_id, "rerun", self._run_request(run_id), run_id)
        if reply is None:
            return _submitted(thread_id, run_id, "")
        summary: ThreadSummary = json.loads(reply)
        return summary

    def _run_request(self, run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "agent_type": self._agent_type, "timeout": self._run_timeout}

    async def respond(self, request_id: str, answer: pb.ApprovalAnswer) -> Answered:
        rows = await self._query(
            f"SELECT service_key FROM state WHERE service_name = '{THREAD}' "
            f"AND key = {_sql.literal(APPROVAL_PREFIX + request_id)}"
        )
        if not rows:
            raise NotFound(f"no approval request {request_id!r}")
        thread_id = str(rows[0]["service_key"])
        if answer.action == pb.APPROVAL_ACTION_EDIT:
            record = await self._record(thread_id)
            model.check_edit(record["pending"].get(request_id), answer)
        value = codec.encode(self._registry, answer).SerializeToString().hex()
        body = {"request_id": request_id, "value": value}
        reply = await self._invoke(thread_id, "respond", body, f"respond-{uuid.uuid4().hex}")
        if reply is None:
            return {
                "request_id": request_id,
                "thread_id": thread_id,
                "accepted": True,
                "applied": False,
            }
        answered: Answered = json.loads(reply)
        return answered

    async def _invoke(
        self, thread_id: str, handler: str, body: dict[str, Any], idempotency_key: str
    ) -> bytes | None:
        """Send a request to the thread's object, durably; its reply, or None if not yet run.

        Raises:
            the error the handler answered, or Unavailable.
        """
        url = f"{self._ingress}/{THREAD}/{quote(thread_id, safe='')}/{handler}/send"
        headers = {"idempotency-key": idempotency_key}
        try:
            async with self._client().post(
                url, json=body, headers=headers, timeout=self._timeout()
            ) as response:
                data, status = await response.read(), response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Unavailable(
                f"cannot reach Restate's ingress at {self._ingress}: {error}"
            ) from None
        if status == 404:
            raise FailedPrecondition(
                f"no Restate deployment serves {THREAD}, where threads are kept: start "
                "`ravi restate worker` (it serves them) against this Restate server"
            )
        if status not in (200, 202):
            raise error_of_reply(status, data, f"{handler} on thread {thread_id!r}")
        invocation = json.loads(data)["invocationId"]
        attach = f"{self._ingress}/restate/invocation/{invocation}/attach"
        try:
            async with self._client().get(attach, timeout=self._apply_wait) as response:
                data, status = await response.read(), response.status
        except TimeoutError:
            return None  # accepted durably; a worker applies it once one is up
        except aiohttp.ClientError as error:
            raise Unavailable(
                f"cannot reach Restate's ingress at {self._ingress}: {error}"
            ) from None
        if status != 200:
            raise error_of_reply(status, data, f"{handler} on thread {thread_id!r}")
        return data

    # --- reading ----------------------------------------------------------------------

    async def thread(self, thread_id: str) -> ThreadSummary:
        return model.summary(await self._record(thread_id))

    async def _record(self, thread_id: str) -> dict[str, Any]:
        rows = await self._query(
            f"SELECT value_utf8 FROM state WHERE service_name = '{THREAD}' "
            f"AND service_key = {_sql.literal(thread_id)} AND key = 'meta'"
        )
        if not rows:
            raise NotFound(f"no thread {thread_id!r}")
        record: dict[str, Any] = json.loads(rows[0]["value_utf8"])
        return record

    async def threads(self) -> list[ThreadSummary]:
        rows = await self._query(
            f"SELECT value_utf8 FROM state WHERE service_name = '{THREAD}' AND key = 'meta'"
        )
        records = sorted(
            (json.loads(r["value_utf8"]) for r in rows),
            key=lambda record: record["updated_at"],
            reverse=True,
        )
        return [model.summary(r) for r in records[:_LIST_LIMIT]]

    async def _events_after(self, thread_id: str, after: int) -> list[dict[str, Any]]:
        rows = await self._query(
            f"SELECT value_utf8 FROM state WHERE service_name = '{THREAD}' "
            f"AND service_key = {_sql.literal(thread_id)} AND key > '{event_key(after)}' "
            f"AND key < '{EVENT_PREFIX}~' ORDER BY key LIMIT {_BATCH}"
        )
        return [json.loads(r["value_utf8"]) for r in rows]

    async def events(self, thread_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        watcher = self._watcher
        if watcher is None:
            raise Unavailable("the thread service is not started")
        sent = after
        while True:
            try:
                batch = await self._events_after(thread_id, sent)
            except Unavailable as error:
                # Restate is restarting: the stream waits for it rather than ending.
                logger.info("events of %s: %s; trying again", thread_id, error)
                await asyncio.sleep(1.0)
                continue
            for event in batch:
                sent = event["seq"]
                yield event
            if len(batch) < _BATCH:
                await watcher.wait_past(thread_id, sent)

    async def _query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of a query on Restate's state (admin API)."""
        return await _sql.query(self._client(), self._admin, sql, self._settings.timeout)

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise Unavailable("the thread service is not started")
        return self._http

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self._settings.timeout)


class _Watcher:
    """One poller for every event stream of the process: one query per tick, whatever their number.

    It reads the `last_seq` of every followed thread and wakes the streams
    whose thread has events past what they sent.
    """

    def __init__(self, threads: RestateThreads, interval: float) -> None:
        self._threads = threads
        self._interval = interval
        self._waiting: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def wait_past(self, thread_id: str, seq: int) -> None:
        """Return once the thread has an event with a seq above `seq`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seq, waiter)
        self._waiting.setdefault(thread_id, []).append(entry)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())
        try:
            await waiter
        finally:
            waiting = self._waiting.get(thread_id, [])
            if entry in waiting:
                waiting.remove(entry)
            if not waiting:
                self._waiting.pop(thread_id, None)

    async def _poll(self) -> None:
        while self._waiting:
            await asyncio.sleep(self._interval)
            names = ", ".join(_sql.literal(t) for t in list(self._waiting))
            if not names:
                continue
            try:
                rows = await self._threads._query(
                    f"SELECT service_key, value_utf8 FROM state WHERE service_name = '{THREAD}' "
                    f"AND key = 'meta' AND service_key IN ({names})"
                )
            except Unavailable as error:
                logger.debug("watching threads: %s", error)
                continue
            for row in rows:
                last = json.loads(row["value_utf8"])["last_seq"]
                for seq, waiter in self._waiting.get(row["service_key"], []):
                    if last > seq and not waiter.done():
                        waiter.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for waiting in self._waiting.values():
            for _, waiter in waiting:
                waiter.cancel()


def _submitted(thread_id: str, run_id: str, content: str) -> ThreadSummary:
    """What is known of a run Restate holds but no worker has started yet."""
    now = time.time()
    return {
        "thread_id": thread_id,
        "title": content[: model.TITLE_LENGTH],
        "status": "submitted",
        "created_at": now,
        "updated_at": now,
        "runs": 0,
        "run_id": run_id,
        "last_event_id": 0,
        "pending_approvals": [],
        "result": None,
        "error": None,
    }
