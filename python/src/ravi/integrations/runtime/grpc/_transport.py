"""GrpcPeer: the mesh's PeerTransport over grpc.aio, and its multiplexed Connect stream.

Every Send to a peer goes out on one Connect stream per peer, as a frame
(`CallFrame.send`); a deadline that passes or a cancellation token that fires
sends a `CallFrame.cancel` on the same stream, so the handler on the far side
is cancelled too. Only a peer that answers the stream with UNIMPLEMENTED (a
member without Connect) is called with unary Send instead, from then on.
Every gRPC failure becomes a `RaviError` here (`ravi.errors` maps both
encodings); nothing above this module sees grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import grpc.aio

from ravi._cancellation import CancellationToken
from ravi._deadlines import Deadlines
from ravi._mesh.codec import trace_of
from ravi.errors import (
    Cancelled,
    Code,
    DeadlineExceeded,
    PeerUnavailable,
    RaviError,
    from_call_failure,
    from_grpc_error,
)
from ravi.integrations.runtime.grpc._security import TlsConfig
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2

T = TypeVar("T")

_CHUNK = 16
"""Frames or outcomes handled before yielding to the loop, to pipeline big batches."""

_ConnectCall = grpc.aio.StreamStreamCall[
    agent_service_pb2.ConnectRequest, agent_service_pb2.ConnectResponse
]
_background: set[asyncio.Task[None]] = set()


def channel_options(max_message_bytes: int) -> list[tuple[str, str | int]]:
    """The options of a channel to a peer (and of the server, for the size limits)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


