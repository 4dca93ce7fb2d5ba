"""The ravi server: starts tasks for HTTP clients, streams their steps, takes approvals."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ravi.agents._react import EVENTS_TOPIC
from ravi.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    InvalidToolCall,
    NotFound,
    RaviError,
    ResourceExhausted,
    Unavailable,
)
from ravi.react.v1 import react_pb2 as pb
from ravi.server._service import ThreadService

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("ravi.server")
request_logger = logging.getLogger("ravi.server.requests")

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
    """RaviServer is the HTTP front of a ThreadService: a web page, the API, live events.

    It streams each thread's events as Server-Sent Events (resuming after
    `Last-Event-ID`), starts tasks and takes the answers to approval cards.
    Everything it shows comes from the service: `RuntimeThreads` for the
    monolith or a client node of a mesh, `RestateThreads` for durable runs
    (then the server itself keeps nothing, and several can serve the same
    threads).

    Args:
        threads: the thread service; the server starts and stops it with the app.
        token: the bearer token every request must carry.
        agent_type: the agent type tasks run on (shown by `GET /info`).
        events_topic: the topic type the agents publish RunEvents on (`GET /info`).
        on_ready: called once the service has started and requests can be served.
    """

    def __init__(
        self,
        threads: ThreadService,
        *,
        token: str,
        agent_type: str = "assistant",
        events_topic: str = EVENTS_TOPIC,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        if not token:
            raise ValueError("the server needs a bearer token")
        self.threads = threads
        self._token = token
        self._agent_type = agent_type
        self._events_topic = events_topic
        self._on_ready = on_ready
        self._stopping = asyncio.Event()
        self.startup_error: RaviError | None = None
        """Why the service did not start, when it did not (uvicorn only logs it)."""
        self.app: ASGIApp = _RequestLog(_BearerAuth(self._starlette(), token))

    def _starlette(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self._page, methods=["GET"]),
                Route("/info", self._info, methods=["GET"]),
                Route("/threads", self._list, methods=["GET"]),
                Route("/threads", self._start, methods=["POST"]),
                Route("/threads/{thread_id}", self._status, methods=["GET"]),
                Route("/threads/{thread_id}/tasks", self._next_task, methods=["POST"]),
                Route("/threads/{thread_id}/rerun", self._rerun, methods=["POST"]),
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

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        try:
            await self.threads.start()
        except RaviError as error:
            self.startup_error = error
            raise
        try:
            if self._on_ready is not None:
                self._on_ready()
            yield
        finally:
            self._stopping.set()
            await self.threads.stop()

    def shutting_down(self) -> None:
        """End the event streams now: the server is stopping and waits for its connections."""
        self._stopping.set()

    # --- endpoints -----------------------------------------------------------------

    async def _page(self, _request: Request) -> Response:
        page = resources.files("ravi.server").joinpath("_static/index.html").read_text()
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    async def _info(self, _request: Request) -> Response:
        return JSONResponse({"agent_type": self._agent_type, "events_topic": self._events_topic})

    async def _list(self, _request: Request) -> Response:
        return JSONResponse({"threads": await self.threads.threads()})

    async def _start(self, request: Request) -> Response:
        body = StartTask.model_validate(await _json(request))
        summary = await self.threads.run(
            body.thread_id or uuid.uuid4().hex,
            body.content,
            max_iterations=body.max_iterations,
        )
        return JSONResponse(summary, status_code=202)

    async def _next_task(self, request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        body = StartTask.model_validate(await _json(request))
        if body.thread_id not in (None, thread_id):
            raise FailedPrecondition(
                f"the body names thread {body.thread_id!r}, the path {thread_id!r}"
            )
        summary = await self.threads.run(
            thread_id, body.content, max_iterations=body.max_iterations, new_thread=False
        )
        return JSONResponse(summary, status_code=202)

    async def _rerun(self, request: Request) -> Response:
        summary = await self.threads.rerun(request.path_params["thread_id"])
        return JSONResponse(summary, status_code=202)

    async def _status(self, request: Request) -> Response:
        return JSONResponse(await self.threads.thread(request.path_params["thread_id"]))

    async def _events(self, request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        after = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        if not after.isdigit():
            return _problem(422, f"Last-Event-ID (or after) must be an event id, got {after!r}")
        await self.threads.thread(thread_id)  # 404 before the stream starts
        return EventSourceResponse(self._stream(thread_id, int(after)), ping=15)

    async def _stream(self, thread_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
        """The thread's events after `after`, then each new one, until the server stops."""
        events = self.threads.events(thread_id, after)
        stopping = asyncio.ensure_future(self._stopping.wait())
        following: asyncio.Future[dict[str, Any]] | None = None
        try:
            while True:
                following = asyncio.ensure_future(anext(events))
                await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    return
                event = following.result()
                following = None
                yield {"id": str(event["seq"]), "event": event["kind"], "data": json.dumps(event)}
        finally:
            stopping.cancel()
            if following is not None and not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following
            closing = getattr(events, "aclose", None)
            if closing is not None:
                await closing()

    async def _respond(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        answer = Respond.model_validate(await _json(request)).answer()
        answered = await self.threads.respond(request_id, answer)
        return JSONResponse(answered, status_code=200 if answered["applied"] else 202)


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
    if isinstance(error, InvalidToolCall) and error.problems:
        # Edited arguments that do not validate: listed as a body that does not
        # validate is, each problem located in the body's `arguments`.
        problems = [{"loc": ["arguments", *where], "msg": what} for where, what in error.problems]
        return JSONResponse({"error": problems, "code": error.code.name}, status_code=status)
    return JSONResponse({"error": str(error), "code": error.code.name}, status_code=status)


async def _bad_json(_request: Request, error: Exception) -> Response:
    return _problem(422, str(error))


async def _invalid(_request: Request, error: Exception) -> Response:
    assert isinstance(error, ValidationError)
    return _problem(422, error.errors(include_url=False, include_context=False))


_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # The approval buttons must not be clickable through another site's frame.
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}


class _RequestLog:
    """One line per request once its answer starts: method, path, status, time taken.

    The path's `token` query parameter is masked: logs are read by more
    people than the token is meant for.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        logged = False

        async def logging_send(message: Message) -> None:
            nonlocal logged
            if message["type"] == "http.response.start" and not logged:
                logged = True
                _log_request(scope, message["status"], started)
            await send(message)

        try:
            await self._app(scope, receive, logging_send)
        except Exception:
            if not logged:
                _log_request(scope, 500, started)
            raise


def _log_request(scope: Scope, status: int, started: float) -> None:
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        masked = ["token=***" if part.startswith("token=") else part for part in query.split("&")]
        query = "?" + "&".join(masked)
    client = scope.get("client")
    where = f" from {client[0]}" if client else ""
    request_logger.info(
        "%s %s%s %d %.1f ms%s",
        scope["method"],
        scope.get("path", ""),
        query,
        status,
        (time.perf_counter() - started) * 1000,
        where,
    )


class _BearerAuth:
    """Every API request needs `Authorization: Bearer <token>`; the page, `GET /`, does not.

    The page holds no data: it takes the token from `?token=` (or asks for
    it), keeps it in the tab's sessionStorage, and sends it as the header on
    every API call.
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
        if scope["path"] == "/" and scope["method"] == "GET":
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token, self._token)
        return False
