"""A2AAgent: a remote A2A agent as a ravi agent type, callable from any language."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import grpc
import grpc.aio
import httpx
from a2a.client import (
    A2ACardResolver,
    A2AClientError,
    A2AClientTimeoutError,
    AgentCardResolutionError,
    Client,
    ClientCallContext,
    ClientConfig,
    ClientFactory,
)
from a2a.types import (
    CancelTaskRequest,
    ContentTypeNotSupportedError,
    ExtendedAgentCardNotConfiguredError,
    ExtensionSupportRequiredError,
    InternalError,
    InvalidAgentResponseError,
    InvalidParamsError,
    InvalidRequestError,
    Message,
    MethodNotFoundError,
    PushNotificationNotSupportedError,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskNotCancelableError,
    TaskNotFoundError,
    TaskState,
    UnsupportedOperationError,
    VersionNotSupportedError,
)
from a2a.utils.constants import TransportProtocol
from a2a.utils.errors import A2AError

from ravi._agent import BaseAgent, message_handler
from ravi._context import MessageContext
from ravi.a2a.v1 import a2a_pb2 as rpb
from ravi.errors import (
    Cancelled,
    Code,
    DeadlineExceeded,
    FailedPrecondition,
    HandlerFailed,
    InvalidArgument,
    RaviError,
    Unavailable,
    error_for,
)
from ravi.integrations.a2a._parts import from_ravi_parts, to_ravi_artifacts, to_ravi_parts

DEFAULT_TIMEOUT = 60.0
"""Seconds a call may take when the caller set no deadline."""
CANCEL_TIMEOUT = 5.0
"""Seconds the remote agent has to acknowledge a forwarded cancellation."""
_ALL_BINDINGS = (
    TransportProtocol.JSONRPC.value,
    TransportProtocol.GRPC.value,
    TransportProtocol.HTTP_JSON.value,
)
_WAITING = {TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED}
_FINISHED = {
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_CANCELED,
    TaskState.TASK_STATE_REJECTED,
}


class A2AAgent(BaseAgent):
    """A2AAgent stands for a remote A2A agent in the mesh.

    Register it under an agent type with a factory naming the remote agent's
    Agent Card, and any agent, in any language, calls the remote agent with
    `send_message`:

        await A2AAgent.register(runtime, "weather", lambda: A2AAgent(card_url, token=t))
        reply = await runtime.send_message(
            SendRequest(parts=[Part(text="Rain in Oslo?")]), AgentId("weather", "conv-1")
        )

    The agent key is the A2A contextId: one key is one conversation, its calls
    made one at a time. A `ravi.a2a.v1.SendRequest` gets a `SendReply` (a
    completed task's artifacts, or a task waiting for input, to continue with
    `task_id`). A task that fails, is rejected or canceled raises the matching
    ravi error; an unreachable or vanished remote raises `Unavailable`. The
    caller's deadline and cancellation reach the remote (a cancelled call
    cancels the remote task), and so does the W3C trace context.

    Instances of one card share their connections.

    Args:
        card_url: the Agent Card's URL, or the agent's base URL (then the card
            is at /.well-known/agent-card.json under it).
        token: a bearer token for the remote agent.
        headers: more HTTP headers (gRPC metadata) for every call.
        bindings: the protocol bindings to use, in order of preference
            ("JSONRPC", "GRPC", "HTTP+JSON"); None follows the card's order.
        timeout: seconds a call may take when the caller set no deadline.
    """

    def __init__(
        self,
        card_url: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        bindings: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        unknown = set(bindings or ()) - set(_ALL_BINDINGS)
        if unknown:
            raise ValueError(f"unknown A2A bindings {sorted(unknown)}; use {list(_ALL_BINDINGS)}")
        self._remote = _Remote(
            card_url=card_url,
            headers=tuple(sorted({**(headers or {}), **_bearer(token)}.items())),
            bindings=tuple(bindings or ()),
        )
        self._timeout = timeout
        self._connection: _Connection | None = None

    @message_handler
    async def on_send(self, request: rpb.SendRequest, ctx: MessageContext) -> rpb.SendReply:
        """Send a message to the remote agent; the reply is its task or its message."""
        message = Message(
            role=Role.ROLE_USER,
            message_id=ctx.message_id or uuid.uuid4().hex,
            context_id=self.id.key,
            task_id=request.task_id,
            parts=_parts(request),
        )
        if request.HasField("metadata"):
            message.metadata.CopyFrom(request.metadata)
        return await self._call(message, ctx)

    async def _call(self, message: Message, ctx: MessageContext) -> rpb.SendReply:
        remaining = ctx.time_remaining()
        timeout = self._timeout if remaining is None else remaining
        call = ClientCallContext(timeout=timeout, service_parameters=_trace_headers(ctx))
        exchange: _Exchange | None = None
        try:
            async with asyncio.timeout(timeout):
                connection = self._connect()
                exchange = _Exchange(connection, await connection.client(), message, call)
                progress = await exchange.result()
        except TimeoutError:
            if exchange is not None:
                exchange.abandon()
            raise DeadlineExceeded(
                f"the remote A2A agent {self._remote.card_url} did not answer within {timeout:g}s",
                remote=True,
            ) from None
        except asyncio.CancelledError:
            if exchange is not None:
                exchange.abandon()
            raise
        except Exception as error:  # the SDK's and the transports' errors, mapped once
            if exchange is not None:
                exchange.abandon()
            raise _ravi_error(error, self._remote.card_url) from error
        return progress.reply(self._remote.card_url)

    def _connect(self) -> _Connection:
        if self._connection is None:
            self._connection = _Connection.acquire(self._remote)
        return self._connection

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.release()


@dataclass
class _Progress:
    """What a call has seen of the remote task so far."""

    task_id: str = ""
    context_id: str = ""
    state: TaskState = TaskState.TASK_STATE_UNSPECIFIED
    status: Message | None = None
    message: Message | None = None
    task: Task | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)

    def add(self, event: StreamResponse) -> bool:
        """Take one event; True once the task finished or waits (or a message came)."""
        kind = event.WhichOneof("payload")
        if kind == "message":
            self.message = event.message
            self.context_id = event.message.context_id
            return True
        if kind == "task":
            task = event.task
            self.task, self.task_id, self.context_id = task, task.id, task.context_id
            for artifact in task.artifacts:
                self.artifacts[artifact.artifact_id] = artifact
            self._status(
                task.status.state, task.status.message if task.status.HasField("message") else None
            )
        elif kind == "status_update":
            status_update = event.status_update
            self.task_id, self.context_id = status_update.task_id, status_update.context_id
            status = status_update.status
            self._status(status.state, status.message if status.HasField("message") else None)
        elif kind == "artifact_update":
            artifact_update = event.artifact_update
            self.task_id = artifact_update.task_id
            artifact = artifact_update.artifact
            if artifact_update.append and artifact.artifact_id in self.artifacts:
                self.artifacts[artifact.artifact_id].parts.extend(artifact.parts)
            else:
                self.artifacts[artifact.artifact_id] = artifact
        return self.state in _WAITING or self.state in _FINISHED

    def _status(self, state: TaskState, message: Message | None) -> None:
        self.state = state
        if message is not None:
            self.status = message

    def reply(self, where: str) -> rpb.SendReply:
        """The reply for the caller, or the ravi error for a task that did not complete."""
        status_text = _text(self.status.parts) if self.status is not None else ""
        if self.state == TaskState.TASK_STATE_FAILED:
            raise _task_failure(self.status, f"the remote task {self.task_id} failed", status_text)
        if self.state == TaskState.TASK_STATE_REJECTED:
            raise FailedPrecondition(
                f"the remote agent rejected task {self.task_id}: {status_text}", remote=True
            )
        if self.state == TaskState.TASK_STATE_CANCELED:
            raise Cancelled(f"the remote task {self.task_id} was canceled", remote=True)
        if self.message is None and not (self.state in _WAITING or self.state in _FINISHED):
            raise Unavailable(
                f"the remote A2A agent {where} ended the stream before task "
                f"{self.task_id or '(none)'} finished",
                remote=True,
            )
        parts = list(self.message.parts) if self.message is not None else []
        if self.state in _WAITING and self.status is not None:
            parts = list(self.status.parts)
        artifacts = to_ravi_artifacts(self.artifacts.values())
        texts = [_text(a.parts) for a in self.artifacts.values()] + [_text(parts)]
        return rpb.SendReply(
            task_id=self.task_id,
            context_id=self.context_id,
            state=int(self.state),  # type: ignore[arg-type]  # the same numbers, by design
            artifacts=artifacts,
            message=to_ravi_parts(parts),
            text="\n".join(t for t in texts if t),
        )


def _task_failure(status: Message | None, fallback: str, text: str) -> RaviError:
    """The error of a failed remote task: the ravi code it carries, if a ravi gateway sent it."""
    for part in status.parts if status is not None else ():
        if part.HasField("data"):
            data = part.data.struct_value
            code = data.fields.get("code")
            if code is not None and code.string_value in Code.__members__:
                reason = data.fields.get("reason")
                message = data.fields.get("message")
                return error_for(
                    Code[code.string_value],
                    message.string_value if message is not None else fallback,
                    reason=reason.string_value if reason is not None else None,
                    remote=True,
                )
    return HandlerFailed(f"{fallback}: {text}" if text else fallback, remote=True)


_BY_A2A_ERROR: dict[type[A2AError], Code] = {
    TaskNotFoundError: Code.NOT_FOUND,
    TaskNotCancelableError: Code.FAILED_PRECONDITION,
    UnsupportedOperationError: Code.FAILED_PRECONDITION,
    InvalidParamsError: Code.INVALID_ARGUMENT,
    InvalidRequestError: Code.INVALID_ARGUMENT,
    ContentTypeNotSupportedError: Code.INVALID_ARGUMENT,
    MethodNotFoundError: Code.UNIMPLEMENTED,
    PushNotificationNotSupportedError: Code.UNIMPLEMENTED,
    VersionNotSupportedError: Code.FAILED_PRECONDITION,
    ExtensionSupportRequiredError: Code.FAILED_PRECONDITION,
    ExtendedAgentCardNotConfiguredError: Code.FAILED_PRECONDITION,
    InternalError: Code.INTERNAL,
    InvalidAgentResponseError: Code.INTERNAL,
}
_BY_HTTP_STATUS = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    408: Code.DEADLINE_EXCEEDED,
    429: Code.RESOURCE_EXHAUSTED,
    502: Code.UNAVAILABLE,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}


def _ravi_error(error: Exception, where: str) -> RaviError:
    """The ravi error for what the A2A client raised: by the A2A error, HTTP status or gRPC code."""
    message = f"the remote A2A agent {where}: {error}"
    if isinstance(error, A2AClientTimeoutError):
        code = Code.DEADLINE_EXCEEDED
    elif isinstance(error, AgentCardResolutionError) and error.status_code is not None:
        code = _BY_HTTP_STATUS.get(error.status_code, Code.UNAVAILABLE)
    elif isinstance(error, A2AError) and type(error) in _BY_A2A_ERROR:
        code = _BY_A2A_ERROR[type(error)]
    else:
        code = _code_of_cause(error)
    return error_for(code, message, remote=True)


def _code_of_cause(error: Exception) -> Code:
    """The code of the transport failure under an A2A client error."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, grpc.aio.AioRpcError):
            number = cause.code().value[0]
            return Code(number) if number in Code._value2member_map_ else Code.UNKNOWN
        if isinstance(cause, httpx.HTTPStatusError):
            status = cause.response.status_code
            default = Code.UNAVAILABLE if status >= 500 else Code.UNKNOWN
            return _BY_HTTP_STATUS.get(status, default)
        if isinstance(cause, httpx.TimeoutException):
            return Code.DEADLINE_EXCEEDED
        if isinstance(cause, (httpx.TransportError, ConnectionError)):
            return Code.UNAVAILABLE
        cause = cause.__cause__ or cause.__context__
    # What is left is a broken exchange (a stream cut short, a body that is not
    # JSON), or something the client itself raised.
    return Code.UNAVAILABLE if isinstance(error, A2AClientError) else Code.UNKNOWN


