"""GrpcServer: a mesh node served over grpc.aio, with health, reflection, TLS and tokens.

`AgentService` implements ravi.mesh.v1.AgentService by calling the node's
`NodeHandler`; a `RaviError` becomes a gRPC status with ErrorInfo on unary
calls and a `CallFailure` on a Multiplex frame (both through `ravi.errors`), and
so does any other exception, so a caller always gets an outcome.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from ravi._mesh.codec import is_trace_key
from ravi._mesh.transport import NodeHandler
from ravi.errors import Unavailable, to_call_failure, to_grpc_status
from ravi.integrations.runtime.grpc._instrumentation import RpcInstrumentation
from ravi.integrations.runtime.grpc._security import BearerAuth, TlsConfig
from ravi.integrations.runtime.grpc._transport import channel_options
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, contract, errors_pb2, types_pb2

# Reflection answers from the default descriptor pool: these put ErrorReason and
# google.rpc.Status / ErrorInfo there, every type a client needs (agent_service.proto).
_DESCRIBED = (errors_pb2, status_pb2, error_details_pb2)

logger = logging.getLogger("ravi.grpc")

SERVICE_NAME: str = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_CHUNK = 16
"""Frames handled before yielding to the loop, to pipeline big batches."""
_MAX_PENDING_CALLS = 100_000
_MIN_PING_INTERVAL_MS = int(contract.DEFAULT_KEEPALIVE_TIME_SECONDS * 1000 // 2)


class _Malformed:
    """A request whose bytes did not parse: the method answers INTERNAL (agent_service.proto)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    # grpc.aio answers UNKNOWN when a deserializer raises; the contract says
    # INTERNAL, as grpc-go and connect answer, so the method decides instead.
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            return _Malformed(str(error))

    return deserialize


async def _refuse_malformed(request: _Malformed, context: Context) -> NoReturn:
    await context.abort(grpc.StatusCode.INTERNAL, f"the request does not parse: {request.error}")
    raise AssertionError("abort raises")  # pragma: no cover


def _describe_reflection_v1() -> None:
    """Put grpc.reflection.v1 into the descriptor pool reflection answers from.

    grpcio-reflection ships only v1alpha's descriptor; v1 declares the same
    messages under another package, so grpcurl can invoke v1 once its
    descriptor, derived from v1alpha's, is known too.
    """
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(_REFLECTION_V1)
        return
    except KeyError:
        pass
    v1 = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1)
    v1.name = "grpc/reflection/v1/reflection.proto"
    v1.package = "grpc.reflection.v1"
    v1.options.Clear()
    alpha, beta = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in v1.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(alpha, beta)
    for service in v1.service:
        for method in service.method:
            method.input_type = method.input_type.replace(alpha, beta)
            method.output_type = method.output_type.replace(alpha, beta)
    pool.Add(v1)


_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _add_agent_service(service: AgentService, server: grpc.aio.Server) -> None:
    """Register AgentService as the generated code would, with lenient request parsing."""
    descriptor = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
    handlers = {}
    for method in descriptor.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(service, method.name),
            request_deserializer=_lenient(request.FromString),
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
    # As the generated code does; grpc's stubs do not declare it.
    server.add_registered_method_handlers(descriptor.full_name, handlers)  # type: ignore[attr-defined]


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
        rpc: traces unary RPCs (a span per call, the parent of the mesh's spans).
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
        rpc: RpcInstrumentation | None = None,
    ) -> None:
        self._node = node
        self._rpc = rpc
        self._host = host
        self.port = port
        self._token = token
        self._health_without_auth = health_without_auth
        self._tls = tls
        self._max_message_bytes = max_message_bytes
        self._server: grpc.aio.Server | None = None
        self._service = AgentService(node, rpc.rpc_trace_context if rpc is not None else None)
        self._health = HealthServicer()

    async def start(self) -> None:
        credentials = self._tls.server_credentials() if self._tls is not None else None
        _check_bindable(self._host, self.port)
        options = [
            *channel_options(self._max_message_bytes),
            # The server pings its callers now and then too, to let go of the
            # streams of a caller that vanished.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Peers ping every DEFAULT_KEEPALIVE_TIME (contract.toml) to find a frozen
            # node quickly; a server that allowed fewer pings would close their connections.
            ("grpc.http2.min_ping_interval_without_data_ms", _MIN_PING_INTERVAL_MS),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.so_reuseport", 0),
            # grpc-core cancels calls the application has not picked up yet beyond 1,000
            # (3,000 hard): a burst at one node then fails CANCELLED, which the contract
            # reserves for callers that cancel. Calls wait instead, each within its
            # deadline, and fail DEADLINE_EXCEEDED or MAILBOX_FULL like any other.
            ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", _MAX_PENDING_CALLS),
        ]
        interceptors: list[grpc.aio.ServerInterceptor] = (  # type: ignore[type-arg]
            [BearerAuth(self._token, health_without_auth=self._health_without_auth)]
            if self._token
            else []
        )
        if self._rpc is not None:
            interceptors += self._rpc.grpc_server_interceptors()
        server = grpc.aio.server(options=options, interceptors=interceptors)
        _add_agent_service(self._service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
            _REFLECTION_V1,
        )
        _describe_reflection_v1()
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
        """Health says NOT_SERVING and Multiplex streams take no new calls."""
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


