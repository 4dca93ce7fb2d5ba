"""The ravi server: runs ReAct agents for HTTP clients, streams their steps, takes approvals."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any, Literal

from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ravi._ids import AgentId
from ravi._subscriptions import TypeSubscription
from ravi.agents._react import EVENTS_TOPIC
from ravi.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RaviError,
    ResourceExhausted,
    Unavailable,
    code_of,
)
from ravi.integrations.runtime.grpc import GrpcRuntime
from ravi.react.v1 import react_pb2 as pb
from ravi.runtime._base import BaseRuntime
from ravi.server._threads import EventSink, Thread, ThreadStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("ravi.server")

SINK_TYPE = "ravi.server.events"
_STATUS: dict[type[RaviError], int] = {
    NotFound: 404,
    AlreadyExists: 409,
    FailedPrecondition: 409,
    InvalidArgument: 422,
    ResourceExhausted: 429,
    Unavailable: 503,
    DeadlineExceeded: 504,
}


class StartTask(BaseModel):
    """The body of POST /threads and POST /threads/{id}/tasks."""

    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1, max_length=100_000)
    thread_id: str | None = Field(default=None, min_length=1, max_length=128)
    max_iterations: int = Field(default=0, ge=0, le=1000)

    @field_validator("thread_id")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("thread_id must be printable")
        return value


class Respond(BaseModel):
    """The body of POST /respond/{request_id}."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["approve", "reject", "edit"]
    arguments: dict[str, Any] | None = None
    reason: str = Field(default="", max_length=10_000)
    answered_by: str = Field(default="", max_length=200)

    @model_validator(mode="after")
    def _edit_has_arguments(self) -> Respond:
        if self.action == "edit" and self.arguments is None:
            raise ValueError("an edit needs the new arguments")
        return self

    def answer(self) -> pb.ApprovalAnswer:
        return pb.ApprovalAnswer(
            action={
                "approve": pb.APPROVAL_ACTION_APPROVE,
                "reject": pb.APPROVAL_ACTION_REJECT,
                "edit": pb.APPROVAL_ACTION_EDIT,
            }[self.action],
            arguments_json=json.dumps(self.arguments) if self.arguments is not None else "",
            reason=self.reason,
            answered_by=self.answered_by,
        )