@dataclass(frozen=True)
class _Remote:
    """Where a remote agent is and how to call it: the key of its shared connection."""

    card_url: str
    headers: tuple[tuple[str, str], ...]
    bindings: tuple[str, ...]


class _Connection:
    """One remote agent's card and client, shared by the A2AAgent instances of an event loop."""

    _open: ClassVar[dict[tuple[asyncio.AbstractEventLoop, _Remote], _Connection]] = {}

    def __init__(self, remote: _Remote) -> None:
        self._remote = remote
        self._users = 0
        self._client: Client | None = None
        self._http: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def acquire(cls, remote: _Remote) -> _Connection:
        key = (asyncio.get_running_loop(), remote)
        connection = cls._open.get(key)
        if connection is None:
            connection = cls._open[key] = _Connection(remote)
        connection._users += 1
        return connection

    async def release(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        self._open.pop((asyncio.get_running_loop(), self._remote), None)
        if self._background:
            await asyncio.wait(self._background, timeout=2 * CANCEL_TIMEOUT)
        if self._client is not None:
            await self._client.close()
        if self._http is not None:
            await self._http.aclose()

    async def client(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._connect()
        return self._client

    async def _connect(self) -> Client:
        remote = self._remote
        self._http = httpx.AsyncClient(headers=dict(remote.headers))
        base, path = _card_location(remote.card_url)
        card = await A2ACardResolver(self._http, base).get_agent_card(relative_card_path=path)
        config = ClientConfig(
            streaming=True,
            httpx_client=self._http,
            grpc_channel_factory=_channel,
            supported_protocol_bindings=list(remote.bindings or _ALL_BINDINGS),
            use_client_preference=bool(remote.bindings),
        )
        return ClientFactory(config).create(card)

    def keep(self, task: asyncio.Task[None]) -> None:
        """Keep a background task (a stream being wound down) until it ends."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def cancel(self, task_id: str) -> None:
        """Cancel a remote task, best effort: the caller has its error already."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                client.cancel_task(
                    CancelTaskRequest(id=task_id),
                    context=ClientCallContext(timeout=CANCEL_TIMEOUT),
                ),
                CANCEL_TIMEOUT,
            )


