"""Peers: connections to other nodes, the routing table, and their event streams."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
import grpc.aio

from ravi._deadlines import Deadlines
from ravi.errors import DeadlineExceeded, PeerUnavailable
from ravi.integrations.runtime.grpc._wire import rendezvous_score
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2

logger = logging.getLogger("ravi.grpc")

BACKOFF_START = 0.1
BACKOFF_MAX = 2.0
DESCRIBE_TIMEOUT = 5.0
DNS_SCHEME = "dns:"
RESOLVE_TIMEOUT = 5.0

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolver maps a peer's DNS name and port to the "host:port" addresses of its nodes."""


@dataclass(frozen=True)
class PeerDiscovery:
    """PeerDiscovery says how peers named by DNS (`dns:HOST:PORT`) are found and kept current.

    A peer address written `dns:HOST:PORT` (or `dns:///HOST:PORT`) names a pool
    of nodes, such as a Kubernetes headless Service: each address the name
    resolves to becomes a peer of its own, so rendezvous hashing places keys
    across every node of the pool. The name is resolved again every `interval`
    seconds: new addresses are dialled, and an address that no longer resolves
    stops receiving new calls at once and is closed once the calls it is
    handling finished (or after `drain_timeout`). A resolution that fails keeps
    the addresses of the last one; a name that does not exist (NXDOMAIN, as a
    headless Service with no ready pod answers) has no address.

    Attributes:
        interval: seconds between two resolutions of each name.
        resolver: resolves (host, port) to "host:port" addresses; `resolve_dns`
            (the event loop's getaddrinfo) when None. Tests pass their own.
        drain_timeout: seconds the calls in flight to a dropped address get
            before its channel is closed.
    """

    interval: float = 10.0
    resolver: Resolver | None = None
    drain_timeout: float = 5.0


def dns_target(address: str) -> tuple[str, int] | None:
    """The (host, port) of a `dns:HOST:PORT` peer address; None for a plain HOST:PORT.

    Raises:
        ValueError: the address starts with `dns:` but names no host and port, or
            names a DNS server (`dns://SERVER/...`), which is not supported.
    """
    if not address.startswith(DNS_SCHEME):
        return None
    rest = address[len(DNS_SCHEME) :]
    if rest.startswith("//"):
        authority, _, rest = rest[2:].partition("/")
        if authority:
            raise ValueError(f"{address!r}: a DNS server in the address is not supported")
    host, _, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        raise ValueError(f"a DNS peer must be dns:HOST:PORT, got {address!r}")
    return host, int(port)


