"""GrpcRuntime: a node of the ravi mesh on grpc.aio, a facade over the mesh node."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ravi._cancellation import CancellationToken
from ravi._host import Lifecycle
from ravi._ids import AgentId, AgentType, TopicId, new_message_id
from ravi._interceptors import Interceptor, PublishInput
from ravi._mesh.discovery import PeerDiscovery
from ravi._mesh.node import MeshNode
from ravi._mesh.peers import Peer
from ravi._serialization import MessageRegistry
from ravi._serialization import registry as default_registry
from ravi._subscriptions import Subscription
from ravi.integrations.runtime.grpc._instrumentation import instrumentation
from ravi.integrations.runtime.grpc._options import GrpcRuntimeOptions
from ravi.integrations.runtime.grpc._server import GrpcServer
from ravi.integrations.runtime.grpc._transport import dialer
from ravi.runtime._base import Agent, BaseRuntime
from ravi.state import StateStore


class GrpcRuntime(BaseRuntime):
    """GrpcRuntime is a node of the ravi mesh: a gRPC server for its agents, a client of its peers.

    Agents registered here are reachable from every peer over
    `ravi.mesh.v1.AgentService`; a message for an agent type hosted elsewhere
    goes to the peer hosting it (rendezvous hashing on the key when several
    do). Without a port the runtime serves nothing: a client that sends and
    publishes into the mesh (and may still host agents of its own).

    The runtime composes a transport-agnostic `MeshNode` (routing, forwarding,
    serving, the contract codec) with gRPC: a `GrpcServer` when it has a port,
    and a `GrpcPeer` per peer (docs/development.md, "The map").

    Args:
        host: the address to listen on (loopback by default).
        port: the port to listen on (0 picks a free one); None for a client only.
        remote_peers: peer name -> "host:port" of nodes to connect to. An
            address written "dns:HOST:PORT" names a pool of nodes: every
            address HOST resolves to is a peer, kept current as `discovery` says.
        options: everything else (GrpcRuntimeOptions: node id, credentials,
            timeouts, limits).
        interceptors: hooks around sends, handler calls, publishes and forwards.
        registry: the message registry for payloads (the process-wide one by default).
        discovery: how "dns:" peers are resolved and how often (every 10 s by default).
        state_store: where passivated agents keep their state, when not the
            store `options` name (`state_store`, `data_dir`; memory by default).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        remote_peers: Mapping[str, str] | None = None,
        *,
        options: GrpcRuntimeOptions | None = None,
        interceptors: Sequence[Interceptor] = (),
        registry: MessageRegistry | None = None,
        discovery: PeerDiscovery | None = None,
        state_store: StateStore | None = None,
    ) -> None:
        options = options or GrpcRuntimeOptions()
        self._options = options
        self._rpc = instrumentation(interceptors)
        self._listen_host = host
        self._node = node = MeshNode(
            self,
            dial=dialer(
                max_message_bytes=options.max_message_bytes,
                tls=options.peer_tls(),
                token=options.peer_token if options.peer_token is not None else options.token,
                keepalive_time=options.keepalive_time,
                keepalive_timeout=options.keepalive_timeout,
                deadlines=lambda: node.host.deadlines,
                interceptors=self._rpc.grpc_client_interceptors() if self._rpc else (),
            ),
            listen_host=host,
            port=port,
            node_id=options.node_id,
            advertise=options.advertise,
            remote_peers=remote_peers or {},
            default_timeout=options.default_timeout,
            mailbox_capacity=options.mailbox_capacity,
            interceptors=interceptors,
            registry=registry or default_registry,
            discovery=discovery,
            lifecycle=Lifecycle(
                options.idle_timeout,
                options.max_active_agents,
                options.checkpoint,
                state_store if state_store is not None else options.store(),
            ),
        )
        self._server: GrpcServer | None = None

    # --- identity and readiness ------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id in the mesh."""
        return self._node.node_id

    @property
    def port(self) -> int | None:
        """The port the node listens on (the real one once started), None for a client."""
        return self._node.port

    @property
    def address(self) -> str:
        """The address peers dial to reach this node; empty for a client."""
        return self._node.address

    def peers(self) -> list[Peer]:
        """This node's peers and what they host (for tests and operations)."""
        return self._node.peers.all()

    def mailbox_depths(self) -> dict[str, int]:
        """Messages queued or running in this runtime's mailboxes, per agent type."""
        return self._node.host.depths()

    def active_agents(self) -> dict[str, int]:
        """Active (not passivated) agent instances on this node, per registered agent type."""
        return self._node.host.active_agents()

    async def wait_until_ready(self, *agent_types: str, timeout: float = 10.0) -> None:
        """Wait until this node can reach every one of `agent_types`.

        A type is reachable when it is registered here or on a connected peer; a
        node that just started learns its peers' types once they answered.
        """
        await self._node.wait_for_routes(agent_types, timeout)

    async def wait_for_peers(self, *, timeout: float = 10.0) -> None:
        """Wait until every configured peer is connected (and described)."""
        await self._node.wait_for_peers(timeout)

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        node = self._node
        if node.host.running:
            return
        node.start()
        if node.port is not None:
            options = self._options
            server = GrpcServer(
                node,
                host=self._listen_host,
                port=node.port,
                token=options.token,
                health_without_auth=options.health_without_auth,
                tls=options.server_tls(),
                max_message_bytes=options.max_message_bytes,
                rpc=self._rpc,
            )
            await server.start()
            node.port = server.port
            node.serving = True
            self._server = server
        try:
            # The store knows the node by its id, known once the server has its port.
            await node.host.open_store(node.node_id)
        except BaseException:
            await self.stop()
            raise
        await node.connect()

    async def stop(self) -> None:
        node = self._node
        if not node.host.running:
            return
        server, self._server = self._server, None
        if server is not None:
            await server.enter_graceful_shutdown()
        node.streams.end_all()
        if server is not None:
            await server.stop(self._options.grace_period)
        await node.stop(self._options.grace_period)

    async def stop_when_idle(self, *, timeout: float | None = None) -> None:
        await self._node.host.wait_idle(timeout)
        await self.stop()

    # --- BaseRuntime -------------------------------------------------------------

    async def register_factory(
        self,
        agent_type: str,
        factory: Callable[[], Agent | Awaitable[Agent]],
        *,
        agent_class: type[Agent],
    ) -> AgentType:
        return self._node.register(agent_type, factory, agent_class)

    async def add_subscription(self, subscription: Subscription) -> None:
        self._node.add_subscription(subscription)

    async def remove_subscription(self, subscription_id: str) -> None:
        self._node.remove_subscription(subscription_id)

    # send_message and publish_message return the node's coroutine without an extra await
    # layer (see BaseAgent.send_message): a round trip is mostly such layers.
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
        return self._node.send_message(
            message, recipient, sender, timeout, cancellation, message_id, metadata
        )

    def publish_message(  # type: ignore[override]
        self,
        message: Any,
        topic: TopicId,
        *,
        sender: AgentId | None = None,
        message_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Awaitable[None]:
        return self._node.publish_message(
            PublishInput(
                message,
                topic,
                sender,
                message_id or new_message_id(),
                dict(metadata or {}),
                timeout,
            )
        )

    async def resolve_promise(self, name: str, value: Any) -> None:
        await self._node.resolve_promise(name, value)

    async def agent_save_state(self, agent: AgentId) -> Mapping[str, Any]:
        return await self._node.agent_save_state(agent)

    async def agent_load_state(self, agent: AgentId, state: Mapping[str, Any]) -> None:
        await self._node.load_state({str(agent): state})

    async def save_state(self) -> Mapping[str, Any]:
        return await self._node.save_state()

    async def load_state(self, state: Mapping[str, Any]) -> None:
        await self._node.load_state(state)
