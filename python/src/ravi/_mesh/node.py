"""MeshNode: one node of the ravi mesh, whatever transport carries its calls.

The node owns the `AgentHost` (where agents are activated and their handlers
run), the peers and the routing table (`Peers`), the Subscribe streams it
serves (`Streams`), and the interceptor chains. Its outbound side is what
`GrpcRuntime` delegates `BaseRuntime`'s methods to; its inbound side is the
`NodeHandler` a transport's server calls (`serve_*`). docs/development.md draws
the path of one send through it.

The hot path is `send_message`: a local recipient runs in the caller's task
(`AgentHost.send`), a remote one is one `PeerTransport.send`. Without
interceptors neither builds an input object.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from ravi._cancellation import CancellationToken
from ravi._hints import did_you_mean
from ravi._host import AgentHost, Lifecycle, _Publication, nested_call
from ravi._ids import AgentId, AgentType, new_message_id
from ravi._interceptors import (
    ForwardInput,
    Interceptor,
    PublishInput,
    QuickSend,
    SendInput,
    chain,
    quick,
)
from ravi._mesh import codec
from ravi._mesh.discovery import PeerDiscovery, dns_target
from ravi._mesh.peers import Peer, Peers
from ravi._mesh.streams import STREAM_QUEUE, Streams, backed_up, catch_up
from ravi._mesh.transport import Dialer
from ravi._serialization import MessageRegistry
from ravi._subscriptions import Subscription
from ravi.errors import (
    AgentTypeNotFound,
    AlreadyExists,
    BadPayload,
    DeadlineExceeded,
    ForwardingLoop,
    HopLimitExceeded,
    PeerUnavailable,
    RaviError,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from ravi.mesh.v1 import agent_service_pb2, types_pb2
from ravi.runtime._base import BaseRuntime

logger = logging.getLogger("ravi.mesh")


class MeshNode:
    """MeshNode routes, forwards and serves for one node; a transport carries its calls.

    Args:
        runtime: the public runtime agents are bound to (their `self.runtime`).
        dial: makes the transport to a peer's address.
        listen_host: the host the node's server listens on.
        port: the port it listens on (0 until the server knows it), None for a client.
        node_id: the node's id; when None, derived from the address (see `node_id`).
        advertise: the address peers should dial, when it differs from listen_host:port.
        remote_peers: peer name -> address ("host:port", or "dns:HOST:PORT" for a pool).
        default_timeout: seconds a call may take when it names no timeout.
        mailbox_capacity: messages queued or running per local agent instance.
        interceptors: hooks around sends, handler calls, publishes and forwards.
        registry: where message types are looked up by name.
        discovery: how "dns:" peers are resolved.
        lifecycle: passivation settings and the state store of the AgentHost.
    """

    def __init__(
        self,
        runtime: BaseRuntime,
        *,
        dial: Dialer,
        listen_host: str,
        port: int | None,
        node_id: str | None,
        advertise: str | None,
        remote_peers: Mapping[str, str],
        default_timeout: float,
        mailbox_capacity: int,
        interceptors: Sequence[Interceptor],
        registry: MessageRegistry,
        discovery: PeerDiscovery | None,
        lifecycle: Lifecycle,
    ) -> None:
        self._listen_host = listen_host
        self.port = port
        self._node_id = node_id
        self._advertise = advertise
        self._default_timeout = default_timeout
        self._registry = registry
        self.host = AgentHost(
            runtime,
            default_timeout=default_timeout,
            mailbox_capacity=mailbox_capacity,
            interceptors=interceptors,
            lifecycle=lifecycle,
        )
        # Interceptors hook in here (and in AgentHost for `handle`): a chain is
        # built only when there are interceptors, so without them the hot path
        # never allocates an input.
        self._send_chain = (
            chain(interceptors, lambda i: i.send, self._send_input) if interceptors else None
        )
        self._publish_chain = (
            chain(interceptors, lambda i: i.publish, self._publish_input) if interceptors else None
        )
        self._forward_chain = (
            chain(interceptors, lambda i: i.forward, self._forward_input) if interceptors else None
        )
        self._quick_send: QuickSend | None = quick(interceptors, "send")
        self.peers = Peers(self, dial=dial, discovery=discovery)
        for name, address in remote_peers.items():
            target = dns_target(address)
            if target is None:
                self.peers.add(name, address)
            else:
                self.peers.add_dns(name, *target)
        self.streams = Streams()
        self.serving = False
        """Whether a server serves this node (else it is a client: it publishes to peers)."""
        self._incarnation = uuid.uuid4().hex[:12]
        self._revision = 0
        self._background: set[asyncio.Task[Any]] = set()
        self.peers.on_change(self._routes_changed)
        self._routes_changed_event: asyncio.Event | None = None
        self._pooled = False
        """This node is a member of a `dns:` pool: keys of its types have an owner among members."""
        self._rebalancer: asyncio.Task[None] | None = None
        self._rebalance_again = False
        self.host.on_activated = self._activated
        self.handed_over = 0
        """Agent instances this node passivated because another member of its pool owns them."""

    # --- identity ------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id in the mesh."""
        if self._node_id is None:
            if self.port is None:
                self._node_id = f"client-{uuid.uuid4().hex[:8]}"
            elif self._advertise:
                # Every replica of a pod listens on the same 0.0.0.0:PORT; what
                # tells them apart is the address each advertises.
                self._node_id = self._advertise
            elif self.port != 0:
                self._node_id = f"{self._listen_host}:{self.port}"
            else:
                raise Unavailable("the node id of a node on port 0 is known once it started")
        return self._node_id

    @property
    def address(self) -> str:
        """The address peers dial to reach this node; empty for a client."""
        if self.port is None:
            return ""
        return self._advertise or f"{self._listen_host}:{self.port}"

    def node_info(self) -> types_pb2.NodeInfo:
        """This node's description, as Describe answers it."""
        registrations = self.host.registrations
        active = self.host.active
        return types_pb2.NodeInfo(
            node_id=self.node_id,
            contract_version=codec.CONTRACT_VERSION,
            agent_types=[
                types_pb2.AgentTypeInfo(
                    agent_type=agent_type,
                    handled_types=[
                        self._registry.type_name(t)
                        for t in registration.agent_class.handled_types()
                    ],
                    active_instances=active.get(agent_type, 0),
                )
                for agent_type, registration in registrations.items()
            ],
            subscriptions=[codec.subscription_to_wire(s) for s in self.host.subscriptions.values()],
            language=codec.LANGUAGE,
            address=self.address,
            incarnation=self._incarnation,
            revision=self._revision,
        )

    def subscription_filters(self) -> list[types_pb2.TopicFilter]:
        """The filters this node subscribes to its peers with."""
        return [codec.filter_of(s) for s in self.host.subscriptions.values()]

    def _changed(self) -> None:
        self._revision += 1
        if self.host.running:
            self.streams.node_changed(self.node_info())

    def _routes_changed(self) -> None:
        self._pooled = self.peers.pooled()
        if self._pooled and self.host.running:
            self._rebalance()
        if self._routes_changed_event is not None:
            self._routes_changed_event.set()

    # --- pools: placement among members, hand-over on rebalancing ---------------

    def _placed_elsewhere(self, agent_type: str, key: str) -> bool:
        """Whether another member of this node's pool owns an agent of a type hosted here."""
        return self.host.hosts(agent_type) and self.peers.owner(agent_type, key) is not None

    def _activated(self, key: tuple[str, str]) -> None:
        # A message this node took while it owned the key may finish activating
        # it after the pool changed (the activation waits for the former owner
        # to let the key go): hand it over too, or it would stay here, holding
        # its key in the store, until its idle timeout.
        if self._pooled and self._placed_elsewhere(*key):
            self._rebalance()

    def _rebalance(self) -> None:
        """Hand over the active agents another member of the pool owns now (in the background)."""
        if self._rebalancer is not None and not self._rebalancer.done():
            self._rebalance_again = True
            return
        task = asyncio.get_running_loop().create_task(self._hand_over(), name="ravi-rebalance")
        self._rebalancer = task
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _hand_over(self) -> None:
        """Passivate (saving their state) the instances whose key moved, once each is idle.

        Messages for a moved key go to its new owner from now on (`_send`,
        `serve_send`), so the ones queued or running here finish first; the
        new owner's activation waits until this node let the agent go.
        """
        host = self.host
        delay = 0.002
        while True:
            self._rebalance_again = False
            moving = [m for m in host.agents() if self._placed_elsewhere(*m.key)]
            saving: list[asyncio.Future[None]] = []
            handed = 0
            while moving and host.running:
                busy = []
                for mailbox in moving:
                    if mailbox.retired or not self._placed_elsewhere(*mailbox.key):
                        continue
                    if mailbox.pending or mailbox.busy is not None or mailbox.queue:
                        busy.append(mailbox)
                        continue
                    handed += 1
                    task = host.passivate(mailbox, "moved")
                    if task is not None:
                        saving.append(task)
                moving = busy
                if moving:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
            await asyncio.gather(*saving, return_exceptions=True)
            if handed:
                self.handed_over += handed
                logger.info(
                    "handed over %d agent(s) to other members of the pool (%d so far)",
                    handed,
                    self.handed_over,
                )
            if not self._rebalance_again:
                return

    def reaches(self, agent_type: str) -> bool:
        """Whether a send to `agent_type` has somewhere to go now (here or a connected peer)."""
        return self.host.hosts(agent_type) or bool(self.peers.hosting(agent_type))

    async def wait_for_routes(self, agent_types: Sequence[str], timeout: float) -> None:
        """Wait until every one of `agent_types` is reachable.

        Raises:
            TimeoutError: one was still unreachable after `timeout` seconds; the
                message names it and says what each peer hosts.
        """
        try:
            await self._until(lambda: all(self.reaches(t) for t in agent_types), timeout)
        except TimeoutError:
            missing = [t for t in agent_types if not self.reaches(t)]
            raise TimeoutError(
                f"agent type{'s' if len(missing) > 1 else ''} "
                f"{', '.join(f'{chr(34)}{t}{chr(34)}' for t in missing)} "
                f"not reachable after {timeout:g} s: {self._hosted_where()}"
            ) from None

    async def wait_for_peers(self, timeout: float) -> None:
        """Wait until every configured peer is connected (and described).

        Raises:
            TimeoutError: a peer was still not connected after `timeout` seconds;
                the message names each.
        """

        def down() -> list[Peer]:
            return [p for p in self.peers.all() if not (p.connected or p.is_self)]

        try:
            await self._until(lambda: not down(), timeout)
        except TimeoutError:
            names = ", ".join(f"{p.name} at {p.address}" for p in down())
            raise TimeoutError(f"peers not connected after {timeout:g} s: {names}") from None

    async def _until(self, done: Callable[[], bool], timeout: float) -> None:
        event = self._routes_changed_event = self._routes_changed_event or asyncio.Event()
        async with asyncio.timeout(timeout):
            while not done():
                event.clear()
                await event.wait()

    def _hosted_where(self) -> str:
        """Where each agent type is: this node's and each peer's, for error messages."""
        here = ", ".join(sorted(self.host.registrations)) or "nothing"
        parts = [f"this node ({self.node_id}) hosts {here}"]
        for peer in self.peers.all():
            if peer.is_self:
                continue
            if peer.connected:
                hosted = ", ".join(sorted(peer.types)) or "nothing"
                parts.append(f"peer {peer.name} hosts {hosted}")
            else:
                parts.append(f"peer {peer.name} at {peer.address} is not connected")
        if len(parts) == 1:
            parts.append("no peers")
        return "; ".join(parts)

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start the host (before the server serves: calls may arrive at once)."""
        self.host.start()
        self.streams.start()

    async def connect(self) -> None:
        """Resolve DNS peers and start keeping every peer connected."""
        await self.peers.resolve()
        self.peers.start()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop: publications accepted before reach their subscribers first, within `grace`.

        The host delivers to this node's subscribers; publications handed over
        to the nodes hosting other subscribers get what is left of `grace`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if grace > 0:
            await self.host.deliver_publications(grace)
            if self._background:
                await asyncio.wait(self._background, timeout=max(0.0, deadline - loop.time()))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.peers.stop()
        await self.host.stop()

    # --- registration --------------------------------------------------------

    def register(
        self,
        agent_type: str,
        factory: Callable[[], Any],
        agent_class: type[Any],
    ) -> AgentType:
        registered = self.host.register(agent_type, factory, agent_class)
        for message_type in registered.handled_types():
            self._registry.type_name(message_type)
        self._changed()
        return AgentType(agent_type)

    def add_subscription(self, subscription: Subscription) -> None:
        self.host.add_subscription(subscription)
        self._changed()
        self.peers.resubscribe()

    def remove_subscription(self, subscription_id: str) -> None:
        self.host.remove_subscription(subscription_id)
        self._changed()
        self.peers.resubscribe()

    # --- sending: the hot path ----------------------------------------------

    def send_message(  # noqa: PLR0917 - mirrors BaseRuntime.send_message
        self,
        message: Any,
        recipient: AgentId,
        sender: AgentId | None,
        timeout: float | None,
        cancellation: CancellationToken | None,
        message_id: str | None,
        metadata: Mapping[str, str] | None,
    ) -> Awaitable[Any]:
        """Send from this node: the coroutine itself is returned, one await layer less."""
        hooked = self._send_chain
        if hooked is not None:
            # LocalRuntime.send_message's steps, repeated: a shared helper
            # would cost a call on every hooked send.
            carried = dict(metadata) if metadata else {}
            quick_send = self._quick_send
            if quick_send is None or not quick_send(recipient, carried):
                first, rest = hooked
                return first(
                    SendInput(
                        message, recipient, sender, message_id, carried, timeout, cancellation
                    ),
                    rest,
                )
            metadata = carried
        return self._send(message, recipient, sender, timeout, cancellation, message_id, metadata)

    def _send_input(self, input: SendInput) -> Awaitable[Any]:
        return self._send(
            input.message,
            input.recipient,
            input.sender,
            input.timeout,
            input.cancellation,
            input._message_id,  # as given, or None: made once it is needed
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
        owner = None
        if self.host.hosts(recipient.type) and (
            not self._pooled or (owner := self.peers.owner(recipient.type, recipient.key)) is None
        ):
            return await self.host.send(
                message,
                recipient,
                sender=sender,
                timeout=timeout,
                cancellation=cancellation,
                message_id=message_id,
                metadata=metadata,
            )
        remaining, chain_keys = self._remaining(timeout)
        envelope = codec.envelope(
            self._registry, message, sender, message_id or new_message_id(), metadata
        )
        if chain_keys:
            envelope.call_chain.extend(codec.chain_to_wire(chain_keys))
        request = agent_service_pb2.SendRequest(
            recipient=codec.agent_id_to_wire(recipient), envelope=envelope
        )
        response = await self._call_peer(request, remaining, frozenset(), cancellation, owner)
        if not response.HasField("result"):
            return None
        return codec.decode(self._registry, response.result)

    def _remaining(self, timeout: float | None) -> tuple[float, tuple[tuple[str, str], ...]]:
        """The seconds a remote call may take and the call chain it carries."""
        remaining = self._default_timeout if timeout is None else timeout
        deadline, chain_keys = nested_call()
        if deadline is not None:
            remaining = min(remaining, deadline - self.host.loop.time())
        if remaining <= 0:
            raise DeadlineExceeded("the caller's deadline passed before the call was made")
        return remaining, chain_keys

    def _call_peer(
        self,
        request: agent_service_pb2.SendRequest,
        remaining: float,
        exclude: frozenset[str],
        cancellation: CancellationToken | None = None,
        peer: Peer | None = None,
    ) -> Awaitable[agent_service_pb2.SendResponse]:
        recipient = request.recipient
        if peer is None:
            peer = self.peers.route(recipient.type, recipient.key, exclude)
        if peer is None:
            raise self._no_route(recipient.type, exclude)
        return peer.transport.send(request, remaining, cancellation)

    def _no_route(self, agent_type: str, exclude: frozenset[str] = frozenset()) -> RaviError:
        """Why no peer takes a call for `agent_type`: its hosts are unreachable, or none exists."""
        unreachable = self.peers.unreachable(agent_type, exclude)
        if unreachable:
            addresses = ", ".join(sorted(peer.address for peer in unreachable))
            return PeerUnavailable(
                f"every node hosting agent type {agent_type!r} is unreachable ({addresses})",
                metadata={"peer_address": addresses},
            )
        known = set(self.host.registrations)
        for peer in self.peers.connected():
            known |= peer.types
        return AgentTypeNotFound(
            f'no node hosts agent type "{agent_type}"{did_you_mean(agent_type, known)}; '
            f"known types: {', '.join(sorted(known)) or 'none'} (asked node {self.node_id})"
        )

    # --- publishing ----------------------------------------------------------

    def publish_message(self, publication: PublishInput) -> Awaitable[None]:
        """Publish from this node: the coroutine itself is returned, one await layer less."""
        hooked = self._publish_chain
        if hooked is not None:
            first, rest = hooked
            return first(publication, rest)
        return self._publish_input(publication)

    async def _publish_input(self, input: PublishInput) -> None:
        await self.host.publish(
            input.message,
            input.topic,
            sender=input.sender,
            message_id=input.message_id,
            metadata=input.metadata,
            timeout=input.timeout,
            remote=self._deliver_remote,
            elsewhere=self._placed_elsewhere if self._pooled else None,
        )
        if self.serving:
            subscribers = self.streams.matching(input.topic.type, origin=None)
            if subscribers:
                self.streams.push(subscribers, self._event(input))
                if backed_up(subscribers):
                    await catch_up(subscribers)
            return
        await self._publish_to_peers(input)

    def _event(self, input: PublishInput) -> agent_service_pb2.Event:
        return agent_service_pb2.Event(
            topic=codec.topic_to_wire(input.topic),
            envelope=codec.envelope(
                self._registry, input.message, input.sender, input.message_id, input.metadata
            ),
            origin_node_id=self.node_id,
        )

    async def _publish_to_peers(self, input: PublishInput) -> None:
        """A client's publish: to each peer whose subscriptions match, node scope."""
        targets = [
            peer
            for peer in self.peers.connected()
            if peer.info is not None
            and any(codec.matches(s.filter, input.topic.type) for s in peer.info.subscriptions)
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
            *(peer.transport.publish(request, timeout) for peer in targets),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _deliver_remote(self, agent_type: str, publication: _Publication) -> None:
        """Hand a publication for an agent type hosted elsewhere to the node hosting it."""
        topic = publication.topic
        assert topic is not None
        request = agent_service_pb2.SendRequest(
            recipient=types_pb2.AgentId(type=agent_type, key=topic.source),
            envelope=codec.envelope(
                self._registry,
                publication.message,
                publication.sender,
                publication.message_id,
                publication.metadata,
            ),
            topic=codec.topic_to_wire(topic),
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
            message = codec.decode(self._registry, event.envelope.payload)
            topic = codec.topic_from_wire(event.topic)
            sender = codec.sender_of(event.envelope)
        except RaviError as error:
            logger.warning("dropping event from %s: %s", event.origin_node_id, error)
            return
        await self.host.publish(
            message,
            topic,
            sender=sender,
            message_id=event.envelope.message_id or None,
            metadata=codec.metadata_of(event.envelope.metadata),
            timeout=None,
            remote=self._deliver_remote,
            elsewhere=self._placed_elsewhere if self._pooled else None,
        )

    # --- serving (NodeHandler) -----------------------------------------------

    async def serve_send(
        self,
        request: agent_service_pb2.SendRequest,
        remaining: float | None,
        trace: Mapping[str, str],
    ) -> agent_service_pb2.SendResponse:
        """Handle a Send from another node or a client (docs/protocol.md, in that order)."""
        try:
            return await self._serve_send(request, remaining, trace)
        except RaviError as error:
            if error.reason is not None:
                self._annotate(error, request)
            raise

    def _annotate(self, error: RaviError, request: agent_service_pb2.SendRequest) -> None:
        """Give a failure the ErrorInfo metadata every reason carries (errors.proto).

        A failure decided by another node keeps what that node wrote.
        """
        metadata = error.metadata
        metadata.setdefault("node_id", self.node_id)
        if error.reason != "BAD_ID":
            metadata.setdefault("agent_type", request.recipient.type)
        message_type = request.envelope.payload.type
        if message_type:
            metadata.setdefault("message_type", message_type)

    async def _serve_send(
        self,
        request: agent_service_pb2.SendRequest,
        remaining: float | None,
        trace: Mapping[str, str],
    ) -> agent_service_pb2.SendResponse:
        recipient = codec.agent_id_from_wire(request.recipient, "recipient")
        if not self.host.hosts(recipient.type):
            return await self._forward(request, remaining)
        if self._pooled:
            # Another member owns the key: a caller placed it by another view of
            # the pool. The owner handles it, even one the request came from
            # (its view changed since, or will); a request that came back here
            # already (the two views disagree both ways, for a moment) stays,
            # and the agent is handed over once it is idle.
            owner = self.peers.owner(recipient.type, recipient.key)
            if owner is not None:
                visited = request.route.visited_node_ids
                if owner.node_id not in visited or self.node_id not in visited:
                    return await self._forward(request, remaining, owner)
                try:
                    return await self._deliver(request, recipient, remaining, trace)
                finally:
                    self._rebalance()
        return await self._deliver(request, recipient, remaining, trace)

    async def _deliver(
        self,
        request: agent_service_pb2.SendRequest,
        recipient: AgentId,
        remaining: float | None,
        trace: Mapping[str, str],
    ) -> agent_service_pb2.SendResponse:
        """Hand a Send to the agent hosted here; its reply as the response."""
        envelope = request.envelope
        message = self._decode_for(recipient.type, envelope.payload)
        sender = codec.sender_of(envelope)
        metadata = {**trace, **codec.metadata_of(envelope.metadata)}
        if request.HasField("topic"):
            await self.host.publish(
                message,
                codec.topic_from_wire(request.topic),
                sender=sender,
                message_id=envelope.message_id or None,
                metadata=metadata,
                timeout=remaining,
                agent_types=(recipient.type,),
            )
            return agent_service_pb2.SendResponse(node_id=self.node_id)
        result = await self.host.send(
            message,
            recipient,
            sender=sender,
            timeout=remaining,
            cancellation=None,
            message_id=envelope.message_id or None,
            metadata=metadata,
            call_chain=codec.chain_from_wire(envelope.call_chain),
        )
        if result is None:
            return agent_service_pb2.SendResponse(node_id=self.node_id)
        return agent_service_pb2.SendResponse(
            result=codec.encode(self._registry, result), node_id=self.node_id
        )

    def _decode_for(self, agent_type: str, payload: types_pb2.Payload) -> Any:
        """Decode a payload sent to `agent_type`; an unknown name says which ones it handles."""
        try:
            return codec.decode(self._registry, payload)
        except BadPayload:
            if not payload.type or self._registry.lookup(payload.type) is not None:
                raise
        registration = self.host.registrations[agent_type]
        handled = sorted(
            self._registry.type_name(t) for t in registration.agent_class.handled_types()
        )
        tail = payload.type.rpartition(".")[2]
        expected = [name for name in handled if name.rpartition(".")[2] == tail]
        name = expected[0] if len(expected) == 1 else "NAME"
        expects = (
            f"expects {name}"
            if len(expected) == 1
            else f"handles {', '.join(handled) or 'nothing'}"
        )
        raise BadPayload(
            f'unknown message type "{payload.type}": agent type "{agent_type}" {expects}. '
            "A message class without @message_type is named after its module "
            f'("__main__" in a script): give it one name on both sides with @message_type("{name}")'
        )

    async def _forward(
        self,
        request: agent_service_pb2.SendRequest,
        remaining: float | None,
        to: Peer | None = None,
    ) -> agent_service_pb2.SendResponse:
        visited = frozenset(request.route.visited_node_ids)
        if self.node_id in visited:
            raise ForwardingLoop(
                f"the request already passed through node {self.node_id} "
                f"(route: {' -> '.join(request.route.visited_node_ids)})"
            )
        if request.route.hop_count >= codec.HOP_LIMIT:
            raise HopLimitExceeded(
                f"the request was forwarded {request.route.hop_count} times "
                f"(limit {codec.HOP_LIMIT})"
            )
        forwarded = agent_service_pb2.SendRequest()
        forwarded.CopyFrom(request)
        forwarded.route.hop_count += 1
        forwarded.route.visited_node_ids.append(self.node_id)
        timeout = self._default_timeout if remaining is None else remaining
        if self._forward_chain is None:
            return await self._call_peer(forwarded, timeout, visited | {self.node_id}, peer=to)
        hop = ForwardInput(
            codec.agent_id_from_wire(request.recipient),
            forwarded.route.hop_count,
            forwarded,
            timeout,
            codec.metadata_of(request.envelope.metadata),
            next_node=to.node_id if to is not None else "",
        )
        response: agent_service_pb2.SendResponse = await self._forward_chain(hop)
        return response

    async def _forward_input(self, hop: ForwardInput) -> agent_service_pb2.SendResponse:
        forwarded: agent_service_pb2.SendRequest = hop.request
        exclude = frozenset(forwarded.route.visited_node_ids)
        peer = None
        if hop.next_node:
            # Placed by the pool (the key's owner): still that node, if connected.
            peer = next((p for p in self.peers.connected() if p.node_id == hop.next_node), None)
        if peer is None:
            peer = self.peers.route(hop.recipient.type, hop.recipient.key, exclude)
        hop.next_node = peer.node_id if peer is not None else ""
        return await self._call_peer(forwarded, hop.timeout, exclude, peer=peer)

    async def serve_publish(
        self,
        request: agent_service_pb2.PublishRequest,
        remaining: float | None,
        trace: Mapping[str, str],
    ) -> agent_service_pb2.PublishResponse:
        topic = codec.topic_from_wire(request.topic)
        envelope = request.envelope
        message = codec.decode(self._registry, envelope.payload)
        sender = codec.sender_of(envelope)
        metadata = {**trace, **codec.metadata_of(envelope.metadata)}
        local = await self.host.publish(
            message,
            topic,
            sender=sender,
            message_id=envelope.message_id or None,
            metadata=metadata,
            timeout=remaining,
            remote=self._deliver_remote,
            elsewhere=self._placed_elsewhere if self._pooled else None,
        )
        streamed = 0
        if request.scope != agent_service_pb2.PUBLISH_SCOPE_NODE:
            subscribers = self.streams.matching(topic.type, origin=None)
            if subscribers:
                event = agent_service_pb2.Event(
                    topic=request.topic, envelope=envelope, origin_node_id=self.node_id
                )
                codec.put_metadata(event.envelope.metadata, metadata)
                streamed = self.streams.push(subscribers, event)
        return agent_service_pb2.PublishResponse(local_deliveries=local, stream_deliveries=streamed)

    async def serve_subscribe(
        self, request: agent_service_pb2.SubscribeRequest
    ) -> AsyncIterator[agent_service_pb2.SubscribeResponse]:
        subscriber = self.streams.open(
            list(request.filters), request.subscriber_id, request.accept_batches
        )
        try:
            yield agent_service_pb2.SubscribeResponse(node=self.node_info())
            async for response in subscriber.responses():
                yield response
            if subscriber.overflowed:
                raise ResourceExhausted(
                    f"subscriber {request.subscriber_id or '(anonymous)'} fell more than "
                    f"{STREAM_QUEUE} events behind; events were dropped"
                )
        finally:
            self.streams.close(subscriber)

    def serve_describe(
        self, request: agent_service_pb2.DescribeRequest
    ) -> agent_service_pb2.DescribeResponse:
        if request.HasField("caller"):
            self.peers.learn(request.caller)
        return agent_service_pb2.DescribeResponse(node=self.node_info())

    # --- promises ------------------------------------------------------------

    async def resolve_promise(self, name: str, value: Any) -> None:
        already = False
        try:
            self.host.resolve_promise(name, value)
        except AlreadyExists:
            already = True
        request = agent_service_pb2.ResolvePromiseRequest(
            name=name, value=codec.encode(self._registry, value)
        )
        peers = self.peers.connected()
        results = await asyncio.gather(
            *(peer.transport.resolve_promise(request, self._default_timeout) for peer in peers),
            return_exceptions=True,
        )
        for peer, result in zip(peers, results, strict=True):
            if isinstance(result, AlreadyExists):
                already = True
            elif isinstance(result, RaviError) and not isinstance(result, Unimplemented):
                logger.warning("peer %s could not resolve promise %r: %s", peer, name, result)
            elif isinstance(result, BaseException):
                raise result
        if already:
            raise AlreadyExists(f"promise {name!r} is resolved already")

    async def serve_resolve_promise(
        self, request: agent_service_pb2.ResolvePromiseRequest
    ) -> agent_service_pb2.ResolvePromiseResponse:
        value = codec.decode(self._registry, request.value)
        waiting = self.host.promise_awaited(request.name)
        self.host.resolve_promise(request.name, value)
        return agent_service_pb2.ResolvePromiseResponse(waiting=waiting)

    # --- state ---------------------------------------------------------------

    async def agent_save_state(self, agent: AgentId) -> Mapping[str, Any]:
        if self.host.hosts(agent.type):
            return await self.host.save_agent(agent)
        peer = self._route_state(agent)
        response = await peer.transport.save_state(
            agent_service_pb2.SaveStateRequest(agent=codec.agent_id_to_wire(agent)),
            self._default_timeout,
        )
        return dict(codec.state_from_wire(response.states[str(agent)]))

    async def save_state(self) -> Mapping[str, Any]:
        states: dict[str, Any] = {
            str(mailbox.agent_id): await self.host.save_agent(mailbox.agent_id)
            for mailbox in list(self.host.agents())
        }
        for peer in self.peers.connected():
            response = await peer.transport.save_state(
                agent_service_pb2.SaveStateRequest(), self._default_timeout
            )
            states.update(
                {key: codec.state_from_wire(payload) for key, payload in response.states.items()}
            )
        return states

    async def load_state(self, state: Mapping[str, Any]) -> None:
        remote: dict[str, tuple[Peer, agent_service_pb2.LoadStateRequest]] = {}
        for key, agent_state in state.items():
            agent = AgentId.parse(key)
            if self.host.hosts(agent.type):
                await self.host.load_agent(agent, agent_state)
                continue
            peer = self._route_state(agent)
            request = remote.setdefault(peer.node_id, (peer, agent_service_pb2.LoadStateRequest()))[
                1
            ]
            request.states[key].CopyFrom(codec.state_to_wire(agent_state))
        for peer, request in remote.values():
            await peer.transport.load_state(request, self._default_timeout)

    def _route_state(self, agent: AgentId) -> Peer:
        peer = self.peers.route(agent.type, agent.key)
        if peer is None:
            raise self._no_route(agent.type)
        return peer

    async def serve_save_state(
        self, request: agent_service_pb2.SaveStateRequest
    ) -> agent_service_pb2.SaveStateResponse:
        response = agent_service_pb2.SaveStateResponse()
        if request.HasField("agent"):
            agent = codec.agent_id_from_wire(request.agent)
            if not self.host.hosts(agent.type):
                raise AgentTypeNotFound(f"node {self.node_id} does not host {agent.type!r}")
            agents = [agent]
        else:
            agents = [mailbox.agent_id for mailbox in list(self.host.agents())]
        for agent in agents:
            response.states[str(agent)].CopyFrom(
                codec.state_to_wire(await self.host.save_agent(agent))
            )
        return response

    async def serve_load_state(
        self, request: agent_service_pb2.LoadStateRequest
    ) -> agent_service_pb2.LoadStateResponse:
        for key, payload in request.states.items():
            agent = AgentId.parse(key)
            if not self.host.hosts(agent.type):
                raise AgentTypeNotFound(f"node {self.node_id} does not host {agent.type!r}")
            await self.host.load_agent(agent, codec.state_from_wire(payload))
        return agent_service_pb2.LoadStateResponse()