class _Exchange:
    """One message's stream of events, read by a task of its own.

    The stream outlives a caller that gives up: when the caller's deadline
    passes or it cancels before the remote task's id arrived, the stream is
    read on until it does, so that the remote task can be cancelled.
    """

    def __init__(
        self, connection: _Connection, client: Client, message: Message, call: ClientCallContext
    ) -> None:
        self.progress = _Progress()
        self._connection = connection
        self._known = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read(client, message, call))

    async def _read(self, client: Client, message: Message, call: ClientCallContext) -> None:
        stream = cast(
            "AsyncGenerator[StreamResponse, None]",
            client.send_message(SendMessageRequest(message=message), context=call),
        )
        try:
            async for event in stream:
                finished = self.progress.add(event)
                if self.progress.task_id:
                    self._known.set()
                if finished:
                    break
        finally:
            self._known.set()
            await stream.aclose()

    async def result(self) -> _Progress:
        """The progress once the task finished or waits; raises what the stream raised."""
        await asyncio.shield(self._reader)
        return self.progress

    def abandon(self) -> None:
        """The caller gave up: cancel the remote task (once its id is known), in the background."""
        self._connection.keep(asyncio.get_running_loop().create_task(self._wind_down()))

    async def _wind_down(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._known.wait(), CANCEL_TIMEOUT)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        progress = self.progress
        if progress.task_id and progress.state not in _FINISHED:
            await self._connection.cancel(progress.task_id)


def _card_location(card_url: str) -> tuple[str, str]:
    """The base URL and the card's path under it, for A2ACardResolver."""
    if card_url.endswith(".json"):
        return card_url, "/"
    return card_url, "/.well-known/agent-card.json"


def _channel(url: str) -> grpc.aio.Channel:
    target = url.removeprefix("grpc://").removeprefix("http://")
    return grpc.aio.insecure_channel(target)


def _parts(request: rpb.SendRequest) -> list[Any]:
    if not request.parts:
        raise InvalidArgument("a ravi.a2a.v1.SendRequest needs at least one part")
    return from_ravi_parts(request.parts)


def _text(parts: Any) -> str:
    return "\n".join(p.text for p in parts if p.HasField("text") and p.text)


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _trace_headers(ctx: MessageContext) -> dict[str, str]:
    """The W3C trace context for the remote call: the current span's, else the caller's."""
    carrier: dict[str, str] = {}
    try:
        from opentelemetry import propagate  # noqa: PLC0415 - tracing is an optional extra
    except ImportError:
        pass
    else:
        propagate.inject(carrier)
    if "traceparent" not in carrier:
        for name in ("traceparent", "tracestate"):
            if name in ctx.metadata:
                carrier[name] = ctx.metadata[name]
    return carrier
