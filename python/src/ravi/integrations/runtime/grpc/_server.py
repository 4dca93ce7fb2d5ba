"""GrpcServer: a mesh node served over grpc.aio, with health, reflection, TLS and tokens.

`AgentService` implements ravi.mesh.v1.AgentService by calling the node's
`NodeHandler`; a `RaviError` becomes a gRPC status with ErrorInfo on unary
calls and a `CallFailure` on a Connect frame (both through `ravi.errors`), and
so does any other exception, so a caller always gets an outcome.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from ravi._mesh.codec import is_trace_key
from ravi._mesh.transport import NodeHandler
from ravi.errors import Unavailable, to_call_failure, to_grpc_status
from ravi.integrations.runtime.grpc._security import BearerAuth, TlsConfig
from ravi.integrations.runtime.grpc._transport import channel_options
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc

logger = logging.getLogger("ravi.grpc")

SERVICE_NAME: str = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_CHUNK = 16
"""Frames handled before yielding to the loop, to pipeline big batches."""

Context = grpc.aio.ServicerContext[Any, Any]


def trace_context(context: Context) -> dict[str, str]:
    """The W3C trace context a unary call or stream carries in its gRPC metadata."""
    return {
        key: value
        for key, value in context.invocation_metadata() or ()
        if is_trace_key(key) and isinstance(value, str)
    }


class GrpcServer:
    """GrpcServer serves one node: AgentService, grpc.health.v1 and reflection (v1, v1alpha).

    Args:
        node: what AgentService calls.
        host: the interface to listen on.
        port: the port (0: any free one; `port` is the real one once started).
        token: the bearer token every call must present, if any.
        health_without_auth: let health checks through without the token.
        tls: serve TLS (mutual when `tls.ca_file` is set).
        max_message_bytes: the largest message accepted or sent.
    """

    def __init__(
        self,
        node: NodeHandler,
        *,
        host: str,
        port: int,
        token: str | None,
        health_without_auth: bool,
        tls: TlsConfig | None,
        max_message_bytes: int,
    ) -> None:
        self._node = node
        self._host = host
        self.port = port
        self._token = token
        self._health_without_auth = health_without_auth
        self._tls = tls
        self._max_message_bytes = max_message_bytes
        self._server: grpc.aio.Server | None = None
        self._service = AgentService(node)
        self._health = HealthServicer()

    async def start(self) -> None:
        credentials = self._tls.server_credentials() if self._tls is not None else None
        _check_bindable(self._host, self.port)
        options = [
            *channel_options(self._max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),
        ]
        interceptors = (
            [BearerAuth(self._token, health_without_auth=self._health_without_auth)]
            if self._token
            else []
        )
        server = grpc.aio.server(options=options, interceptors=interceptors)
        agent_service_pb2_grpc.add_AgentServiceServicer_to_server(self._service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
            _REFLECTION_V1,
        )
        reflector = ReflectionServicer(names)
        reflection.enable_server_reflection(names, server)
        # grpcio-reflection registers v1alpha only; v1 has the same messages on
        # the wire, so the same servicer answers under the v1 name.
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    _REFLECTION_V1,
                    {
                        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                            reflector.ServerReflectionInfo,
                            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                        )
                    },
                ),
            )
        )
        target = f"{self._host}:{self.port}"
        try:
            if credentials is not None:
                port = server.add_secure_port(target, credentials)
            else:
                port = server.add_insecure_port(target)
        except RuntimeError as error:  # grpcio's "Failed to bind", when the probe raced
            await server.stop(None)
            raise Unavailable(f"cannot listen on {target}: {error}") from None
        self.port = port
        await server.start()
        self._server = server
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def enter_graceful_shutdown(self) -> None:
        """Health says NOT_SERVING and Connect streams take no new calls."""
        await self._health.enter_graceful_shutdown()
        self._service.drain()

    async def stop(self, grace: float) -> None:
        """Stop, giving the calls in flight `grace` seconds to finish."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