class RaviServer:
    """RaviServer runs tasks on a ReAct agent type of a runtime, for HTTP clients.

    It subscribes to the agents' RunEvents, keeps each thread's events, streams
    them as Server-Sent Events and resolves approval promises. The runtime may
    be a LocalRuntime hosting the agents (the monolith) or a GrpcRuntime that
    joins a mesh where they run.

    Args:
        runtime: the runtime; the server starts and stops it with the app.
        token: the bearer token every request must carry.
        agent_type: the ReAct agent type tasks are sent to.
        run_timeout: seconds a run may take, approvals included.
        events_topic: the topic type the agents publish RunEvents on.
        max_threads: threads kept in memory.
        on_ready: called once the runtime has started and requests can be served.
    """

    def __init__(
        self,
        runtime: BaseRuntime,
        *,
        token: str,
        agent_type: str = "assistant",
        run_timeout: float = 3600.0,
        events_topic: str = EVENTS_TOPIC,
        max_threads: int = 1000,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        if not token:
            raise ValueError("the server needs a bearer token")
        self.runtime = runtime
        self.store = ThreadStore(max_threads=max_threads)
        self._token = token
        self._agent_type = agent_type
        self._run_timeout = run_timeout
        self._events_topic = events_topic
        self._runs: dict[str, asyncio.Task[None]] = {}  # run id -> the run
        self._stopping = False
        self._on_ready = on_ready
        self.startup_error: RaviError | None = None
        """Why the runtime did not start, when it did not (uvicorn only logs it)."""
        self.app: ASGIApp = _BearerAuth(self._starlette(), token)

    @property
    def token(self) -> str:
        """The bearer token requests need (the A2A gateway asks its callers for it too)."""
        return self._token

    def _starlette(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self._page, methods=["GET"]),
                Route("/info", self._info, methods=["GET"]),
                Route("/threads", self._list, methods=["GET"]),
                Route("/threads", self._start, methods=["POST"]),
                Route("/threads/{thread_id}", self._status, methods=["GET"]),
                Route("/threads/{thread_id}/tasks", self._next_task, methods=["POST"]),
                Route("/threads/{thread_id}/events", self._events, methods=["GET"]),
                Route("/respond/{request_id}", self._respond, methods=["POST"]),
            ],
            exception_handlers={
                RaviError: _ravi_error,
                ValidationError: _invalid,
                _BadJson: _bad_json,
            },
            lifespan=self._lifespan,
        )

    def _lifespan(self, _app: Starlette) -> contextlib.AbstractAsyncContextManager[None]:
        return self.serving()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Start the runtime and receive run events until the context exits.

        The app's lifespan enters it; an app that mounts this server's
        endpoints under its own lifespan (the A2A gateway) enters it there.
        """
        store = self.store
        await EventSink.register(self.runtime, SINK_TYPE, lambda: EventSink(store))
        await self.runtime.add_subscription(TypeSubscription(self._events_topic, SINK_TYPE))
        try:
            await self.runtime.start()
        except RaviError as error:
            self.startup_error = error
            raise
        try:
            if isinstance(self.runtime, GrpcRuntime):
                # A client node learns the mesh's routes once its peers answered.
                try:
                    await self.runtime.wait_for_route(self._agent_type, timeout=15)
                except TimeoutError:
                    logger.warning(
                        "no peer hosts agent type %r yet; runs fail until one does",
                        self._agent_type,
                    )
            if self._on_ready is not None:
                self._on_ready()
            try:
                yield
            finally:
                self._stopping = True
                runs = list(self._runs.values())
                for run in runs:
                    run.cancel()
                await asyncio.gather(*runs, return_exceptions=True)
        finally:
            await self.runtime.stop()

    # --- endpoints -----------------------------------------------------------------

    async def _page(self, _request: Request) -> Response:
        page = resources.files("ravi.server").joinpath("_static/index.html").read_text()
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def _info(self, _request: Request) -> Response:
        return JSONResponse({"agent_type": self._agent_type, "events_topic": self._events_topic})

    async def _list(self, _request: Request) -> Response:
        return JSONResponse({"threads": [t.summary() for t in self.store.threads()]})

    async def _start(self, request: Request) -> Response:
        body = StartTask.model_validate(await _json(request))
        thread = self.launch(body.thread_id or uuid.uuid4().hex, body.content, body.max_iterations)
        return JSONResponse(thread.summary(), status_code=202)

    async def _next_task(self, request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        self.store.get(thread_id)
        body = StartTask.model_validate(await _json(request))
        if body.thread_id not in (None, thread_id):
            raise FailedPrecondition(
                f"the body names thread {body.thread_id!r}, the path {thread_id!r}"
            )
        thread = self.launch(thread_id, body.content, body.max_iterations)
        return JSONResponse(thread.summary(), status_code=202)

    def launch(
        self,
        thread_id: str,
        content: str,
        max_iterations: int = 0,
        *,
        run_id: str | None = None,
        agent_type: str | None = None,
    ) -> Thread:
        """Start a run of a task on a thread (created if new) and return the thread.

        Args:
            thread_id: the thread; the agent key.
            content: the task's request.
            max_iterations: model steps at most (0: the agent's own limit).
            run_id: the run's id (the Task's message id); generated when None.
            agent_type: the ReAct agent type to run it on (the server's own when None).

        Raises:
            BadId: the thread id is not a valid agent key.
            FailedPrecondition: the thread has a run in progress.
        """
        agent = AgentId(agent_type or self._agent_type, thread_id)  # validates the key
        run_id = run_id or f"run-{uuid.uuid4().hex}"
        thread = self.store.start_run(thread_id, run_id, content)
        task = pb.Task(thread_id=thread_id, content=content, max_iterations=max_iterations)
        run = asyncio.create_task(self._run(thread, agent, task, run_id))
        self._runs[run_id] = run
        run.add_done_callback(lambda _: self._runs.pop(run_id, None))
        return thread

    async def cancel(self, run_id: str, *, timeout: float = 10.0) -> bool:
        """Cancel a run in progress and wait (up to `timeout` seconds) until it ended.

        The runtime carries the cancellation to the agent. Returns False when
        no run with this id is in progress here.
        """
        run = self._runs.get(run_id)
        if run is None:
            return False
        run.cancel()
        await asyncio.wait([run], timeout=timeout)
        return True

    async def _run(self, thread: Thread, agent: AgentId, task: pb.Task, run_id: str) -> None:
        store = self.store
        try:
            result = await self.runtime.send_message(
                task, agent, timeout=self._run_timeout, message_id=run_id
            )
        except Exception as error:  # the thread records how its run ended
            failure = {"code": code_of(error).name, "message": str(error)}
            store.finish_run(thread, run_id, None, failure)
            return
        except asyncio.CancelledError:
            reason = "the server stopped" if self._stopping else "the run was cancelled"
            store.finish_run(thread, run_id, None, {"code": "CANCELLED", "message": reason})
            raise
        reply = json_format.MessageToDict(result, preserving_proto_field_name=True)
        store.finish_run(thread, run_id, reply, None)

    async def _status(self, request: Request) -> Response:
        return JSONResponse(self.store.get(request.path_params["thread_id"]).summary())

    async def _events(self, request: Request) -> Response:
        thread = self.store.get(request.path_params["thread_id"])
        after = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        if not after.isdigit():
            return _problem(422, f"Last-Event-ID (or after) must be an event id, got {after!r}")
        return EventSourceResponse(_sse(self.events(thread.id, int(after))), ping=15)

    async def events(self, thread_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The thread's events after `after` (a seq), then each new one as it comes; endless.

        Raises:
            NotFound: no such thread.
        """
        thread = self.store.get(thread_id)
        sent = after
        while True:
            wake = thread.wake
            for event in [e for e in thread.events if e["seq"] > sent]:
                sent = event["seq"]
                yield event
            await wake.wait()

    async def _respond(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        thread = self.store.claim(request_id)
        try:
            body = Respond.model_validate(await _json(request))
        except BaseException:
            self.store.unclaim(request_id)
            raise
        self.store.unclaim(request_id)
        thread = await self.respond(request_id, body)
        return JSONResponse({"request_id": request_id, "thread_id": thread.id, "accepted": True})

    async def respond(self, request_id: str, body: Respond) -> Thread:
        """Answer a pending approval request (what POST /respond/{request_id} does).

        Raises:
            NotFound: no such request.
            AlreadyExists: it was answered already.
            FailedPrecondition: the run that asked ended.
        """
        thread = self.store.claim(request_id)
        try:
            await self.runtime.resolve_promise(f"approval-{request_id}", body.answer())
        except AlreadyExists:
            raise AlreadyExists(f"approval request {request_id!r} was answered already") from None
        except BaseException:
            self.store.unclaim(request_id)
            raise
        thread.pending.pop(request_id, None)
        thread.notify()
        return thread


async def _sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    async for event in events:
        yield {"id": str(event["seq"]), "event": event["kind"], "data": json.dumps(event)}


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _BadJson(f"the body is not JSON: {error}") from None


class _BadJson(ValueError):
    pass


def _problem(status: int, detail: Any) -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=status)


async def _ravi_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, RaviError)
    status = next((s for cls, s in _STATUS.items() if isinstance(error, cls)), 500)
    return JSONResponse({"error": str(error), "code": error.code.name}, status_code=status)


async def _bad_json(_request: Request, error: Exception) -> Response:
    return _problem(422, str(error))


async def _invalid(_request: Request, error: Exception) -> Response:
    assert isinstance(error, ValidationError)
    return _problem(422, error.errors(include_url=False, include_context=False))


class _BearerAuth:
    """Every request needs `Authorization: Bearer <token>`; the page may take `?token=` instead.

    The page reads its token from the address and sends it as a header on every
    API call, so the token is asked of the one request a browser makes on its own.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self._app(scope, receive, send)
            return
        response = JSONResponse(
            {"error": "missing or wrong bearer token"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="ravi"'},
        )
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token, self._token)
        if scope["path"] == "/" and scope["method"] == "GET":
            request = Request(scope)
            token = request.query_params.get("token", "").encode()
            return hmac.compare_digest(token, self._token)
        return False
