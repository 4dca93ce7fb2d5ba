"""Peers: the other nodes, kept connected, and the routing table built from what they host.

Each peer is described (`Describe`) and followed (`Subscribe`) for as long as
the node runs: its NodeInfo says which agent types it hosts, its stream brings
the events this node subscribed to and every change of its registrations. A
peer whose stream ends leaves the routing table and is dialled again with
capped exponential backoff. `route()` places an agent id on one of the peers
hosting its type by rendezvous hashing. Everything here talks to peers through
their `PeerTransport`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from ravi._mesh.codec import rendezvous_score
from ravi._mesh.discovery import RESOLVE_TIMEOUT, PeerDiscovery, Resolver, resolve_dns
from ravi._mesh.transport import Dialer, EventStream, PeerTransport
from ravi.errors import Code, RaviError
from ravi.mesh.v1 import agent_service_pb2, types_pb2

logger = logging.getLogger("ravi.mesh")

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
    """One other node: its transport, what it last said it hosts, and its stream."""

    def __init__(
        self,
        name: str,
        address: str,
        transport: PeerTransport,
        *,
        group: str | None = None,
        learned: bool = False,
    ) -> None:
        self.name = name
        self.address = address
        self.group = group
        """The DNS peer name this peer was resolved from, if any."""
        self.learned = learned
        """The peer described this node first: no configuration named it."""
        self.is_self = False
        """The address turned out to be this node's own (a pool this node belongs to)."""
        self.transport = transport
        self.info: types_pb2.NodeInfo | None = None
        self.types: frozenset[str] = frozenset()
        self.last_types: frozenset[str] = frozenset()
        """The types the peer hosted when it was last connected: kept while it is unreachable."""
        self.last_types_node = ""
        """The node id the peer had when it was last connected."""
        self.wake = asyncio.Event()
        self.stream: EventStream | None = None
        self.task: asyncio.Task[None] | None = None
        self.resubscribing = False
        self.unreachable = False
        """Dialling failed since the last connection (logged once per outage)."""
        self.announced = False
        """Its stream is up and logged as connected (a drop is logged once, then)."""

    @property
    def node_id(self) -> str:
        return self.info.node_id if self.info is not None else ""

    @property
    def connected(self) -> bool:
        return self.info is not None

    def __repr__(self) -> str:
        state = f"{self.node_id}, {len(self.types)} types" if self.info else "disconnected"
        return f"Peer({self.name} at {self.address}: {state})"


