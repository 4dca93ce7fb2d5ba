"""Peers: connections to other nodes, the routing table, and their event streams."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
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
    ) -> None:
        self.name = name
        self.address = address
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
        peer = Peer(name, address, self._make_channel(address), self.metadata)
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
