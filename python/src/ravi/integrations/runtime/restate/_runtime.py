"""RestateRuntime: each agent type a Restate Virtual Object, every step journaled."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import restate
from google.protobuf.message import DecodeError

from ravi._agent import BaseAgent, agent_class_of
from ravi._cancellation import CancellationToken
from ravi._ids import AgentId, AgentType, TopicId, new_message_id
from ravi._interceptors import HandleInput, Interceptor, PublishInput, SendInput, chain
from ravi._mesh import codec
from ravi._serialization import PROTOBUF, MessageRegistry, registry
from ravi._subscriptions import Subscription
from ravi.errors import (
    AgentTypeNotFound,
    AlreadyExists,
    BadPayload,
    Cancelled,
    DeadlineExceeded,
    NoHandler,
    NotFound,
    RaviError,
    ReentrantCall,
    Unavailable,
    from_call_failure,
    handler_error,
    to_call_failure,
)
from ravi.integrations.runtime.restate import _sql
from ravi.integrations.runtime.restate._context import (
    BYTES,
    PROMISES,
    RestateContext,
    _terminal,
)
from ravi.integrations.runtime.restate._deployment import Deployment, disarm_sdk_sigterm
from ravi.integrations.runtime.restate._internal import (
    SUBSCRIPTIONS,
    SUBSCRIPTIONS_KEY,
    internal_services,
    subscription_json,
)
from ravi.mesh.v1 import agent_service_pb2, contract, types_pb2
from ravi.runtime._base import Agent, BaseRuntime

logger = logging.getLogger("ravi.restate")
T = TypeVar("T")

DEFAULT_TIMEOUT = contract.DEFAULT_TIMEOUT_SECONDS
DEFAULT_GRACE_PERIOD = 5.0
# Envelope metadata carrying the caller's deadline (ms since the epoch) into
# the invocation, where gRPC would carry it as the call's deadline.
DEADLINE_KEY = "ravi-deadline-ms"

# The ingress refuses an empty body; handlers that take nothing get this.
_NO_INPUT = b"{}"

_BYTES_IO: dict[str, Any] = {
    "accept": "*/*",
    "content_type": PROTOBUF,
    "input_serde": BYTES,
    "output_serde": BYTES,
}


@dataclass(frozen=True)
class _Entry:
    factory: Callable[[], Any]
    cls: type[BaseAgent]


@dataclass(frozen=True)
class _Running:
    """The handler running in this task: its context, and the agent it runs for."""

    ctx: RestateContext
    agent: AgentId


_CURRENT: contextvars.ContextVar[_Running | None] = contextvars.ContextVar(
    "ravi_restate_current", default=None
)


class RestateRuntime(BaseRuntime):
    """RestateRuntime runs agents on a Restate server: crash-proof steps, durable waits.

    Each registered agent type becomes a Virtual Object named after it, keyed by
    the agent key, with an exclusive `handle` handler (shared for reentrant
    agents) that dispatches to the agent's message handlers. The runtime serves
    these objects as a Restate deployment (HTTP/2 on `listen`) and registers it
    with the admin API; sends from outside any handler go through the ingress,
    with the message id as the idempotency key, so each message is processed
    once. Inside a handler, `send_message` is a durable call, `publish_message`
    durable one-way sends, `ctx.step` a journaled `run`, `ctx.wait_for` an
    awakeable, and the agent's `save_state` its object state.

    Durable means deterministic: every attempt of an invocation (the first,
    and each replay after a suspension or a restart) builds a fresh agent
    instance with the factory and loads the object state into it, so a replay
    journals exactly what the first attempt did. Nothing an instance keeps in
    memory outlives the attempt; what must outlive it belongs in `save_state`
    (written at the end of each message of an exclusive handler).

    Args:
        ingress_url: the Restate ingress (port 8080 by default).
        admin_url: the Restate admin API (port 9070 by default).
        listen: HOST:PORT to serve the deployment on (port 0: any free port);
            None for a client that only sends.
        advertise: the URI Restate reaches the deployment at (default
            http://listen). A worker that restarts must come back at the same
            URI for its pending invocations to resume.
        default_timeout: seconds a send from outside a handler may take.
        force_register: replace a deployment registered at the same URI with
            different services (development; unsafe with invocations in flight).
        message_registry: where message types are looked up by name.
        interceptors: hooks around sends, handler calls and publishes (tracing,
            metrics), as on the other runtimes; a handler's hooks run in the
            invocation, on every attempt.
        grace_period: seconds the invocations in progress get on `stop()` to
            reach their next durable wait, where they suspend.
    """

    def __init__(
        self,
        ingress_url: str = "http://127.0.0.1:8080",
        admin_url: str = "http://127.0.0.1:9070",
        *,
        listen: str | None = "127.0.0.1:9080",
        advertise: str | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
        force_register: bool = False,
        message_registry: MessageRegistry = registry,
        interceptors: Sequence[Interceptor] = (),
        grace_period: float = DEFAULT_GRACE_PERIOD,
    ) -> None:
        self._ingress = ingress_url.rstrip("/")
        self._admin = admin_url.rstrip("/")
        self._listen = listen
        self._advertise = advertise
        self._default_timeout = default_timeout
        self._force = force_register
        self._registry = message_registry
        self._grace_period = grace_period
        self._types: dict[str, _Entry] = {}
        self._subscriptions: dict[str, Subscription] = {}
        # Subscription id -> the id Restate keeps it under (an equal one's).
        self._stored_ids: dict[str, str] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._services: list[restate.Service | restate.VirtualObject | restate.Workflow] = []
        self._http: aiohttp.ClientSession | None = None
        self._server: Deployment | None = None
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.deployment_uri: str | None = None
        # As on the other runtimes, a chain exists only when there are interceptors.
        self._send_chain = (
            chain(interceptors, lambda i: i.send, self._send_input) if interceptors else None
        )
        self._publish_chain = (
            chain(interceptors, lambda i: i.publish, self._publish_input) if interceptors else None
        )
        self._interceptors = tuple(interceptors)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._http is not None:
            return
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), raise_for_status=False
        )
        try:
            if self._listen is not None:
                await self._serve(self._listen)
            for subscription in self._subscriptions.values():
                await self._push_subscription(subscription)
        except BaseException:
            await self.stop()
            raise

    async def _serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host.strip("[]"), int(port)))
        except OSError as error:
            listener.close()
            reason = (error.strerror or str(error)).lower()
            raise Unavailable(f"cannot listen on {listen}: {reason}") from None
        listener.listen(1024)
        listener.setblocking(False)
        bound = listener.getsockname()[1]
        self.deployment_uri = self._advertise or f"http://{host}:{bound}"
        app = restate.app([*self._objects(), *self._services, *internal_services()])
        await asyncio.to_thread(disarm_sdk_sigterm, app)
        self._server = Deployment(app, listener, self._grace_period)
        await self._register()

    async def _register(self) -> None:
        body = {"uri": self.deployment_uri, "force": self._force}
        try:
            async with self._client().post(f"{self._admin}/deployments", json=body) as response:
                text, status = await response.text(), response.status
        except aiohttp.ClientError as error:
            raise Unavailable(
                f"Restate's admin API at {self._admin} is unreachable ({error}): "
                "is restate-server running?"
            ) from None
        if status == 409:
            raise AlreadyExists(
                f"Restate has a deployment at {self.deployment_uri} with other services: "
                f"{text}; use another address, or force_register=True in development"
            )
        if status >= 300:
            raise Unavailable(
                f"Restate's admin API at {self._admin} refused the deployment "
                f"{self.deployment_uri}: {status} {text}"
            )

    async def stop(self) -> None:
        """Stop serving: invocations in progress suspend (or are cut after the grace period).

        Restate resumes them where they stopped, on this worker once it is
        back at the same URI (or on another worker registered there).
        """
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self._background:  # cancellations of calls given up on: short, bounded
            await asyncio.wait(self._background, timeout=5)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def stop_when_idle(self, *, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{self._active} messages were still being handled after {timeout} s"
            ) from None
        await self.stop()

    async def wait_until_ready(self, *agent_types: str, timeout: float = 10.0) -> None:
        """Wait until Restate knows a deployment serving each of `agent_types`.

        The agent types of this runtime are registered once it started; a type
        served by another deployment is ready once that one registered.
        """
        waiting = ""
        try:
            async with asyncio.timeout(timeout):
                for waiting in agent_types:
                    delay = 0.05
                    while not await self._known_to_restate(waiting):
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 1.0)
        except TimeoutError:
            raise TimeoutError(
                f'agent type "{waiting}" not known to Restate at {self._admin} after '
                f"{timeout:g} s: is the deployment serving it registered there?"
            ) from None

    async def _known_to_restate(self, service: str) -> bool:
        if self._http is None:
            return False  # not started yet
        try:
            async with self._client().get(f"{self._admin}/services/{service}") as response:
                await response.read()
                return response.status == 200
        except aiohttp.ClientError:
            return False

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise Unavailable("the runtime is not running: start it first")
        return self._http

    # --- registration ------------------------------------------------------------

    async def register_factory(
        self,
        agent_type: str,
        factory: Callable[[], Agent | Awaitable[Agent]],
        *,
        agent_class: type[Agent],
    ) -> AgentType:
        if agent_type in self._types:
            raise AlreadyExists(f"agent type {agent_type!r} is registered already")
        if self._server is not None:
            raise AlreadyExists(
                "register agent types before start(): the deployment is registered with "
                "Restate once"
            )
        self._types[agent_type] = _Entry(factory, agent_class_of(agent_class))
        return AgentType(agent_type)

    def add_service(
        self, service: restate.Service | restate.VirtualObject | restate.Workflow
    ) -> None:
        """Serve a Restate service of your own from this runtime's deployment.

        The hook through which durable workflows join a runtime (such as
        `AgentWorkflow.register`): the runtime knows no particular workflow.

        Raises:
            AlreadyExists: the runtime started (the deployment is registered once),
                or a service of that name is added already.
        """
        if self._server is not None:
            raise AlreadyExists("add services before start(): the deployment is registered once")
        if any(s.name == service.name for s in self._services):
            raise AlreadyExists(f"a service named {service.name!r} is added already")
        self._services.append(service)

    @property
    def message_registry(self) -> MessageRegistry:
        """Where this runtime looks message types up by name."""
        return self._registry

    async def running(self, ctx: RestateContext, agent: AgentId, handling: Awaitable[T]) -> T:
        """Await `handling` as the handler of `agent`: its sends and publishes are durable."""
        token = _CURRENT.set(_Running(ctx, agent))
        try:
            return await handling
        finally:
            _CURRENT.reset(token)

    def _objects(self) -> list[restate.VirtualObject]:
        return [self._object(name, entry) for name, entry in self._types.items()]

    def _object(self, agent_type: str, entry: _Entry) -> restate.VirtualObject:
        obj = restate.VirtualObject(agent_type, description=entry.cls.__doc__)
        kind: Literal["shared", "exclusive"] = "shared" if entry.cls.reentrant else "exclusive"

        async def handle(ctx: restate.ObjectContext, data: bytes) -> bytes:
            return await self._invoke(ctx, agent_type, data)

        async def deliver(ctx: restate.ObjectContext, data: bytes) -> bytes:
            outcome = agent_service_pb2.CallOutcome.FromString(
                await self._invoke(ctx, agent_type, data)
            )
            if outcome.HasField("failure"):
                logger.warning(
                    "subscriber %s/%s failed: %s", agent_type, ctx.key(), outcome.failure.message
                )
            return b""

        async def get_state(ctx: restate.ObjectSharedContext, _data: bytes) -> bytes:
            return await ctx.get("state", serde=BYTES) or b"{}"

        async def set_state(ctx: restate.ObjectContext, data: bytes) -> bytes:
            agent = await self._fresh(AgentId(agent_type, ctx.key()), data)
            try:
                ctx.set("state", json.dumps(await agent.save_state()).encode(), serde=BYTES)
            finally:
                await agent.close()
            return b""

        obj.handler("handle", kind=kind, **_BYTES_IO)(handle)
        obj.handler("deliver", kind=kind, **_BYTES_IO)(deliver)
        obj.handler("get_state", kind="shared", **_BYTES_IO)(get_state)
        obj.handler("set_state", kind="exclusive", **_BYTES_IO)(set_state)
        return obj

    async def _fresh(self, agent_id: AgentId, state: bytes | None) -> BaseAgent:
        """A new instance of the agent, with its object state loaded: the same on every attempt."""
        made = self._types[agent_id.type].factory()
        agent: BaseAgent = await made if isinstance(made, Awaitable) else made
        agent._ravi_bind(self, agent_id)
        if state is not None:
            await agent.load_state(json.loads(state))
        return agent

    # --- handling, inside an invocation ----------------------------------------

    async def _invoke(self, ctx: restate.ObjectContext, agent_type: str, data: bytes) -> bytes:
        self._active += 1
        self._idle.clear()
        try:
            return (await self._dispatch(ctx, agent_type, data)).SerializeToString()
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _dispatch(
        self, ctx: restate.ObjectContext, agent_type: str, data: bytes
    ) -> agent_service_pb2.CallOutcome:
        agent_id = AgentId(agent_type, ctx.key())
        try:
            request = agent_service_pb2.SendRequest.FromString(data)
            message = codec.decode(self._registry, request.envelope.payload)
        except (DecodeError, RaviError) as error:
            failure = error if isinstance(error, RaviError) else BadPayload(str(error))
            return agent_service_pb2.CallOutcome(failure=to_call_failure(failure))
        persistent = not self._types[agent_type].cls.reentrant
        saved = await ctx.get("state", serde=BYTES)
        agent = await self._fresh(agent_id, saved)
        try:
            outcome = await self._handle(ctx, agent, agent_id, message, request)
            if persistent:
                state = json.dumps(await agent.save_state()).encode()
                # An unchanged state is not written again: a journal entry less
                # per message for agents that keep none.
                if state != (saved if saved is not None else b"{}"):
                    ctx.set("state", state, serde=BYTES)
        finally:
            await agent.close()
        return outcome

    async def _handle(
        self,
        ctx: restate.ObjectContext,
        agent: BaseAgent,
        agent_id: AgentId,
        message: Any,
        request: agent_service_pb2.SendRequest,
    ) -> agent_service_pb2.CallOutcome:
        metadata = request.envelope.metadata
        deadline_ms = metadata.pop(DEADLINE_KEY, "")
        deadline = int(deadline_ms) / 1000 if deadline_ms.isdigit() else None
        topic = codec.topic_from_wire(request.topic) if request.HasField("topic") else None
        rctx = RestateContext(ctx, self._registry, request.envelope, topic, deadline)
        token = _CURRENT.set(_Running(rctx, agent_id))
        try:
            result = await self._call_handler(agent_id, agent, message, rctx)
            response = agent_service_pb2.SendResponse()
            if result is not None:
                response.result.CopyFrom(codec.encode(self._registry, result))
            return agent_service_pb2.CallOutcome(result=response)
        except restate.TerminalError as error:
            return agent_service_pb2.CallOutcome(failure=to_call_failure(_terminal(error)))
        except NoHandler as error:
            return agent_service_pb2.CallOutcome(failure=to_call_failure(error))
        except Exception as error:
            if restate.is_internal_exception(error):
                raise  # the SDK suspends or replays the invocation
            failure = handler_error(error, str(agent_id))
            return agent_service_pb2.CallOutcome(failure=to_call_failure(failure))
        finally:
            _CURRENT.reset(token)

    def _call_handler(
        self, agent_id: AgentId, agent: BaseAgent, message: Any, rctx: RestateContext
    ) -> Awaitable[Any]:
        """The handler call, through the interceptors' `handle` hooks when there are any."""
        if not self._interceptors:
            return type(agent)._ravi_lookup(type(message))(agent, message, rctx)

        async def handle(input: HandleInput) -> Any:
            return await type(agent)._ravi_lookup(type(input.message))(
                agent, input.message, input.ctx
            )

        hooked = chain(self._interceptors, lambda i: i.handle, handle)
        return hooked(HandleInput(agent_id, message, rctx))

    # --- sending -------------------------------------------------------------------

    async def send_message(
        self,
        message: Any,
        recipient: AgentId,
        *,
        sender: AgentId | None = None,
        timeout: float | None = None,
        cancellation: CancellationToken | None = None,
        message_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        if self._send_chain is None:
            return await self._send(
                message, recipient, sender, timeout, cancellation, message_id, metadata
            )
        return await self._send_chain(
            SendInput(
                message,
                recipient,
                sender,
                message_id or new_message_id(),
                dict(metadata or {}),
                timeout,
                cancellation,
            )
        )

    async def _send_input(self, input: SendInput) -> Any:
        return await self._send(
            input.message,
            input.recipient,
            input.sender,
            input.timeout,
            input.cancellation,
            input.message_id,
            input.metadata,
        )

    async def _send(  # noqa: PLR0917 - mirrors send_message's arguments
        self,
        message: Any,
        recipient: AgentId,
        sender: AgentId | None,
        timeout: float | None,
        cancellation: CancellationToken | None,
        message_id: str | None,
        metadata: Mapping[str, str] | None,
    ) -> Any:
        running = _CURRENT.get()
        if running is not None:
            return await self._send_inside(running, message, recipient, timeout, metadata)
        limit = self._default_timeout if timeout is None else timeout
        message_id = message_id or new_message_id()
        envelope = self._envelope(message, sender, message_id, metadata)
        envelope.metadata[DEADLINE_KEY] = str(int((time.time() + limit) * 1000))
        request = agent_service_pb2.SendRequest(
            recipient=codec.agent_id_to_wire(recipient), envelope=envelope
        )
        url = f"{self._ingress}/{recipient.type}/{_path(recipient.key)}/handle"
        call = asyncio.ensure_future(
            self._post(url, request.SerializeToString(), message_id, limit)
        )
        unlink = cancellation.add_callback(call.cancel) if cancellation is not None else None
        try:
            status, body = await call
        except (asyncio.CancelledError, TimeoutError) as stopped:
            cancel = asyncio.ensure_future(self._cancel_invocation(recipient, "handle", message_id))
            self._background.add(cancel)
            cancel.add_done_callback(self._background.discard)
            if isinstance(stopped, TimeoutError):
                raise DeadlineExceeded(f"{recipient} did not answer within {limit} s") from None
            if cancellation is not None and cancellation.cancelled:
                raise Cancelled(f"the call to {recipient} was cancelled") from None
            raise
        finally:
            if unlink is not None:
                unlink()
        if status == 404:
            raise AgentTypeNotFound(
                f"no Restate deployment serves agent type {recipient.type!r}: {body!r}",
                metadata={"agent_type": recipient.type},
            )
        if status != 200:
            raise Unavailable(f"Restate's ingress answered {status} for {recipient}: {body!r}")
        return self._reply(agent_service_pb2.CallOutcome.FromString(body))

    async def _send_inside(
        self,
        running: _Running,
        message: Any,
        recipient: AgentId,
        timeout: float | None,
        metadata: Mapping[str, str] | None,
    ) -> Any:
        rctx = running.ctx
        chain = (*rctx.chain, (running.agent.type, running.agent.key))
        entry = self._types.get(recipient.type)
        reentrant = entry is not None and entry.cls.reentrant
        if (recipient.type, recipient.key) in chain and not reentrant:
            path = " -> ".join("/".join(k) for k in (*chain, (recipient.type, recipient.key)))
            raise ReentrantCall(
                f"{recipient} is busy waiting on this call ({path}); "
                "the call would deadlock: make the agent reentrant or restructure the calls"
            )
        # The message id must be the same on a replay: Restate's seeded uuid is.
        envelope = self._envelope(message, running.agent, str(rctx.restate.uuid()), metadata)
        envelope.call_chain.extend(codec.chain_to_wire(chain))
        if rctx.deadline is not None:
            envelope.metadata[DEADLINE_KEY] = str(int(rctx.deadline * 1000))
        request = agent_service_pb2.SendRequest(
            recipient=codec.agent_id_to_wire(recipient), envelope=envelope
        )
        call = rctx.restate.generic_call(
            recipient.type, "handle", request.SerializeToString(), key=recipient.key
        )
        try:
            if timeout is None:
                data = await call
            else:
                timer = rctx.restate.sleep(timedelta(seconds=timeout))
                match await restate.select(reply=call, timer=timer):
                    case ["reply", reply]:
                        data = reply
                    case _:
                        rctx.restate.cancel_invocation(await call.invocation_id())
                        raise DeadlineExceeded(f"{recipient} did not answer within {timeout} s")
        except restate.TerminalError as error:
            raise _terminal(error) from None
        return self._reply(agent_service_pb2.CallOutcome.FromString(data))

    def _reply(self, outcome: agent_service_pb2.CallOutcome) -> Any:
        if outcome.HasField("failure"):
            raise from_call_failure(outcome.failure)
        if not outcome.result.HasField("result"):
            return None
        return codec.decode(self._registry, outcome.result.result)

    def _envelope(
        self,
        message: Any,
        sender: AgentId | None,
        message_id: str,
        metadata: Mapping[str, str] | None,
    ) -> types_pb2.Envelope:
        return types_pb2.Envelope(
            message_id=message_id,
            sender=codec.agent_id_to_wire(sender) if sender is not None else None,
            payload=codec.encode(self._registry, message),
            metadata=dict(metadata or {}),
        )

    async def _post(
        self, url: str, body: bytes, idempotency_key: str | None, timeout: float | None
    ) -> tuple[int, bytes]:
        headers = {"content-type": PROTOBUF}
        if idempotency_key:
            headers["idempotency-key"] = idempotency_key
        try:
            async with self._client().post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                return response.status, await response.read()
        except aiohttp.ClientConnectionError as error:
            raise Unavailable(f"cannot reach Restate at {url}: {error}") from None

    async def _cancel_invocation(self, recipient: AgentId, handler: str, key: str) -> None:
        """Cancel the invocation of an outside call that gave up (deadline, cancellation)."""
        query = (
            "SELECT id FROM sys_invocation WHERE target_service_name = {} AND "
            "target_service_key = {} AND target_handler_name = {} AND idempotency_key = {}"
        ).format(*(_sql.literal(v) for v in (recipient.type, recipient.key, handler, key)))
        try:
            for _ in range(20):
                rows = await self._query(query)
                if rows:
                    for row in rows:
                        url = f"{self._admin}/invocations/{row['id']}/cancel"
                        async with self._client().patch(url) as response:
                            await response.read()
                    return
                await asyncio.sleep(0.05)
        except (RaviError, aiohttp.ClientError) as error:
            logger.warning("could not cancel the call to %s: %s", recipient, error)

    async def _query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of a query on Restate's introspection tables (admin API)."""
        return await _sql.query(self._client(), self._admin, sql)

    # --- publishing -------------------------------------------------------------------

    async def publish_message(
        self,
        message: Any,
        topic: TopicId,
        *,
        sender: AgentId | None = None,
        message_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        publication = PublishInput(
            message, topic, sender, message_id or new_message_id(), dict(metadata or {}), timeout
        )
        if self._publish_chain is None:
            await self._publish_input(publication)
        else:
            await self._publish_chain(publication)

    async def _publish_input(self, input: PublishInput) -> None:
        message, topic, sender = input.message, input.topic, input.sender
        message_id, metadata, timeout = input.message_id, input.metadata, input.timeout
        running = _CURRENT.get()
        if running is not None:
            await self._publish_inside(running, message, topic, metadata)
            return
        message_id = message_id or new_message_id()
        request = agent_service_pb2.SendRequest(
            envelope=self._envelope(message, sender, message_id, metadata),
            topic=codec.topic_to_wire(topic),
        )
        body = request.SerializeToString()
        limit = self._default_timeout if timeout is None else timeout
        status, data = await self._post(
            f"{self._ingress}/{SUBSCRIPTIONS}/{SUBSCRIPTIONS_KEY}/list", _NO_INPUT, None, limit
        )
        if status != 200:
            raise Unavailable(f"cannot read the subscriptions from Restate: {status} {data!r}")
        sends = [
            self._post(
                f"{self._ingress}/{agent.type}/{_path(agent.key)}/deliver/send",
                body,
                f"{message_id}/{agent.type}",
                limit,
            )
            for agent in _subscribers(json.loads(data), topic)
            if agent != sender
        ]
        for status, data in await asyncio.gather(*sends):
            if status >= 300:
                raise Unavailable(f"Restate refused a delivery: {status} {data!r}")

    async def _publish_inside(
        self,
        running: _Running,
        message: Any,
        topic: TopicId,
        metadata: Mapping[str, str] | None,
    ) -> None:
        rctx = running.ctx
        subscriptions = await rctx.restate.generic_call(
            SUBSCRIPTIONS, "list", _NO_INPUT, key=SUBSCRIPTIONS_KEY
        )
        request = agent_service_pb2.SendRequest(
            envelope=self._envelope(message, running.agent, str(rctx.restate.uuid()), metadata),
            topic=codec.topic_to_wire(topic),
        )
        body = request.SerializeToString()
        for agent in _subscribers(json.loads(subscriptions), topic):
            if agent != running.agent:
                rctx.restate.generic_send(agent.type, "deliver", body, key=agent.key)

    # --- subscriptions ---------------------------------------------------------------

    async def add_subscription(self, subscription: Subscription) -> None:
        self._subscriptions[subscription.id] = subscription
        if self._http is not None:
            await self._push_subscription(subscription)

    async def _push_subscription(self, subscription: Subscription) -> None:
        body = json.dumps(subscription_json(subscription)).encode()
        url = f"{self._ingress}/{SUBSCRIPTIONS}/{SUBSCRIPTIONS_KEY}/add"
        status, data = await self._post(url, body, None, self._default_timeout)
        if status != 200:
            raise Unavailable(f"cannot store a subscription in Restate: {status} {data!r}")

    async def remove_subscription(self, subscription_id: str) -> None:
        url = f"{self._ingress}/{SUBSCRIPTIONS}/{SUBSCRIPTIONS_KEY}/remove"
        status, data = await self._post(url, subscription_id.encode(), None, self._default_timeout)
        if status == 200 and data == b"removed":
            self._subscriptions.pop(subscription_id, None)
            return
        if status == 200:
            raise NotFound(f"no subscription has the id {subscription_id!r}")
        raise Unavailable(f"cannot remove a subscription in Restate: {status} {data!r}")

    # --- promises and state -----------------------------------------------------------

    async def resolve_promise(self, name: str, value: Any) -> None:
        payload = codec.encode(self._registry, value).SerializeToString()
        running = _CURRENT.get()
        if running is not None:
            try:
                await running.ctx.restate.generic_call(PROMISES, "resolve", payload, key=name)
            except restate.TerminalError as error:
                raise _terminal(error) from None
            return
        url = f"{self._ingress}/{PROMISES}/{_path(name)}/resolve"
        status, data = await self._post(url, payload, None, self._default_timeout)
        if status == 409:
            raise AlreadyExists(f"promise {name!r} is resolved already")
        if status != 200:
            raise Unavailable(f"cannot resolve promise {name!r} in Restate: {status} {data!r}")

    async def agent_save_state(self, agent: AgentId) -> Mapping[str, Any]:
        status, data = await self._post(
            f"{self._ingress}/{agent.type}/{_path(agent.key)}/get_state",
            _NO_INPUT,
            None,
            self._default_timeout,
        )
        if status == 404:
            raise AgentTypeNotFound(f"no Restate deployment serves agent type {agent.type!r}")
        if status != 200:
            raise Unavailable(f"cannot read the state of {agent}: {status} {data!r}")
        state: dict[str, Any] = json.loads(data)
        return state

    async def agent_load_state(self, agent: AgentId, state: Mapping[str, Any]) -> None:
        status, data = await self._post(
            f"{self._ingress}/{agent.type}/{_path(agent.key)}/set_state",
            json.dumps(dict(state)).encode(),
            None,
            self._default_timeout,
        )
        if status == 404:
            raise AgentTypeNotFound(f"no Restate deployment serves agent type {agent.type!r}")
        if status != 200:
            raise Unavailable(f"cannot load the state of {agent}: {status} {data!r}")

    async def save_state(self) -> Mapping[str, Any]:
        names = ", ".join(_sql.literal(t) for t in self._types) or "''"
        rows = await self._query(
            "SELECT service_name, service_key FROM state "
            f"WHERE key = 'state' AND service_name IN ({names})"
        )
        saved: dict[str, Any] = {}
        for row in rows:
            agent = AgentId(row["service_name"], row["service_key"])
            saved[str(agent)] = await self.agent_save_state(agent)
        return saved

    async def load_state(self, state: Mapping[str, Any]) -> None:
        for name, agent_state in state.items():
            await self.agent_load_state(AgentId.parse(name), agent_state)


def _subscribers(subscriptions: list[dict[str, str]], topic: TopicId) -> list[AgentId]:
    """The agents a message on `topic` goes to, one per matching agent type."""
    found: dict[str, AgentId] = {}
    for entry in subscriptions:
        if entry["kind"] == "type":
            matches = topic.type == entry["topic"]
        else:
            matches = topic.type.startswith(entry["topic"])
        if matches:
            found.setdefault(entry["agent_type"], AgentId(entry["agent_type"], topic.source))
    return list(found.values())


def _path(key: str) -> str:
    """An object key as one segment of an ingress URL: keys may hold '/', '?' or '#'."""
    return quote(key, safe="")