class _DnsGroup:
    """The peers one DNS name resolved to, by address."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.members: dict[str, Peer] = {}
        self.joined = False
        """The name resolved to this node once: the node belongs to the pool it names."""


class Peers:
    """The peers of a node, kept connected, with a routing table from their NodeInfo."""

    def __init__(
        self, owner: Owner, *, dial: Dialer, discovery: PeerDiscovery | None = None
    ) -> None:
        self._owner = owner
        self._dial = dial
        self._peers: dict[str, Peer] = {}
        self._running = False
        self._listeners: list[Callable[[], None]] = []
        self._discovery = discovery or PeerDiscovery()
        self._resolver: Resolver = self._discovery.resolver or resolve_dns
        self._groups: dict[str, _DnsGroup] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def add(
        self, name: str, address: str, *, group: str | None = None, learned: bool = False
    ) -> Peer:
        """Add a peer (connecting at once if the node runs); known addresses are kept."""
        for peer in self._peers.values():
            if peer.address == address:
                return peer
        peer = Peer(name, address, self._dial(address), group=group, learned=learned)
        self._peers[name if name not in self._peers else address] = peer
        if self._running:
            self._launch(peer)
        return peer

    def add_dns(self, name: str, host: str, port: int) -> None:
        """Add a peer name whose every address is a peer, resolved now and then (PeerDiscovery)."""
        self._groups[name] = _DnsGroup(name, host, port)

    async def resolve(self) -> None:
        """Resolve every DNS peer name once, adding and dropping peers to match."""
        await asyncio.gather(*(self._refresh(group) for group in list(self._groups.values())))

    async def _refresh(self, group: _DnsGroup) -> None:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                resolved = set(await self._resolver(group.host, group.port))
        except Exception as error:  # a resolver failing must not stop discovery
            logger.warning(
                "resolving peer %s (%s:%d) failed, keeping its %d address(es): %r",
                group.name,
                group.host,
                group.port,
                len(group.members),
                error,
            )
            return
        known = set(group.members)
        if resolved == known:
            return
        for address in sorted(resolved - known):
            peer = self.add(f"{group.name}/{address}", address, group=group.name)
            if peer.learned and peer.group is None:
                peer.group = group.name  # a learned peer the name now accounts for
            group.members[address] = peer
            logger.info("peer %s: added %s", group.name, address)
        for address in sorted(known - resolved):
            peer = group.members.pop(address)
            logger.info("peer %s: %s no longer resolves, dropping it", group.name, address)
            if peer.group == group.name:
                self._remove(peer)
        # A member may be a peer connected already (it described this node
        # first): the pool changed even though no connection did.
        for listener in self._listeners:
            listener()

    async def _refresh_forever(self) -> None:
        while self._running:
            await asyncio.sleep(self._discovery.interval)
            await self.resolve()

    def _remove(self, peer: Peer) -> None:
        """Route no new call to `peer`; close it once its calls in flight are done."""
        for key, known in list(self._peers.items()):
            if known is peer:
                del self._peers[key]
        task, peer.task = peer.task, None
        if task is not None:
            task.cancel()
        self._update(peer, None)
        closing = asyncio.get_running_loop().create_task(self._close(peer, task))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _close(self, peer: Peer, task: asyncio.Task[None] | None) -> None:
        try:
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            await peer.transport.drained(self._discovery.drain_timeout)
        finally:
            await peer.transport.close()

    def learn(self, caller: types_pb2.NodeInfo) -> None:
        """Take note of a node that described us: peer with it, or reconnect to it now."""
        if not caller.address or caller.node_id == self._owner.node_id:
            return
        for peer in self._peers.values():
            if peer.address == caller.address:
                if not peer.connected:
                    peer.wake.set()
                return
        logger.info(
            "learned peer %s at %s (it described this node)", caller.node_id, caller.address
        )
        self.add(caller.node_id, caller.address, learned=True)

    def start(self) -> None:
        self._running = True
        for peer in self._peers.values():
            self._launch(peer)
        if self._groups:
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_forever(), name="ravi-peer-dns"
            )

    async def stop(self) -> None:
        self._running = False
        tasks = [peer.task for peer in self._peers.values() if peer.task is not None]
        if self._refresher is not None:
            tasks.append(self._refresher)
            self._refresher = None
        tasks += self._closing
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(peer.transport.close() for peer in self._peers.values()), return_exceptions=True
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

    def unreachable(self, agent_type: str, exclude: frozenset[str] = frozenset()) -> list[Peer]:
        """The peers that hosted `agent_type` when last connected and are unreachable now.

        A call for a type that only such peers host fails UNAVAILABLE /
        PEER_UNAVAILABLE, not NOT_FOUND (docs/protocol.md, "Edges").
        """
        return [
            peer
            for peer in self._peers.values()
            if not peer.connected
            and not peer.is_self
            and agent_type in peer.last_types
            and peer.last_types_node not in exclude
        ]

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

    def pooled(self) -> bool:
        """Whether this node belongs to a `dns:` pool, which places keys among its members."""
        return any(group.joined for group in self._groups.values())

    def owner(self, agent_type: str, key: str) -> Peer | None:
        """The member of this node's pools an agent id lives on; None when it is this node.

        Among the members a pool's name resolves to now that host the type
        (this node too while the name resolves to it), rendezvous hashing picks
        one, as callers outside the pool do. A node the name no longer resolves
        to owns nothing of the pool's types; one outside every pool owns what
        it is sent.
        """
        best: Peer | None = None
        best_score = -1
        member = False
        for group in self._groups.values():
            if not group.joined:
                continue
            for peer in group.members.values():
                if peer.is_self:
                    member = True
                elif agent_type in peer.types:
                    score = rendezvous_score(peer.node_id, agent_type, key)
                    if score > best_score:
                        best, best_score = peer, score
        if best is None:
            return None
        if member and rendezvous_score(self._owner.node_id, agent_type, key) > best_score:
            return None
        return best

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
        # Calls in flight to the peer are not failed here: a peer that stops
        # gracefully still answers them; one that died breaks its transport too,
        # which fails them.
        peer.info = info
        peer.types = frozenset(t.agent_type for t in info.agent_types) if info else frozenset()
        if info is not None:
            peer.last_types = peer.types
            peer.last_types_node = info.node_id
        for listener in self._listeners:
            listener()

    async def _keep_connected(self, peer: Peer) -> None:
        # Runs for as long as the node: reconnects with capped exponential backoff,
        # cut short when the peer calls us (it restarted) or our filters change.
        backoff = BACKOFF_START
        while self._running:
            failure: RaviError | None = None
            try:
                if await self._session(peer):
                    backoff = BACKOFF_START
            except RaviError as error:
                failure = error
            except _NotAPeer as reason:
                peer.is_self = True
                level = logging.DEBUG if peer.group else logging.WARNING
                logger.log(
                    level,
                    "peer %s at %s is this node itself: ignored (%s)",
                    peer.name,
                    peer.address,
                    reason,
                )
                group = self._groups.get(peer.group or "")
                if group is not None and not group.joined:
                    group.joined = True
                    logger.info("this node is a member of the pool %s", group.name)
                return
            finally:
                peer.stream = None
                if peer.resubscribing:
                    peer.resubscribing = False
                else:
                    self._lost(peer, failure)
            if peer.wake.is_set():
                peer.wake.clear()
                continue
            try:
                await asyncio.wait_for(peer.wake.wait(), backoff)
            except TimeoutError:
                backoff = min(backoff * 2, BACKOFF_MAX)
            peer.wake.clear()

    def _lost(self, peer: Peer, failure: RaviError | None) -> None:
        """Log that `peer` dropped or cannot be reached (once per outage), and unroute it."""
        if (failure is not None and failure.code is Code.CANCELLED) or not self._running:
            peer.announced = False
            self._update(peer, None)
            return
        reason = _reason(failure) if failure is not None else "its stream ended"
        if peer.announced:
            peer.announced = False
            logger.info("peer %s at %s dropped: %s; reconnecting", peer.name, peer.address, reason)
        elif not peer.unreachable:
            peer.unreachable = True
            logger.info(
                "peer %s at %s unreachable: %s; retrying every %.0f s at most",
                peer.name,
                peer.address,
                reason,
                BACKOFF_MAX,
            )
        else:
            logger.debug("peer %s at %s still unreachable: %s", peer.name, peer.address, reason)
        self._update(peer, None)

    async def _session(self, peer: Peer) -> bool:
        """Describe the peer and follow its stream until it ends; True once it was up."""
        described = await peer.transport.describe(
            agent_service_pb2.DescribeRequest(caller=self._owner.node_info()), DESCRIBE_TIMEOUT
        )
        if described.node.node_id == self._owner.node_id:
            raise _NotAPeer("that address is this node")
        self._update(peer, described.node)
        stream = peer.transport.subscribe(
            agent_service_pb2.SubscribeRequest(
                filters=self._owner.subscription_filters(),
                subscriber_id=self._owner.node_id,
                accept_batches=True,
            )
        )
        peer.stream = stream

        def described_again(info: types_pb2.NodeInfo) -> None:
            # The stream's first message: the peer is connected (as the Go and Node nodes log it).
            if not peer.announced:
                peer.announced, peer.unreachable = True, False
                logger.info(
                    "peer %s connected at %s (node %s, hosts %s)",
                    peer.name,
                    peer.address,
                    info.node_id,
                    _types(info),
                )
            self._update(peer, info)

        await stream.follow(self._owner.deliver_event, described_again)
        return True


def _types(info: types_pb2.NodeInfo) -> str:
    return ", ".join(sorted(t.agent_type for t in info.agent_types)) or "no agent types"


def _reason(error: RaviError) -> str:
    """The gist of why a peer failed: gRPC's own wording ends with the operating system's."""
    text = error.message
    if error.code is Code.UNAVAILABLE and "Failed to connect to remote host: " in text:
        return text.rpartition("Failed to connect to remote host: ")[2].lower()
    return f"{error.code.name}: {text}"


class _NotAPeer(Exception):
    """The address does not belong to another node."""