def _check_bindable(host: str, port: int) -> None:
    """Fail with the operating system's reason when `host:port` cannot be listened on.

    grpcio only says "Failed to bind" (and logs a line of its C core to stderr);
    binding a probe socket first names the cause: the port is taken, the
    address is not this machine's, the port needs privileges.
    """
    target = f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(
            host.removeprefix("[").removesuffix("]"),
            port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as error:
        raise Unavailable(f"cannot listen on {target}: {error.strerror}") from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # As grpcio does: a port whose last connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                reason = (error.strerror or str(error)).lower()
                raise Unavailable(f"cannot listen on {target}: {reason}") from None


class _ConnectSession:
    """One Connect stream: Send calls in flight, answered in any order."""

    def __init__(self, node: NodeHandler, trace: dict[str, str], draining: bool) -> None:
        self._node = node
        self._trace = trace
        self._outcomes: list[agent_service_pb2.CallOutcome] = []
        self._ready = asyncio.Event()
        self._ended = False
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._draining = draining

    async def run(
        self, requests: AsyncIterator[agent_service_pb2.ConnectRequest]
    ) -> AsyncIterator[agent_service_pb2.ConnectResponse]:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                if self._outcomes:
                    # Outcomes that are ready together go out as one message.
                    batch, self._outcomes = self._outcomes, []
                    yield agent_service_pb2.ConnectResponse(calls=batch)
                if self._ended and not self._outcomes:
                    return
        finally:
            reader.cancel()
            for task in list(self._calls.values()):
                task.cancel()

    def drain(self) -> None:
        self._draining = True
        asyncio.get_running_loop().create_task(self._end_when_done())

    async def _end_when_done(self) -> None:
        await asyncio.gather(*self._calls.values(), return_exceptions=True)
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._ready.set()

    async def _read(self, requests: AsyncIterator[agent_service_pb2.ConnectRequest]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for request in requests:
                for index, frame in enumerate(request.calls, start=1):
                    if index % _CHUNK == 0:
                        # Let the calls started so far finish and be answered
                        # while the rest of a big batch is read.
                        await asyncio.sleep(0)
                    if frame.HasField("send"):
                        if self._draining:
                            self._fail(frame.call_id, Unavailable("the node is stopping"))
                            continue
                        timeout = frame.timeout_millis / 1000 if frame.timeout_millis else None
                        task = loop.create_task(self._serve(frame.call_id, frame.send, timeout))
                        self._calls[frame.call_id] = task
                        task.add_done_callback(self._forget(frame.call_id))
                    elif frame.HasField("cancel"):
                        cancelled = self._calls.pop(frame.call_id, None)
                        if cancelled is not None:
                            cancelled.cancel()
            await asyncio.gather(*self._calls.values(), return_exceptions=True)
        finally:
            self._end()

    def _forget(self, call_id: int) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._calls.pop(call_id, None)

        return done

    async def _serve(
        self, call_id: int, request: agent_service_pb2.SendRequest, timeout: float | None
    ) -> None:
        try:
            response = await self._node.serve_send(request, timeout, self._trace)
        except Exception as error:  # every call gets an outcome, whatever failed
            self._fail(call_id, error)
        else:
            self._outcomes.append(agent_service_pb2.CallOutcome(call_id=call_id, result=response))
            self._ready.set()

    def _fail(self, call_id: int, error: Exception) -> None:
        self._outcomes.append(
            agent_service_pb2.CallOutcome(call_id=call_id, failure=to_call_failure(error))
        )
        self._ready.set()


Request = TypeVar("Request")
Response = TypeVar("Response")


def _statuses(
    method: Callable[[Any, Request, Context], Awaitable[Response]],
) -> Callable[[Any, Request, Context], Awaitable[Response]]:
    """Turn any exception a unary method raises into its gRPC status."""

    @functools.wraps(method)
    async def serve(self: Any, request: Request, context: Context) -> Response:
        try:
            return await method(self, request, context)
        except Exception as error:  # every call gets a status, whatever failed
            # grpc.aio's context has abort_with_status; the stubs lack it.
            await context.abort_with_status(to_grpc_status(error))  # type: ignore[attr-defined]
            raise  # pragma: no cover - abort_with_status raises

    return serve


class AgentService(agent_service_pb2_grpc.AgentServiceServicer):
    """Serves ravi.mesh.v1.AgentService for a mesh node."""

    def __init__(self, node: NodeHandler) -> None:
        self._node = node
        self._sessions: set[_ConnectSession] = set()
        self._draining = False

    @_statuses
    async def Send(
        self, request: agent_service_pb2.SendRequest, context: Context
    ) -> agent_service_pb2.SendResponse:
        return await self._node.serve_send(
            request, context.time_remaining(), trace_context(context)
        )

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_service_pb2.ConnectRequest],
        context: Context,
    ) -> AsyncIterator[agent_service_pb2.ConnectResponse]:
        session = _ConnectSession(self._node, trace_context(context), self._draining)
        if self._draining:
            session.drain()  # opened while the node stops: ends once it refused its calls
        self._sessions.add(session)
        try:
            async for response in session.run(request_iterator):
                yield response
        finally:
            self._sessions.discard(session)

    def drain(self) -> None:
        """Stop taking calls on Connect streams; end each once its calls are done."""
        self._draining = True
        for session in self._sessions:
            session.drain()

    @_statuses
    async def Publish(
        self, request: agent_service_pb2.PublishRequest, context: Context
    ) -> agent_service_pb2.PublishResponse:
        return await self._node.serve_publish(
            request, context.time_remaining(), trace_context(context)
        )

    async def Subscribe(
        self,
        request: agent_service_pb2.SubscribeRequest,
        context: Context,
    ) -> AsyncIterator[agent_service_pb2.SubscribeResponse]:
        stream = self._node.serve_subscribe(request)
        try:
            async for response in stream:
                yield response
        except Exception as error:  # the stream ends with the status of what failed
            await context.abort_with_status(to_grpc_status(error))  # type: ignore[attr-defined]

    async def Describe(
        self,
        request: agent_service_pb2.DescribeRequest,
        context: Context,
    ) -> agent_service_pb2.DescribeResponse:
        return self._node.serve_describe(request)

    @_statuses
    async def ResolvePromise(
        self, request: agent_service_pb2.ResolvePromiseRequest, context: Context
    ) -> agent_service_pb2.ResolvePromiseResponse:
        return await self._node.serve_resolve_promise(request)

    @_statuses
    async def SaveState(
        self, request: agent_service_pb2.SaveStateRequest, context: Context
    ) -> agent_service_pb2.SaveStateResponse:
        return await self._node.serve_save_state(request)

    @_statuses
    async def LoadState(
        self, request: agent_service_pb2.LoadStateRequest, context: Context
    ) -> agent_service_pb2.LoadStateResponse:
        return await self._node.serve_load_state(request)
