"""Peers: connections to other nodes, the routing table, and their event streams."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import grpc
import grpc.aio

from ravi.integrations.runtime.grpc._wire import rendezvous_score
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2

logger = logging.getLogger("ravi.grpc")

BACKOFF_START = 0.1
BACKOFF_MAX = 2.0
DESCRIBE_TIMEOUT = 5.0


class Owner(Protocol):
    """What the peer set needs from the node that owns it."""

    @property
    def node_id(self) -> str: ...

    def node_info(self) -> types_pb2.NodeInfo: ...

    def subscription_filters(self) -> list[types_pb2.TopicFilter]: ...

    async def deliver_event(self, event: agent_service_pb2.Event) -> None: ...


class Peer:
    """One other node: its channel, what it last said it hosts, and its stream."""

    def __init__(self, name: str, address: str, channel: grpc.aio.Channel) -> None:
        self.name = name
        self.address = address
        self.channel = channel
        self.stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        self.info: types_pb2.NodeInfo | None = None
        self.types: frozenset[str] = frozenset()
        self.wake = asyncio.Event()
        self.stream: (
            grpc.aio.UnaryStreamCall[
                agent_service_pb2.SubscribeRequest, agent_service_pb2.SubscribeResponse
            ]
            | None
        ) = None
        self.task: asyncio.Task[None] | None = None
        self.resubscribing = False

    @property
    def node_id(self) -> str:
        return self.info.node_id if self.info is not None else ""

    @property
    def connected(self) -> bool:
        return self.info is not None

    def __repr__(self) -> str:
        state = f"{self.node_id}, {len(self.types)} types" if self.info else "disconnected"
        return f"Peer({self.name} at {self.address}: {state})"


class Peers:
    """The peers of a node, kept connected, with a routing table from their NodeInfo."""

    def __init__(
        self,
        owner: Owner,
        *,
        make_channel: Callable[[str], grpc.aio.Channel],
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        self._owner = owner
        self._make_channel = make_channel
        self.metadata = tuple(metadata)
        self._peers: dict[str, Peer] = {}
        self._running = False
        self._listeners: list[Callable[[], None]] = []

    def add(self, name: str, address: str) -> Peer:
        """Add a peer (connecting at once if the node runs); known addresses are kept."""
        for peer in self._peers.values():
            if peer.address == address:
                return peer
        peer = Peer(name, address, self._make_channel(address))
        self._peers[name if name not in self._peers else address] = peer
        if self._running:
            self._launch(peer)
        return peer

    def learn(self, caller: types_pb2.NodeInfo) -> None:
        """Take note of a node that described us: peer with it, or reconnect to it now."""
        if not caller.address or caller.node_id == self._owner.node_id:
            return
        for peer in self._peers.values():
            if peer.address == caller.address:
                if not peer.connected:
                    peer.wake.set()
                return
        logger.info("learned peer %s at %s", caller.node_id, caller.address)
        self.add(caller.node_id, caller.address)

    def start(self) -> None:
        self._running = True
        for peer in self._peers.values():
            self._launch(peer)

    async def stop(self) -> None:
        self._running = False
        tasks = [peer.task for peer in self._peers.values() if peer.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(peer.channel.close(grace=None) for peer in self._peers.values()),
            return_exceptions=True,
        )
        for peer in self._peers.values():
            peer.info = None
            peer.types = frozenset()

    def all(self) -> list[Peer]:
        return list(self._peers.values())

    def connected(self) -> list[Peer]:
        return [peer for peer in self._peers.values() if peer.connected]

    def hosting(self, agent_type: str) -> list[Peer]:
        return [peer for peer in self._peers.values() if agent_type in peer.types]

    def route(
        self, agent_type: str, key: str, exclude: frozenset[str] = frozenset()
    ) -> Peer | None:
        """The peer an agent id lives on: rendezvous hashing over the peers hosting its type."""
        candidates = [p for p in self.hosting(agent_type) if p.node_id not in exclude]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        return max(candidates, key=lambda p: rendezvous_score(p.node_id, agent_type, key))

    def resubscribe(self) -> None:
        """Reopen every stream, because this node's subscription filters changed."""
        for peer in self._peers.values():
            if peer.stream is not None:
                # The peer stays routable while its stream is reopened.
                peer.resubscribing = True
                peer.stream.cancel()
            peer.wake.set()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a peer's routing information changes."""
        self._listeners.append(listener)

    def _launch(self, peer: Peer) -> None:
        if peer.task is None or peer.task.done():
            peer.task = asyncio.get_running_loop().create_task(
                self._keep_connected(peer), name=f"ravi-peer-{peer.name}"
            )

    def _update(self, peer: Peer, info: types_pb2.NodeInfo | None) -> None:
        peer.info = info
        peer.types = frozenset(t.agent_type for t in info.agent_types) if info else frozenset()
        for listener in self._listeners:
            listener()

    async def _keep_connected(self, peer: Peer) -> None:
        # Runs for as long as the node: reconnects with capped exponential backoff,
        # cut short when the peer calls us (it restarted) or our filters change.
        backoff = BACKOFF_START
        while self._running:
            try:
                if await self._session(peer):
                    backoff = BACKOFF_START
            except grpc.aio.AioRpcError as error:
                level = logging.DEBUG if error.code() is grpc.StatusCode.CANCELLED else logging.INFO
                logger.log(level, "peer %s at %s: %s", peer.name, peer.address, error.code().name)
            except _NotAPeer as reason:
                logger.warning("not peering with %s at %s: %s", peer.name, peer.address, reason)
                return
            finally:
                peer.stream = None
                if peer.resubscribing:
                    peer.resubscribing = False
                else:
                    self._update(peer, None)
            if peer.wake.is_set():
                peer.wake.clear()
                continue
            try:
                await asyncio.wait_for(peer.wake.wait(), backoff)
            except TimeoutError:
                backoff = min(backoff * 2, BACKOFF_MAX)
            peer.wake.clear()

    async def _session(self, peer: Peer) -> bool:
        """Describe the peer and follow its stream until it ends; True once it was up."""
        described = await peer.stub.Describe(
            agent_service_pb2.DescribeRequest(caller=self._owner.node_info()),
            timeout=DESCRIBE_TIMEOUT,
            metadata=self.metadata,
        )
        if described.node.node_id == self._owner.node_id:
            raise _NotAPeer("that address is this node")
        self._update(peer, described.node)
        stream = peer.stub.Subscribe(
            agent_service_pb2.SubscribeRequest(
                filters=self._owner.subscription_filters(), subscriber_id=self._owner.node_id
            ),
            metadata=self.metadata,
        )
        peer.stream = stream
        deliver: Callable[[agent_service_pb2.Event], Awaitable[None]] = self._owner.deliver_event
        async for item in stream:
            if item.HasField("node"):
                self._update(peer, item.node)
            elif item.HasField("event"):
                await deliver(item.event)
        return True


class _NotAPeer(Exception):
    """The address does not belong to another node."""