async def resolve_dns(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to now, as sorted "host:port" strings (getaddrinfo)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        if error.errno in _NO_ADDRESS:
            return []
        raise
    return sorted({_join(str(info[4][0]), port) for info in infos})


_NO_ADDRESS = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Owner(Protocol):
    """What the peer set needs from the node that owns it."""

    @property
    def node_id(self) -> str: ...

    def node_info(self) -> types_pb2.NodeInfo: ...

    def subscription_filters(self) -> list[types_pb2.TopicFilter]: ...

    async def deliver_event(self, event: agent_service_pb2.Event) -> None: ...


class UseUnary(Exception):
    """The peer does not implement Connect: send this call as a unary Send."""


class Connection:
    """Send calls to one peer multiplexed over a Connect stream (docs/protocol.md).

    Opened on first use and again after it breaks; calls in flight when it
    breaks fail with PeerUnavailable. A writer task sends the frames that are
    ready together as one message, so many calls in flight cost few writes. A
    peer answering UNIMPLEMENTED is remembered, and its calls go unary from then
    on.
    """

    def __init__(self, peer: Peer, metadata: Sequence[tuple[str, str]]) -> None:
        self._peer = peer
        self._metadata = metadata
        self._call: _ConnectCall | None = None
        self._pending: dict[int, asyncio.Future[agent_service_pb2.CallOutcome]] = {}
        self._ids = itertools.count(1)
        self._outbox: list[agent_service_pb2.CallFrame] = []
        self._ready = asyncio.Event()
        self._idle: asyncio.Event | None = None
        self.unsupported = False

    async def send(
        self, request: agent_service_pb2.SendRequest, timeout: float, deadlines: Deadlines
    ) -> agent_service_pb2.CallOutcome:
        """Make one call; the caller converts a failure outcome to its error."""
        if self.unsupported:
            raise UseUnary
        call_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[agent_service_pb2.CallOutcome] = loop.create_future()
        self._pending[call_id] = future
        self._enqueue(
            agent_service_pb2.CallFrame(
                call_id=call_id, send=request, timeout_millis=max(1, int(timeout * 1000))
            )
        )
        deadlines.add(loop.time() + timeout, _RemoteCall(self, call_id, future, request))
        try:
            return await future
        except asyncio.CancelledError:
            self._cancel(call_id)
            raise
        finally:
            deadlines.finished()
            self._pending.pop(call_id, None)
            if self._idle is not None and not self._pending:
                self._idle.set()

    async def drained(self, timeout: float) -> None:
        """Wait until no call is in flight on the stream, `timeout` seconds at most."""
        if not self._pending:
            return
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    def _enqueue(self, frame: agent_service_pb2.CallFrame) -> None:
        if self._call is None:
            stream: _ConnectCall = self._peer.stub.Connect(metadata=self._metadata)  # type: ignore[call-arg]  # frames go out through write(), which the stubs do not model
            self._call = stream
            loop = asyncio.get_running_loop()
            for work in (self._write(stream), self._read(stream)):
                task = loop.create_task(work)
                _background.add(task)
                task.add_done_callback(_background.discard)
        self._outbox.append(frame)
        self._ready.set()

    def _cancel(self, call_id: int) -> None:
        if self._call is not None:
            self._enqueue(
                agent_service_pb2.CallFrame(call_id=call_id, cancel=agent_service_pb2.CancelCall())
            )

    async def _write(self, stream: _ConnectCall) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            while self._call is stream:
                await self._ready.wait()
                self._ready.clear()
                while self._outbox and self._call is stream:
                    batch, self._outbox = self._outbox, []
                    await stream.write(agent_service_pb2.ConnectRequest(calls=batch))

    async def _read(self, stream: _ConnectCall) -> None:
        error: BaseException = PeerUnavailable(
            f"the stream to {self._peer.node_id or self._peer.address} ended"
        )
        try:
            async for response in stream:
                for index, outcome in enumerate(response.calls, start=1):
                    future = self._pending.get(outcome.call_id)
                    if future is not None and not future.done():
                        future.set_result(outcome)
                    if index % _CHUNK == 0:
                        # Let the callers resumed so far run and their next calls
                        # go out while the rest are resolved: the two nodes then
                        # work at the same time instead of in turn.
                        await asyncio.sleep(0)
        except grpc.aio.AioRpcError as failure:
            if failure.code() is grpc.StatusCode.UNIMPLEMENTED:
                self.unsupported = True
                error = UseUnary()
            else:
                error = PeerUnavailable(
                    f"the stream to {self._peer.node_id or self._peer.address} broke: "
                    f"{failure.code().name} {failure.details()}",
                    remote=True,
                )
        finally:
            if self._call is stream:
                self._call = None
                self._outbox.clear()
                self._ready.set()  # lets the writer see the stream is gone
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(error)
            if self._idle is not None:
                self._idle.set()


class _RemoteCall:
    """A call in flight on a Connect stream, as its deadline sees it."""

    __slots__ = ("call_id", "connection", "future", "request")

    def __init__(
        self,
        connection: Connection,
        call_id: int,
        future: asyncio.Future[agent_service_pb2.CallOutcome],
        request: agent_service_pb2.SendRequest,
    ) -> None:
        self.connection = connection
        self.call_id = call_id
        self.future = future
        self.request = request

    @property
    def pending(self) -> bool:
        return not self.future.done()

    def expire(self) -> None:
        recipient = self.request.recipient
        peer = self.connection._peer
        self.future.set_exception(
            DeadlineExceeded(
                f"deadline exceeded calling {recipient.type}/{recipient.key} "
                f"on {peer.node_id or peer.address}"
            )
        )
        self.connection._cancel(self.call_id)


_ConnectCall = grpc.aio.StreamStreamCall[
    agent_service_pb2.ConnectRequest, agent_service_pb2.ConnectResponse
]
_background: set[asyncio.Task[None]] = set()
_CHUNK = 16
"""Frames or outcomes handled before yielding to the loop, to pipeline big batches."""


class Peer:
    """One other node: its channel, what it last said it hosts, and its stream."""

    def __init__(
        self,
        name: str,
        address: str,
        channel: grpc.aio.Channel,
        metadata: Sequence[tuple[str, str]],
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
        self.channel = channel
        self.stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        self.connection = Connection(self, metadata)
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


class _DnsGroup:
    """The peers one DNS name resolved to, by address."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.members: dict[str, Peer] = {}


class Peers:
    """The peers of a node, kept connected, with a routing table from their NodeInfo."""

    def __init__(
        self,
        owner: Owner,
        *,
        make_channel: Callable[[str], grpc.aio.Channel],
        metadata: Sequence[tuple[str, str]],
        discovery: PeerDiscovery | None = None,
    ) -> None:
        self._owner = owner
        self._make_channel = make_channel
        self.metadata = tuple(metadata)
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
        peer = Peer(
            name, address, self._make_channel(address), self.metadata, group=group, learned=learned
        )
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
            await peer.connection.drained(self._discovery.drain_timeout)
        finally:
            await peer.channel.close(grace=None)

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
        # Calls in flight on the peer's Connect stream are not failed here: a
        # peer that stops gracefully still answers them; one that died breaks
        # that stream too, which fails them.
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
                peer.is_self = True
                level = logging.DEBUG if peer.group else logging.WARNING
                logger.log(level, "not peering with %s at %s: %s", peer.name, peer.address, reason)
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
                filters=self._owner.subscription_filters(),
                subscriber_id=self._owner.node_id,
                accept_batches=True,
            ),
            metadata=self.metadata,
        )
        peer.stream = stream
        deliver: Callable[[agent_service_pb2.Event], Awaitable[None]] = self._owner.deliver_event
        async for item in stream:
            kind = item.WhichOneof("kind")
            if kind == "event":
                await deliver(item.event)
            elif kind == "events":
                for event in item.events.events:
                    await deliver(event)
            elif kind == "node":
                self._update(peer, item.node)
        return True


class _NotAPeer(Exception):
    """The address does not belong to another node."""
