"""A2AGateway: agent types of a ravi runtime served as A2A agents, by a2a-sdk."""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import grpc
import grpc.aio
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler, RequestHandler
from a2a.server.routes import (
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.types import AgentCard, a2a_pb2, a2a_pb2_grpc
from a2a.utils.errors import InvalidParamsError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount

from ravi.errors import Unavailable
from ravi.integrations.a2a._cards import Bindings, ExposedAgent, agent_card
from ravi.integrations.a2a._tasks import (
    RaviExecutor,
    RequestExecutor,
    ThreadExecutor,
    task_handler,
)
from ravi.runtime import BaseRuntime
from ravi.server import RaviServer, RuntimeThreads
from ravi.server._app import ASGIApp, Receive, Scope, Send, _BearerAuth

# The request being served, for cards built with the URL the client used.
_request_scope: contextvars.ContextVar[Scope] = contextvars.ContextVar("ravi_a2a_request_scope")
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_SERVICE = a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].full_name


class A2AGateway:
    """A2AGateway serves agent types of a RaviServer's runtime as A2A agents.

    It is built on a2a-sdk: its request handler keeps the tasks and streams,
    and its JSON-RPC, HTTP+JSON and gRPC applications speak the protocol. Each
    exposed type gets an Agent Card, public at
    `/a2a/{type}/.well-known/agent-card.json` (the first type's also at
    `/.well-known/agent-card.json`), a JSON-RPC endpoint at `/a2a/{type}`, an
    HTTP+JSON one under `/a2a/{type}/rest`, and a tenant of one gRPC
    `A2AService`. Every call needs the server's bearer token, as the cards
    declare.

    A ReAct type's tasks are runs of the server's ThreadService (the
    contextId is the thread id) and its approvals are `input-required`; the
    tasks are read from the runs, so on `RestateThreads` they are durable and
    the gateway keeps nothing. Any other type answers a message naming a
    request type with its reply as an artifact. See docs/a2a.md.

    `app` serves the A2A endpoints and the server's own API and page; its
    lifespan starts the thread service (through the server), the runtime of
    request/reply calls, and the gRPC server.

    Args:
        server: the server whose thread service runs the ReAct tasks.
        agents: the agent types to serve, as ExposedAgent or type names.
        runtime: where request/reply agents are called; the gateway starts
            and stops it. None: the runtime of the server's `RuntimeThreads`
            (with `RestateThreads`, give a client `RestateRuntime`,
            `listen=None`).
        url: the base URL clients reach the HTTP endpoints at, written in the
            cards; None writes the URL each card request came to.
        grpc_listen: HOST:PORT the gRPC binding listens on (port 0: any free
            port); None serves no gRPC binding.
        grpc_address: the HOST:PORT clients dial for gRPC, written in the
            cards; None writes the bound address.
        on_ready: called with the gateway once the runtime and the gRPC
            binding have started.
    """

    def __init__(
        self,
        server: RaviServer,
        agents: Sequence[ExposedAgent | str],
        *,
        runtime: BaseRuntime | None = None,
        url: str | None = None,
        grpc_listen: str | None = "127.0.0.1:0",
        grpc_address: str | None = None,
        on_ready: Callable[[A2AGateway], None] | None = None,
    ) -> None:
        exposed = [a if isinstance(a, ExposedAgent) else ExposedAgent(a) for a in agents]
        if not exposed:
            raise ValueError("the gateway needs at least one agent type to serve")
        types = [a.agent_type for a in exposed]
        if len(set(types)) != len(types):
            raise ValueError(f"an agent type is listed twice: {types}")
        self.server = server
        self.agents: tuple[ExposedAgent, ...] = tuple(exposed)
        self._url = url.rstrip("/") if url else None
        self._grpc_listen = grpc_listen
        self._grpc_address = grpc_address
        self._on_ready = on_ready
        self._grpc: grpc.aio.Server | None = None
        self._grpc_port: int | None = None
        self._handlers: dict[str, DefaultRequestHandler] = {}
        self._executors: list[RaviExecutor] = []
        self._runtime = runtime
        calls = runtime or (
            server.threads.runtime if isinstance(server.threads, RuntimeThreads) else None
        )
        for agent in exposed:
            executor: RaviExecutor
            if agent.is_react:
                executor = ThreadExecutor(agent, server.threads)
            elif calls is not None:
                executor = RequestExecutor(agent, calls)
            else:
                raise ValueError(
                    f"{agent.agent_type} is a request/reply agent: the gateway needs a "
                    "runtime to call it on (runtime=; with RestateThreads, a client "
                    "RestateRuntime)"
                )
            self._executors.append(executor)
            card = agent_card(agent, Bindings("http://localhost", None))
            self._handlers[agent.agent_type] = task_handler(executor, card)
        self.app: ASGIApp = _RememberUrl(self._starlette())

    @property
    def grpc_address(self) -> str | None:
        """The address the gRPC binding is bound to, once the app started (None without one)."""
        if self._grpc_port is None or self._grpc_listen is None:
            return None
        host = self._grpc_listen.rpartition(":")[0].strip("[]")
        return f"{_bracketed(host)}:{self._grpc_port}"

    def card(self, agent_type: str, base_url: str | None = None) -> AgentCard:
        """The Agent Card of an exposed type, with this gateway's bindings.

        Args:
            agent_type: the exposed type.
            base_url: the HTTP base URL to write when the gateway has none configured.
        """
        exposed = next((a for a in self.agents if a.agent_type == agent_type), None)
        if exposed is None:
            raise KeyError(f"the gateway does not serve agent type {agent_type!r}")
        http_url = self._url or (base_url or "http://127.0.0.1").rstrip("/")
        return agent_card(exposed, Bindings(http_url, self._advertised_grpc(http_url)))

    def _advertised_grpc(self, http_url: str) -> str | None:
        if self._grpc_address is not None:
            return self._grpc_address
        bound = self.grpc_address
        if bound is None:
            return None
        host, _, port = bound.rpartition(":")
        if _is_wildcard(host.strip("[]")):
            # Bound to every interface: clients dial the host they reached us at.
            host = _bracketed(urlsplit(http_url).hostname or "127.0.0.1")
        return f"{host}:{port}"

    def _starlette(self) -> Starlette:
        routes: list[BaseRoute] = []
        first = self.agents[0].agent_type
        for agent in self.agents:
            name = agent.agent_type
            routes += create_agent_card_routes(
                self.card(name),
                card_modifier=self._card_modifier(name),
                card_url=f"/a2a/{name}/.well-known/agent-card.json",
            )
        routes += create_agent_card_routes(
            self.card(first), card_modifier=self._card_modifier(first)
        )
        bindings: list[BaseRoute] = []
        for name, handler in self._handlers.items():
            bindings += create_jsonrpc_routes(handler, f"/{name}")
            # An app of its own: the SDK's REST routes end in a catch-all tenant mount.
            rest = Starlette(routes=create_rest_routes(handler))
            bindings.append(Mount(f"/{name}/rest", app=rest))
        protected = _BearerAuth(Starlette(routes=bindings), self.server.token)
        routes.append(Mount("/a2a", app=protected))
        routes.append(Mount("/", app=self.server.app))
        return Starlette(routes=routes, lifespan=self._lifespan)

    def _card_modifier(self, agent_type: str) -> Callable[[AgentCard], Awaitable[AgentCard]]:
        async def modify(_card: AgentCard) -> AgentCard:
            scope = _request_scope.get(None)
            base_url = str(Request(scope).base_url) if scope is not None else None
            return self.card(agent_type, base_url)

        return modify

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with self.server.serving(), contextlib.AsyncExitStack() as stack:
            if self._runtime is not None:
                await self._runtime.start()
                stack.push_async_callback(self._runtime.stop)
            await self._start_grpc()
            if self._on_ready is not None:
                self._on_ready(self)
            try:
                yield
            finally:
                await self._stop()

    async def _start_grpc(self) -> None:
        if self._grpc_listen is None:
            return
        server = grpc.aio.server(interceptors=[_BearerInterceptor(self.server.token)])
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(  # type: ignore[no-untyped-call]
            GrpcHandler(_TenantRouter(self._handlers, self.agents[0].agent_type)), server
        )
        checks = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        reflection.enable_server_reflection(
            [_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        try:
            port = server.add_insecure_port(self._grpc_listen)
        except RuntimeError:  # grpcio's way of saying the address is taken or invalid
            port = 0
        if port == 0:
            error = Unavailable(f"the A2A gRPC binding cannot listen on {self._grpc_listen}")
            self.server.startup_error = error
            raise error
        await server.start()
        await checks.set("", health_pb2.HealthCheckResponse.SERVING)
        await checks.set(_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._grpc, self._grpc_port = server, port

    async def _stop(self) -> None:
        for executor in self._executors:
            executor.close()
        for handler in self._handlers.values():
            await handler.aclose()
        if self._grpc is not None:
            await self._grpc.stop(grace=2.0)
            self._grpc = None


class _TenantRouter(RequestHandler):
    """Routes a gRPC call to the handler of the agent type its tenant names.

    One gRPC A2AService serves every exposed type; each card's gRPC interface
    names its type as the tenant, which the official clients then send with
    every request. No tenant means the first exposed type.
    """

    def __init__(self, handlers: dict[str, DefaultRequestHandler], default: str) -> None:
        self._handlers = handlers
        self._default = default

    def _handler(self, context: ServerCallContext) -> DefaultRequestHandler:
        tenant = context.tenant or self._default
        handler = self._handlers.get(tenant)
        if handler is None:
            served = ", ".join(self._handlers)
            raise InvalidParamsError(message=f"no agent type {tenant!r} here; tenants: {served}")
        return handler

    async def on_get_task(self, params: Any, context: ServerCallContext) -> Any:
        return await self._handler(context).on_get_task(params, context)

    async def on_list_tasks(self, params: Any, context: ServerCallContext) -> Any:
        return await self._handler(context).on_list_tasks(params, context)

    async def on_cancel_task(self, params: Any, context: ServerCallContext) -> Any:
        return await self._handler(context).on_cancel_task(params, context)

    async def on_message_send(self, params: Any, context: ServerCallContext) -> Any:
        return await self._handler(context).on_message_send(params, context)

    async def on_message_send_stream(  # type: ignore[override]  # a generator, as the SDK calls it
        self, params: Any, context: ServerCallContext
    ) -> AsyncIterator[Any]:
        stream = self._handler(context).on_message_send_stream(params, context)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                yield event

    async def on_create_task_push_notification_config(
        self, params: Any, context: ServerCallContext
    ) -> Any:
        return await self._handler(context).on_create_task_push_notification_config(params, context)

    async def on_get_task_push_notification_config(
        self, params: Any, context: ServerCallContext
    ) -> Any:
        return await self._handler(context).on_get_task_push_notification_config(params, context)

    async def on_subscribe_to_task(  # type: ignore[override]  # a generator, as the SDK calls it
        self, params: Any, context: ServerCallContext
    ) -> AsyncIterator[Any]:
        stream = self._handler(context).on_subscribe_to_task(params, context)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                yield event

    async def on_list_task_push_notification_configs(
        self, params: Any, context: ServerCallContext
    ) -> Any:
        return await self._handler(context).on_list_task_push_notification_configs(params, context)

    async def on_delete_task_push_notification_config(
        self, params: Any, context: ServerCallContext
    ) -> None:
        await self._handler(context).on_delete_task_push_notification_config(params, context)

    async def on_get_extended_agent_card(self, params: Any, context: ServerCallContext) -> Any:
        return await self._handler(context).on_get_extended_agent_card(params, context)


class _BearerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses A2A calls without the server's bearer token; health and reflection are open."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler | None = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(f"/{_SERVICE}/"):
            return handler  # type: ignore[return-value]  # None: unknown method, gRPC answers
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(given, self._expected):
                    return handler
        return _unauthenticated(handler)


def _unauthenticated(handler: Handler) -> Handler:
    async def deny(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    # A2AService has unary and server-streaming methods only; grpc.aio takes a
    # coroutine for either.
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny, **codecs)
    return grpc.unary_unary_rpc_method_handler(deny, **codecs)


class _RememberUrl:
    """Notes each HTTP request, for the cards built with the URL it came to."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        token = _request_scope.set(scope)
        try:
            await self._app(scope, receive, send)
        finally:
            _request_scope.reset(token)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
