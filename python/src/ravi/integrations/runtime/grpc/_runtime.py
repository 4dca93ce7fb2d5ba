"""GrpcRuntime: a node of the ravi mesh, on grpc.aio."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from ravi._agent import AgentType, BaseAgent
from ravi._cancellation import CancellationToken
from ravi._host import AgentHost, _Publication, nested_call, new_message_id
from ravi._ids import AgentId, TopicId
from ravi._interceptors import ForwardInput, Interceptor, PublishInput, SendInput, chain
from ravi._serialization import JSON, MessageRegistry
from ravi._serialization import registry as default_registry
from ravi._subscriptions import Subscription
from ravi.errors import (
    AgentTypeNotFound,
    AlreadyExists,
    BadPayload,
    Cancelled,
    Code,
    DeadlineExceeded,
    ForwardingLoop,
    HopLimitExceeded,
    PeerUnavailable,
    RaviError,
    Unavailable,
    Unimplemented,
    from_grpc_error,
)
from ravi.integrations.runtime.grpc import _wire
from ravi.integrations.runtime.grpc._peers import (
    Peer,
    PeerDiscovery,
    Peers,
    UseUnary,
    dns_target,
)
from ravi.integrations.runtime.grpc._security import BearerAuth, TlsConfig
from ravi.integrations.runtime.grpc._service import AgentService, Streams
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2
from ravi.runtime import BaseRuntime
from ravi.runtime._local import DEFAULT_MAILBOX_CAPACITY, DEFAULT_TIMEOUT

logger = logging.getLogger("ravi.grpc")

SERVICE_NAME: str = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_HOP_LIMIT = 8
DEFAULT_GRACE_PERIOD = 5.0
_JSON_OBJECT = "google.protobuf.Struct"
_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_TRACE_KEYS = ("traceparent", "tracestate")


class GrpcRuntime(BaseRuntime):
    """GrpcRuntime is a node of the ravi mesh: a gRPC server for its agents, a client of its peers.

    Agents registered here are reachable from every peer over
    `ravi.mesh.v1.AgentService`; a message for an agent type hosted elsewhere
    goes to the peer hosting it (rendezvous hashing on the key when several
    do). Without a port the runtime serves nothing: a client that sends and
    publishes into the mesh (and may still host agents of its own).

    Args:
        host: the address to listen on (loopback by default).
        port: the port to listen on (0 picks a free one); None for a client only.
        remote_peers: peer name -> "host:port" of nodes to connect to. An
            address written "dns:HOST:PORT" names a pool of nodes: every
            address HOST resolves to is a peer, kept current as `discovery` says.
        node_id: this node's id in the mesh; when None, the advertised address
            if any, else "host:port" (or a random id for a client).
        advertise: the address peers should dial to reach this node, when it
            differs from host:port (behind NAT, in a pod).
        token: a bearer token every caller of this node must present; also
            presented to peers unless `peer_token` says otherwise.
        peer_token: the bearer token to present to peers.
        tls: serve with TLS (mutual when `tls.ca_file` is set).
        peer_tls: dial peers with TLS.
        health_without_auth: let health checks through without a token.
        default_timeout: seconds a send may take when it names no timeout.
        mailbox_capacity: messages queued or running per local agent instance.
        max_message_bytes: the largest message the node sends or accepts.
        hop_limit: how many nodes may forward one request.
        grace_period: seconds in-flight calls get to finish on `stop()`.
        interceptors: hooks around sends, handler calls and publishes.
        registry: the message registry for payloads (the process-wide one by default).
        discovery: how "dns:" peers are resolved and how often (every 10 s by default).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        remote_peers: Mapping[str, str] | None = None,
        *,
        node_id: str | None = None,
        advertise: str | None = None,
        token: str | None = None,
        peer_token: str | None = None,
        tls: TlsConfig | None = None,
        peer_tls: TlsConfig | None = None,
        health_without_auth: bool = False,
        default_timeout: float = DEFAULT_TIMEOUT,
        mailbox_capacity: int = DEFAULT_MAILBOX_CAPACITY,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        hop_limit: int = DEFAULT_HOP_LIMIT,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        interceptors: Sequence[Interceptor] = (),
        registry: MessageRegistry | None = None,
        discovery: PeerDiscovery | None = None,
    ) -> None:
        self._listen_host = host
        self._port = port
        self._node_id = node_id
        self._advertise = advertise
        self._token = token
        self._tls = tls
        self._peer_tls = peer_tls
        self._health_without_auth = health_without_auth
        self._default_timeout = default_timeout
        self._max_message_bytes = max_message_bytes
        self._hop_limit = hop_limit
        self._grace_period = grace_period
        self._registry = registry or default_registry
        self._host = AgentHost(
            self,
            default_timeout=default_timeout,
            mailbox_capacity=mailbox_capacity,
            interceptors=interceptors,
        )
        self._send_chain = (
            chain(interceptors, lambda i: i.send, self._send_input) if interceptors else None
        )
        self._publish_chain = (
            chain(interceptors, lambda i: i.publish, self._publish_input) if interceptors else None
        )
        self._forward_chain = (
            chain(interceptors, lambda i: i.forward, self._forward_input) if interceptors else None
        )
        presented = peer_token if peer_token is not None else token
        self._peers = Peers(
            self,
            make_channel=self._channel,
            metadata=[("authorization", f"Bearer {presented}")] if presented else [],
            discovery=discovery,
        )
        for name, address in (remote_peers or {}).items():
            target = dns_target(address)
            if target is None:
                self._peers.add(name, address)
            else:
                self._peers.add_dns(name, *target)
        self._streams = Streams()
        self._server: grpc.aio.Server | None = None
        self._service: AgentService | None = None
        self._health: HealthServicer | None = None
        self._incarnation = uuid.uuid4().hex[:12]
        self._revision = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._peers.on_change(self._routes_changed)
        self._routes_changed_event: asyncio.Event | None = None

    # --- identity ------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id in the mesh."""
        if self._node_id is None:
            if self._port is None:
                self._node_id = f"client-{uuid.uuid4().hex[:8]}"
            elif self._advertise:
                # Every replica of a pod listens on the same 0.0.0.0:PORT; what
                # tells them apart is the address each advertises.
                self._node_id = self._advertise
            elif self._port != 0:
                self._node_id = f"{self._listen_host}:{self._port}"
            else:
                raise Unavailable("the node id of a node on port 0 is known once it started")
        return self._node_id

    @property
    def port(self) -> int | None:
        """The port the node listens on (the real one once started), None for a client."""
        return self._port

    @property
    def address(self) -> str:
        """The address peers dial to reach this node; empty for a client."""
        if self._port is None:
            return ""
        return self._advertise or f"{self._listen_host}:{self._port}"

    def node_info(self) -> types_pb2.NodeInfo:
        """This node's description, as Describe answers it."""
        registrations = self._host.registrations
        return types_pb2.NodeInfo(
            node_id=self.node_id,
            contract_version=_wire.CONTRACT_VERSION,
            agent_types=[
                types_pb2.AgentTypeInfo(
                    agent_type=agent_type,
                    handled_types=[
                        self._registry.type_name(t)
                        for t in registration.agent_class.handled_types()
                    ],
                )
                for agent_type, registration in registrations.items()
            ],
            subscriptions=[
                _wire.subscription_to_wire(s) for s in self._host.subscriptions.values()
            ],
            language=_wire.LANGUAGE,
            address=self.address,
            incarnation=self._incarnation,
            revision=self._revision,
        )

    def subscription_filters(self) -> list[types_pb2.TopicFilter]:
        """The filters this node subscribes to its peers with."""
        return [_wire.filter_of(s) for s in self._host.subscriptions.values()]

    def peers(self) -> list[Peer]:
        """This node's peers and what they host (for tests and operations)."""
        return self._peers.all()

    def _changed(self) -> None:
        self._revision += 1
        if self._host.running:
            self._streams.node_changed(self.node_info())

    def _routes_changed(self) -> None:
        if self._routes_changed_event is not None:
            self._routes_changed_event.set()

    async def wait_for_route(self, agent_type: str, *, timeout: float = 5.0) -> None:
        """Wait until this node can reach `agent_type` (locally or on a connected peer)."""
        event = self._routes_changed_event = self._routes_changed_event or asyncio.Event()
        async with asyncio.timeout(timeout):
            while not (self._host.hosts(agent_type) or self._peers.hosting(agent_type)):
                event.clear()
                await event.wait()

    async def wait_for_peers(self, *, timeout: float = 10.0) -> None:
        """Wait until every configured peer is connected (and described)."""
        event = self._routes_changed_event = self._routes_changed_event or asyncio.Event()
        async with asyncio.timeout(timeout):
            while not all(peer.connected or peer.is_self for peer in self._peers.all()):
                event.clear()
                await event.wait()

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._host.running:
            return
        self._host.start()
        if self._port is not None:
            await self._serve()
        await self._peers.resolve()
        self._peers.start()

    async def _serve(self) -> None:
        options = [
            ("grpc.max_receive_message_length", self._max_message_bytes),
            ("grpc.max_send_message_length", self._max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
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
        self._service = AgentService(self, self._streams)
        agent_service_pb2_grpc.add_AgentServiceServicer_to_server(self._service, server)
        self._health = HealthServicer()
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
        target = f"{self._listen_host}:{self._port}"
        if self._tls is not None:
            port = server.add_secure_port(target, self._tls.server_credentials())
        else:
            port = server.add_insecure_port(target)
        if port == 0:
            raise Unavailable(f"cannot listen on {target}")
        self._port = port
        await server.start()
        self._server = server
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        if not self._host.running:
            return
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        self._streams.end_all()
        if self._service is not None:
            self._service.drain()
        if self._server is not None:
            await self._server.stop(self._grace_period)
            self._server = None
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._peers.stop()
        await self._host.stop()

    async def stop_when_idle(self, *, timeout: float | None = None) -> None:
        await self._host.wait_idle(timeout)
        await self.stop()

    def _channel(self, address: str) -> grpc.aio.Channel:
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", self._max_message_bytes),
            ("grpc.max_send_message_length", self._max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if self._peer_tls is not None:
            if self._peer_tls.server_name:
                options.append(("grpc.ssl_target_name_override", self._peer_tls.server_name))
            return grpc.aio.secure_channel(
                address, self._peer_tls.channel_credentials(), options=options
            )
        return grpc.aio.insecure_channel(address, options=options)

    # --- registration ------------------------------------------------------------

    async def register_factory(
        self,
        agent_type: str,
        factory: Callable[[], BaseAgent | Awaitable[BaseAgent]],
        *,
        agent_class: type[BaseAgent],
    ) -> AgentType:
        self._host.register(agent_type, factory, agent_class)
        for message_type in agent_class.handled_types():
            self._registry.type_name(message_type)
        self._changed()
        return AgentType(agent_type)

    async def add_subscription(self, subscription: Subscription) -> None:
        self._host.add_subscription(subscription)
        self._changed()
        self._peers.resubscribe()

    async def remove_subscription(self, subscription_id: str) -> None:
        self._host.remove_subscription(subscription_id)
        self._changed()
        self._peers.resubscribe()

    # --- sending -------------------------------------------------------------------

    def send_message(  # type: ignore[override]
        self,
        message: Any,
        recipient: AgentId,
        *,
        sender: AgentId | None = None,
        timeout: float | None = None,
        cancellation: CancellationToken | None = None,
        message_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Awaitable[Any]:
        if self._send_chain is not None:
            return self._send_chain(
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
        return self._send(message, recipient, sender, timeout, cancellation, message_id, metadata)

    def _send_input(self, input: SendInput) -> Awaitable[Any]:
        return self._send(
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
        if self._host.hosts(recipient.type):
            return await self._host.send(
                message,
                recipient,
                sender=sender,
                timeout=timeout,
                cancellation=cancellation,
                message_id=message_id,
                metadata=metadata,
            )
        remaining, chain_keys = self._remaining(timeout)
        request = agent_service_pb2.SendRequest(
            recipient=_wire.agent_id_to_wire(recipient),
            envelope=types_pb2.Envelope(
                message_id=message_id or new_message_id(),
                sender=_wire.agent_id_to_wire(sender) if sender is not None else None,
                payload=_wire.encode(self._registry, message),
                metadata=metadata or {},
                call_chain=_wire.chain_to_wire(chain_keys),
            ),
        )
        response = await self._call_peer(request, remaining, frozenset(), cancellation)
        if not response.HasField("result"):
            return None
        return _wire.decode(self._registry, response.result)

    def _remaining(self, timeout: float | None) -> tuple[float, tuple[tuple[str, str], ...]]:
        """The seconds a remote call may take and the call chain it carries."""
        remaining = self._default_timeout if timeout is None else timeout
        deadline, chain_keys = nested_call()
        if deadline is not None:
            remaining = min(remaining, deadline - self._host.loop.time())
        if remaining <= 0:
            raise DeadlineExceeded("the caller's deadline passed before the call was made")
        return remaining, chain_keys

    async def _call_peer(
        self,
        request: agent_service_pb2.SendRequest,
        remaining: float,
        exclude: frozenset[str],
        cancellation: CancellationToken | None = None,
    ) -> agent_service_pb2.SendResponse:
        recipient = request.recipient
        peer = self._peers.route(recipient.type, recipient.key, exclude)
        if peer is None:
            raise AgentTypeNotFound(
                f"no node hosts agent type {recipient.type!r} "
                f"(this node is {self.node_id}; {len(self._peers.connected())} peer(s) connected)"
            )
        if cancellation is None and not peer.connection.unsupported:
            try:
                outcome = await peer.connection.send(request, remaining, self._host.deadlines)
            except UseUnary:
                pass
            else:
                if outcome.HasField("failure"):
                    raise _wire.error_of(outcome.failure)
                return outcome.result
        call = peer.stub.Send(
            request, timeout=remaining, metadata=self._outgoing_metadata(request.envelope)
        )
        unlink = cancellation.add_callback(call.cancel) if cancellation is not None else None
        try:
            return await call
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if (
                cancellation is not None
                and cancellation.cancelled
                and not (task is not None and task.cancelling())
            ):
                raise Cancelled("the call was cancelled through its cancellation token") from None
            raise
        except grpc.aio.AioRpcError as error:
            raise _peer_error(error, peer) from None
        finally:
            if unlink is not None:
                unlink()

    def _outgoing_metadata(self, envelope: types_pb2.Envelope) -> list[tuple[str, str]]:
        metadata = list(self._peers.metadata)
        metadata += [(k, envelope.metadata[k]) for k in _TRACE_KEYS if k in envelope.metadata]
        return metadata

    # --- publishing --------------------------------------------------------------

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
        if self._publish_chain is not None:
            await self._publish_chain(publication)
        else:
            await self._publish_input(publication)

    async def _publish_input(self, input: PublishInput) -> None:
        await self._host.publish(
            input.message,
            input.topic,
            sender=input.sender,
            message_id=input.message_id,
            metadata=input.metadata,
            timeout=input.timeout,
            remote=self._deliver_remote,
        )
        if self._server is not None:
            subscribers = self._streams.matching(input.topic.type, origin=None)
            if subscribers:
                self._streams.push(subscribers, self._event(input))
            return
        await self._publish_to_peers(input)

    def _event(self, input: PublishInput) -> agent_service_pb2.Event:
        return agent_service_pb2.Event(
            topic=_wire.topic_to_wire(input.topic),
            envelope=types_pb2.Envelope(
                message_id=input.message_id,
                sender=_wire.agent_id_to_wire(input.sender) if input.sender else None,
                payload=_wire.encode(self._registry, input.message),
                metadata=input.metadata,
            ),
            origin_node_id=self.node_id,
        )

    async def _publish_to_peers(self, input: PublishInput) -> None:
        """A client's publish: to each peer whose subscriptions match, node scope."""
        targets = [
            peer
            for peer in self._peers.connected()
            if peer.info is not None
            and any(_wire.matches(s.filter, input.topic.type) for s in peer.info.subscriptions)
        ]
        if not targets:
            return
        event = self._event(input)
        request = agent_service_pb2.PublishRequest(
            topic=event.topic,
            envelope=event.envelope,
            scope=agent_service_pb2.PUBLISH_SCOPE_NODE,
        )
        timeout = self._default_timeout if input.timeout is None else input.timeout
        results = await asyncio.gather(
            *(
                peer.stub.Publish(
                    request, timeout=timeout, metadata=self._outgoing_metadata(event.envelope)
                )
                for peer in targets
            ),
            return_exceptions=True,
        )
        for peer, result in zip(targets, results, strict=True):
            if isinstance(result, grpc.aio.AioRpcError):
                raise _peer_error(result, peer)
            if isinstance(result, BaseException):
                raise result

    def _deliver_remote(self, agent_type: str, publication: _Publication) -> None:
        """Hand a publication for an agent type hosted elsewhere to the node hosting it."""
        topic = publication.topic
        assert topic is not None
        request = agent_service_pb2.SendRequest(
            recipient=types_pb2.AgentId(type=agent_type, key=topic.source),
            envelope=types_pb2.Envelope(
                message_id=publication.message_id,
                sender=(_wire.agent_id_to_wire(publication.sender) if publication.sender else None),
                payload=_wire.encode(self._registry, publication.message),
                metadata=publication.metadata,
            ),
            topic=_wire.topic_to_wire(topic),
        )
        task = asyncio.get_running_loop().create_task(self._deliver_in_background(request))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deliver_in_background(self, request: agent_service_pb2.SendRequest) -> None:
        try:
            await self._call_peer(request, self._default_timeout, frozenset())
        except RaviError as error:
            logger.warning(
                "could not deliver %s published on %s/%s to %s/%s: %s",
                request.envelope.payload.type,
                request.topic.type,
                request.topic.source,
                request.recipient.type,
                request.recipient.key,
                error,
            )

    async def deliver_event(self, event: agent_service_pb2.Event) -> None:
        """Deliver an event that arrived on a peer's stream to this node's subscribers."""
        try:
            message = _wire.decode(self._registry, event.envelope.payload)
            topic = _wire.topic_from_wire(event.topic)
            sender = (
                _wire.agent_id_from_wire(event.envelope.sender)
                if event.envelope.HasField("sender")
                else None
            )
        except RaviError as error:
            logger.warning("dropping event from %s: %s", event.origin_node_id, error)
            return
        await self._host.publish(
            message,
            topic,
            sender=sender,
            message_id=event.envelope.message_id or None,
            metadata=dict(event.envelope.metadata),
            timeout=None,
            remote=self._deliver_remote,
        )

    # --- serving ---------------------------------------------------------------------

    async def serve_send(
        self,
        request: agent_service_pb2.SendRequest,
        remaining: float | None,
        trace: Mapping[str, str],
    ) -> agent_service_pb2.SendResponse:
        """Handle a Send from another node or a client (docs/protocol.md, in that order).

        Args:
            request: the Send, from a unary call or a Connect frame.
            remaining: seconds left before the caller's deadline, if it has one.
            trace: the trace context of the call's gRPC metadata.
        """
        recipient = _wire.agent_id_from_wire(request.recipient, "recipient")
        if not self._host.hosts(recipient.type):
            return await self._forward(request, remaining)
        envelope = request.envelope
        message = _wire.decode(self._registry, envelope.payload)
        sender = (
            _wire.agent_id_from_wire(envelope.sender, "sender")
            if envelope.HasField("sender")
            else None
        )
        metadata = {**trace, **envelope.metadata}
        if request.HasField("topic"):
            await self._host.publish(
                message,
                _wire.topic_from_wire(request.topic),
                sender=sender,
                message_id=envelope.message_id or None,
                metadata=metadata,
                timeout=remaining,
                agent_types=(recipient.type,),
            )
            return agent_service_pb2.SendResponse(node_id=self.node_id)
        result = await self._host.send(
            message,
            recipient,
            sender=sender,
            timeout=remaining,
            cancellation=None,
            message_id=envelope.message_id or None,
            metadata=metadata,
            call_chain=_wire.chain_from_wire(envelope.call_chain),
        )
        if result is None:
            return agent_service_pb2.SendResponse(node_id=self.node_id)
        return agent_service_pb2.SendResponse(
            result=_wire.encode(self._registry, result), node_id=self.node_id
        )

    async def _forward(
        self, request: agent_service_pb2.SendRequest, remaining: float | None
    ) -> agent_service_pb2.SendResponse:
        visited = frozenset(request.route.visited_node_ids)
        if self.node_id in visited:
            raise ForwardingLoop(
                f"the request already passed through node {self.node_id} "
                f"(route: {' -> '.join(request.route.visited_node_ids)})"
            )
        if request.route.hop_count >= self._hop_limit:
            raise HopLimitExceeded(
                f"the request was forwarded {request.route.hop_count} times "
                f"(limit {self._hop_limit})"
            )
        forwarded = agent_service_pb2.SendRequest()
        forwarded.CopyFrom(request)
        forwarded.route.hop_count += 1
        forwarded.route.visited_node_ids.append(self.node_id)
        timeout = self._default_timeout if remaining is None else remaining
        if self._forward_chain is None:
            return await self._call_peer(forwarded, timeout, visited | {self.node_id})
        hop = ForwardInput(
            _wire.agent_id_from_wire(request.recipient),
            forwarded.route.hop_count,
            forwarded,
            timeout,
            dict(request.envelope.metadata),
        )
        response: agent_service_pb2.SendResponse = await self._forward_chain(hop)
        return response

    async def _forward_input(self, hop: ForwardInput) -> agent_service_pb2.SendResponse:
        forwarded: agent_service_pb2.SendRequest = hop.request
        exclude = frozenset(forwarded.route.visited_node_ids)
        peer = self._peers.route(hop.recipient.type, hop.recipient.key, exclude)
        hop.next_node = peer.node_id if peer is not None else ""
        return await self._call_peer(forwarded, hop.timeout, exclude)

    async def serve_publish(
        self,
        request: agent_service_pb2.PublishRequest,
        remaining: float | None,
        trace: Mapping[str, str],
    ) -> agent_service_pb2.PublishResponse:
        topic = _wire.topic_from_wire(request.topic)
        envelope = request.envelope
        message = _wire.decode(self._registry, envelope.payload)
        sender = (
            _wire.agent_id_from_wire(envelope.sender, "sender")
            if envelope.HasField("sender")
            else None
        )
        metadata = {**trace, **envelope.metadata}
        local = await self._host.publish(
            message,
            topic,
            sender=sender,
            message_id=envelope.message_id or None,
            metadata=metadata,
            timeout=remaining,
            remote=self._deliver_remote,
        )
        streamed = 0
        if request.scope != agent_service_pb2.PUBLISH_SCOPE_NODE:
            subscribers = self._streams.matching(topic.type, origin=None)
            if subscribers:
                event = agent_service_pb2.Event(
                    topic=request.topic, envelope=envelope, origin_node_id=self.node_id
                )
                event.envelope.metadata.update(metadata)
                streamed = self._streams.push(subscribers, event)
        return agent_service_pb2.PublishResponse(local_deliveries=local, stream_deliveries=streamed)

    def peer_described_us(self, caller: types_pb2.NodeInfo) -> None:
        self._peers.learn(caller)

    # --- promises ----------------------------------------------------------------------

    async def resolve_promise(self, name: str, value: Any) -> None:
        already = False
        try:
            self._host.resolve_promise(name, value)
        except AlreadyExists:
            already = True
        request = agent_service_pb2.ResolvePromiseRequest(
            name=name, value=_wire.encode(self._registry, value)
        )
        peers = self._peers.connected()
        results = await asyncio.gather(
            *(
                peer.stub.ResolvePromise(
                    request, timeout=self._default_timeout, metadata=self._peers.metadata
                )
                for peer in peers
            ),
            return_exceptions=True,
        )
        for peer, result in zip(peers, results, strict=True):
            if isinstance(result, grpc.aio.AioRpcError):
                error = _peer_error(result, peer)
                if isinstance(error, AlreadyExists):
                    already = True
                elif not isinstance(error, Unimplemented):
                    logger.warning("peer %s could not resolve promise %r: %s", peer, name, error)
            elif isinstance(result, BaseException):
                raise result
        if already:
            raise AlreadyExists(f"promise {name!r} is resolved already")

    async def serve_resolve_promise(
        self, request: agent_service_pb2.ResolvePromiseRequest
    ) -> agent_service_pb2.ResolvePromiseResponse:
        value = _wire.decode(self._registry, request.value)
        waiting = self._host.promise_awaited(request.name)
        self._host.resolve_promise(request.name, value)
        return agent_service_pb2.ResolvePromiseResponse(waiting=waiting)

    # --- state ---------------------------------------------------------------------------

    def mailbox_depths(self) -> dict[str, int]:
        """Messages queued or running in this runtime's mailboxes, per agent type."""
        return self._host.depths()

    async def agent_save_state(self, agent: AgentId) -> Mapping[str, Any]:
        if self._host.hosts(agent.type):
            return await self._host.save_agent(agent)
        peer = self._route_state(agent)
        try:
            response = await peer.stub.SaveState(
                agent_service_pb2.SaveStateRequest(agent=_wire.agent_id_to_wire(agent)),
                timeout=self._default_timeout,
                metadata=self._peers.metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise _peer_error(error, peer) from None
        return dict(_json(response.states[str(agent)]))

    async def agent_load_state(self, agent: AgentId, state: Mapping[str, Any]) -> None:
        await self.load_state({str(agent): state})

    async def save_state(self) -> Mapping[str, Any]:
        states: dict[str, Any] = {
            str(mailbox.agent_id): await self._host.save_agent(mailbox.agent_id)
            for mailbox in list(self._host.agents())
        }
        for peer in self._peers.connected():
            try:
                response = await peer.stub.SaveState(
                    agent_service_pb2.SaveStateRequest(),
                    timeout=self._default_timeout,
                    metadata=self._peers.metadata,
                )
            except grpc.aio.AioRpcError as error:
                raise _peer_error(error, peer) from None
            states.update({key: _json(payload) for key, payload in response.states.items()})
        return states

    async def load_state(self, state: Mapping[str, Any]) -> None:
        remote: dict[str, tuple[Peer, agent_service_pb2.LoadStateRequest]] = {}
        for key, agent_state in state.items():
            agent = AgentId.parse(key)
            if self._host.hosts(agent.type):
                await self._host.load_agent(agent, agent_state)
                continue
            peer = self._route_state(agent)
            request = remote.setdefault(peer.node_id, (peer, agent_service_pb2.LoadStateRequest()))[
                1
            ]
            request.states[key].CopyFrom(_json_payload(agent_state))
        for peer, request in remote.values():
            try:
                await peer.stub.LoadState(
                    request, timeout=self._default_timeout, metadata=self._peers.metadata
                )
            except grpc.aio.AioRpcError as error:
                raise _peer_error(error, peer) from None

    def _route_state(self, agent: AgentId) -> Peer:
        peer = self._peers.route(agent.type, agent.key)
        if peer is None:
            raise AgentTypeNotFound(f"no node hosts agent type {agent.type!r}")
        return peer

    async def serve_save_state(
        self, request: agent_service_pb2.SaveStateRequest
    ) -> agent_service_pb2.SaveStateResponse:
        response = agent_service_pb2.SaveStateResponse()
        if request.HasField("agent"):
            agent = _wire.agent_id_from_wire(request.agent)
            if not self._host.hosts(agent.type):
                raise AgentTypeNotFound(f"node {self.node_id} does not host {agent.type!r}")
            agents = [agent]
        else:
            agents = [mailbox.agent_id for mailbox in list(self._host.agents())]
        for agent in agents:
            response.states[str(agent)].CopyFrom(_json_payload(await self._host.save_agent(agent)))
        return response

    async def serve_load_state(
        self, request: agent_service_pb2.LoadStateRequest
    ) -> agent_service_pb2.LoadStateResponse:
        for key, payload in request.states.items():
            agent = AgentId.parse(key)
            if not self._host.hosts(agent.type):
                raise AgentTypeNotFound(f"node {self.node_id} does not host {agent.type!r}")
            await self._host.load_agent(agent, _json(payload))
        return agent_service_pb2.LoadStateResponse()


def _peer_error(error: grpc.aio.AioRpcError, peer: Peer) -> RaviError:
    converted = from_grpc_error(error)
    if converted.code is Code.UNAVAILABLE and converted.reason is None:
        return PeerUnavailable(
            f"node {peer.node_id or peer.name} at {peer.address} is unavailable: {error.details()}",
            remote=True,
        )
    return converted


def _json(payload: types_pb2.Payload) -> Any:
    try:
        return json.loads(payload.data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadPayload(f"invalid JSON in a {payload.type} payload: {exc}") from exc


def _json_payload(value: Mapping[str, Any]) -> types_pb2.Payload:
    return types_pb2.Payload(
        type=_JSON_OBJECT, content_type=JSON, data=json.dumps(dict(value)).encode()
    )