def dialer(
    *,
    max_message_bytes: int,
    tls: TlsConfig | None,
    token: str | None,
    deadlines: Callable[[], Deadlines],
) -> Callable[[str], GrpcPeer]:
    """The mesh's Dialer for gRPC: a channel (TLS when `tls`) and a GrpcPeer per address."""
    options = [
        *channel_options(max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def dial(address: str) -> GrpcPeer:
        if tls is not None:
            channel = grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)
        else:
            channel = grpc.aio.insecure_channel(address, options=options)
        return GrpcPeer(address, channel, metadata, deadlines)

    return dial


class GrpcPeer:
    """GrpcPeer is the PeerTransport to one peer: its channel, stub and Connect stream."""

    def __init__(
        self,
        address: str,
        channel: grpc.aio.Channel,
        metadata: Sequence[tuple[str, str]],
        deadlines: Callable[[], Deadlines],
    ) -> None:
        self.address = address
        self._channel = channel
        self._metadata = tuple(metadata)
        self._stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        self._connection = _Connection(self, deadlines)

    async def send(
        self,
        request: agent_service_pb2.SendRequest,
        timeout: float,
        cancellation: CancellationToken | None,
    ) -> agent_service_pb2.SendResponse:
        if not self._connection.unsupported:
            try:
                return await self._connection.send(request, timeout, cancellation)
            except _UseUnary:
                pass
        return await self._unary_send(request, timeout, cancellation)

    async def _unary_send(
        self,
        request: agent_service_pb2.SendRequest,
        timeout: float,
        cancellation: CancellationToken | None,
    ) -> agent_service_pb2.SendResponse:
        """Send to a peer without Connect: a unary call, cancelled through the token."""
        metadata = (*self._metadata, *trace_of(request.envelope.metadata))
        call = self._stub.Send(request, timeout=timeout, metadata=metadata)
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
            raise self.error(error) from None
        finally:
            if unlink is not None:
                unlink()

    async def publish(
        self, request: agent_service_pb2.PublishRequest, timeout: float
    ) -> agent_service_pb2.PublishResponse:
        metadata = (*self._metadata, *trace_of(request.envelope.metadata))
        return await self._unary(self._stub.Publish(request, timeout=timeout, metadata=metadata))

    def subscribe(self, request: agent_service_pb2.SubscribeRequest) -> _EventStream:
        return _EventStream(self, self._stub.Subscribe(request, metadata=self._metadata))

    async def describe(
        self, request: agent_service_pb2.DescribeRequest, timeout: float
    ) -> agent_service_pb2.DescribeResponse:
        return await self._unary(
            self._stub.Describe(request, timeout=timeout, metadata=self._metadata)
        )

    async def resolve_promise(
        self, request: agent_service_pb2.ResolvePromiseRequest, timeout: float
    ) -> agent_service_pb2.ResolvePromiseResponse:
        return await self._unary(
            self._stub.ResolvePromise(request, timeout=timeout, metadata=self._metadata)
        )

    async def save_state(
        self, request: agent_service_pb2.SaveStateRequest, timeout: float
    ) -> agent_service_pb2.SaveStateResponse:
        return await self._unary(
            self._stub.SaveState(request, timeout=timeout, metadata=self._metadata)
        )

    async def load_state(
        self, request: agent_service_pb2.LoadStateRequest, timeout: float
    ) -> agent_service_pb2.LoadStateResponse:
        return await self._unary(
            self._stub.LoadState(request, timeout=timeout, metadata=self._metadata)
        )

    async def drained(self, timeout: float) -> None:
        await self._connection.drained(timeout)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def _unary(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise self.error(error) from None

    def error(self, error: grpc.aio.AioRpcError) -> RaviError:
        """The RaviError for a failed call to this peer (PEER_UNAVAILABLE when unreachable)."""
        converted = from_grpc_error(error)
        if converted.code is Code.UNAVAILABLE and converted.reason is None:
            return PeerUnavailable(
                f"the node at {self.address} is unavailable: {error.details()}", remote=True
            )
        return converted


class _EventStream:
    """A peer's Subscribe stream, its failures as RaviErrors."""

    def __init__(
        self,
        peer: GrpcPeer,
        call: grpc.aio.UnaryStreamCall[
            agent_service_pb2.SubscribeRequest, agent_service_pb2.SubscribeResponse
        ],
    ) -> None:
        self._peer = peer
        self._call = call

    async def follow(
        self,
        deliver: Callable[[agent_service_pb2.Event], Awaitable[None]],
        described: Callable[[types_pb2.NodeInfo], None],
    ) -> None:
        # The loop over the call's items is here, not behind an iterator of our
        # own: every event of a busy stream passes through it.
        try:
            async for item in self._call:
                kind = item.WhichOneof("kind")
                if kind == "events":
                    for event in item.events.events:
                        await deliver(event)
                elif kind == "event":
                    await deliver(item.event)
                elif kind == "node":
                    described(item.node)
        except grpc.aio.AioRpcError as error:
            raise self._peer.error(error) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._call.cancelled() and not (task is not None and task.cancelling()):
                raise Cancelled(f"the stream from {self._peer.address} was cancelled") from None
            raise

    def cancel(self) -> bool:
        return self._call.cancel()


class _UseUnary(Exception):
    """The peer does not implement Connect: send this call as a unary Send."""


class _Connection:
    """Send calls to one peer multiplexed over a Connect stream (docs/protocol.md).

    Opened on first use and again after it breaks; calls in flight when it
    breaks fail with PeerUnavailable. A writer task sends the frames that are
    ready together as one message, so many calls in flight cost few writes. A
    peer answering UNIMPLEMENTED is remembered, and its calls go unary from then
    on.
    """

    def __init__(self, peer: GrpcPeer, deadlines: Callable[[], Deadlines]) -> None:
        self._peer = peer
        self._deadlines = deadlines
        self._call: _ConnectCall | None = None
        self._pending: dict[int, asyncio.Future[agent_service_pb2.CallOutcome]] = {}
        self._ids = itertools.count(1)
        self._outbox: list[agent_service_pb2.CallFrame] = []
        self._ready = asyncio.Event()
        self._idle: asyncio.Event | None = None
        self.unsupported = False

    async def send(
        self,
        request: agent_service_pb2.SendRequest,
        timeout: float,
        cancellation: CancellationToken | None,
    ) -> agent_service_pb2.SendResponse:
        call_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[agent_service_pb2.CallOutcome] = loop.create_future()
        self._pending[call_id] = future
        self._enqueue(
            agent_service_pb2.CallFrame(
                call_id=call_id, send=request, timeout_millis=max(1, int(timeout * 1000))
            )
        )
        deadlines = self._deadlines()
        deadlines.add(loop.time() + timeout, _RemoteCall(self, call_id, future, request))
        unlink = (
            cancellation.add_callback(_Cancel(self, call_id, future))
            if cancellation is not None
            else None
        )
        try:
            outcome = await future
        except asyncio.CancelledError:
            self._cancel(call_id)
            raise
        finally:
            deadlines.finished()
            if unlink is not None:
                unlink()
            self._pending.pop(call_id, None)
            if self._idle is not None and not self._pending:
                self._idle.set()
        if outcome.HasField("failure"):
            raise from_call_failure(outcome.failure)
        return outcome.result

    async def drained(self, timeout: float) -> None:
        """Wait until no call is in flight on the stream, `timeout` seconds at most."""
        if not self._pending:
            return
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    def _enqueue(self, frame: agent_service_pb2.CallFrame) -> None:
        if self._call is None:
            stream: _ConnectCall = self._peer._stub.Connect(metadata=self._peer._metadata)  # type: ignore[call-arg]  # frames go out through write(), which the stubs do not model
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
            f"the stream to the node at {self._peer.address} ended"
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
                error = _UseUnary()
            else:
                error = PeerUnavailable(
                    f"the stream to the node at {self._peer.address} broke: "
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


class _Cancel:
    """What a cancellation token does to a call on the stream: fail it, tell the peer."""

    __slots__ = ("call_id", "connection", "future")

    def __init__(
        self,
        connection: _Connection,
        call_id: int,
        future: asyncio.Future[agent_service_pb2.CallOutcome],
    ) -> None:
        self.connection = connection
        self.call_id = call_id
        self.future = future

    def __call__(self) -> None:
        if not self.future.done():
            self.future.set_exception(
                Cancelled("the call was cancelled through its cancellation token")
            )
            self.connection._cancel(self.call_id)


class _RemoteCall:
    """A call in flight on a Connect stream, as its deadline sees it."""

    __slots__ = ("call_id", "connection", "future", "request")

    def __init__(
        self,
        connection: _Connection,
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
        self.future.set_exception(
            DeadlineExceeded(
                f"deadline exceeded calling {recipient.type}/{recipient.key} "
                f"on the node at {self.connection._peer.address}"
            )
        )
        self.connection._cancel(self.call_id)