class _MultiplexSession:
    """One Multiplex stream: Send calls in flight, answered in any order."""

    def __init__(self, node: NodeHandler, trace: dict[str, str], draining: bool) -> None:
        self._node = node
        self._trace = trace
        self._outcomes: list[agent_service_pb2.CallOutcome] = []
        self._ready = asyncio.Event()
        self._ended = False
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._draining = draining
        self.malformed: _Malformed | None = None
        """A request message that did not parse: the stream ends INTERNAL."""

    async def run(
        self, requests: AsyncIterator[agent_service_pb2.MultiplexRequest | _Malformed]
    ) -> AsyncIterator[agent_service_pb2.MultiplexResponse]:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                if self._outcomes:
                    # Outcomes that are ready together go out as one message.
                    batch, self._outcomes = self._outcomes, []
                    yield agent_service_pb2.MultiplexResponse(calls=batch)
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

    async def _read(
        self, requests: AsyncIterator[agent_service_pb2.MultiplexRequest | _Malformed]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for request in requests:
                if isinstance(request, _Malformed):
                    self.malformed = request
                    break
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
        if isinstance(request, _Malformed):
            await _refuse_malformed(request, context)
        try:
            return await method(self, request, context)
        except Exception as error:  # every call gets a status, whatever failed
            # grpc.aio's context has abort_with_status; the stubs lack it.
            await context.abort_with_status(to_grpc_status(error))  # type: ignore[attr-defined]
            raise  # pragma: no cover - abort_with_status raises

    return serve


class AgentService(agent_service_pb2_grpc.AgentServiceServicer):
    """Serves ravi.mesh.v1.AgentService for a mesh node.

    With `rpc_trace`, a unary Send is traced by its RPC span: the message takes
    that span's context, so its handle span is the RPC span's child, unless the
    envelope carries a context of another trace (docs/operations.md, "Spans").
    Deliveries (a Send with a topic, Publish) keep their publish span as parent
    and link.
    """

    def __init__(
        self, node: NodeHandler, rpc_trace: Callable[[], Mapping[str, str]] | None = None
    ) -> None:
        self._node = node
        self._rpc_trace = rpc_trace
        self._sessions: set[_MultiplexSession] = set()
        self._draining = False
        self._streams: dict[str, int] = {}
        """Open Subscribe streams per caller (its connection's address)."""

    @_statuses
    async def Send(
        self, request: agent_service_pb2.SendRequest, context: Context
    ) -> agent_service_pb2.SendResponse:
        if self._rpc_trace is not None and not request.HasField("topic"):
            self._traced_by_rpc(request.envelope, self._rpc_trace())
        return await self._node.serve_send(
            request, context.time_remaining(), trace_context(context)
        )

    async def Multiplex(
        self,
        request_iterator: AsyncIterator[agent_service_pb2.MultiplexRequest | _Malformed],
        context: Context,
    ) -> AsyncIterator[agent_service_pb2.MultiplexResponse]:
        session = _MultiplexSession(self._node, trace_context(context), self._draining)
        if self._draining:
            session.drain()  # opened while the node stops: ends once it refused its calls
        self._sessions.add(session)
        try:
            async for response in session.run(request_iterator):
                yield response
        finally:
            self._sessions.discard(session)
        if session.malformed is not None:
            await _refuse_malformed(session.malformed, context)

    @staticmethod
    def _traced_by_rpc(envelope: types_pb2.Envelope, headers: Mapping[str, str]) -> None:
        """Give the message its RPC span's context, unless it carries one of another trace."""
        own = envelope.metadata.get("traceparent", "")
        if headers and (not own or own[3:35] == headers["traceparent"][3:35]):
            metadata = envelope.metadata
            for key in [key for key in metadata if is_trace_key(key)]:
                del metadata[key]
            metadata.update(headers)

    def drain(self) -> None:
        """Stop taking calls on Multiplex streams; end each once its calls are done."""
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
        request: agent_service_pb2.SubscribeRequest | _Malformed,
        context: Context,
    ) -> AsyncIterator[agent_service_pb2.SubscribeResponse]:
        if isinstance(request, _Malformed):
            await _refuse_malformed(request, context)
        caller = context.peer()
        held = self._streams.get(caller, 0)
        if held >= contract.DEFAULT_MAX_STREAMS_PER_CALLER:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{caller} holds {held} Subscribe streams on this node already "
                f"(at most {contract.DEFAULT_MAX_STREAMS_PER_CALLER} per caller)",
            )
        self._streams[caller] = held + 1
        stream = self._node.serve_subscribe(request)
        try:
            async for response in stream:
                yield response
        except Exception as error:  # the stream ends with the status of what failed
            await context.abort_with_status(to_grpc_status(error))  # type: ignore[attr-defined]
        finally:
            left = self._streams.pop(caller) - 1
            if left:
                self._streams[caller] = left

    async def Describe(
        self,
        request: agent_service_pb2.DescribeRequest | _Malformed,
        context: Context,
    ) -> agent_service_pb2.DescribeResponse:
        if isinstance(request, _Malformed):
            await _refuse_malformed(request, context)
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
