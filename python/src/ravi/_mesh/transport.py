"""The seam between the mesh node and a transport: `PeerTransport` out, `NodeHandler` in.

A transport (today `ravi.integrations.runtime.grpc`) implements `PeerTransport`
once per peer address, and serves the contract by calling a `NodeHandler` (the
mesh node). Both sides speak the contract's messages (`ravi.mesh.v1`) and
`RaviError`s; how those travel (channels, streams, status codes, credentials)
is the transport's business alone. A second transport implements these two
protocols and reuses the whole mesh.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol

from ravi._cancellation import CancellationToken
from ravi.mesh.v1 import agent_service_pb2, types_pb2


class EventStream(Protocol):
    """EventStream is an open Subscribe stream from a peer.

    `cancel()` ends it from this side; `follow` then ends or raises `Cancelled`.
    """

    async def follow(
        self,
        deliver: Callable[[agent_service_pb2.Event], Awaitable[None]],
        described: Callable[[types_pb2.NodeInfo], None],
    ) -> None:
        """Hand each event to `deliver` and each node update to `described`, until the end.

        `deliver` is awaited before the next item is read, so a slow subscriber
        slows the stream instead of piling events up. Raises a `RaviError` when
        the stream fails.
        """
        ...

    def cancel(self) -> bool: ...


class PeerTransport(Protocol):
    """PeerTransport carries the contract's calls to one peer.

    Every method raises a `RaviError` flagged remote when the peer answered with
    an error, and `PeerUnavailable` when the peer cannot be reached. `timeout`
    is in seconds and always given: every outbound call has a deadline.
    """

    address: str

    async def send(
        self,
        request: agent_service_pb2.SendRequest,
        timeout: float,
        cancellation: CancellationToken | None,
    ) -> agent_service_pb2.SendResponse:
        """The hot path: one Send, cancelled when `cancellation` is (CANCELLED)."""
        ...

    async def publish(
        self, request: agent_service_pb2.PublishRequest, timeout: float
    ) -> agent_service_pb2.PublishResponse: ...

    def subscribe(self, request: agent_service_pb2.SubscribeRequest) -> EventStream: ...

    async def describe(
        self, request: agent_service_pb2.DescribeRequest, timeout: float
    ) -> agent_service_pb2.DescribeResponse: ...

    async def resolve_promise(
        self, request: agent_service_pb2.ResolvePromiseRequest, timeout: float
    ) -> agent_service_pb2.ResolvePromiseResponse: ...

    async def save_state(
        self, request: agent_service_pb2.SaveStateRequest, timeout: float
    ) -> agent_service_pb2.SaveStateResponse: ...

    async def load_state(
        self, request: agent_service_pb2.LoadStateRequest, timeout: float
    ) -> agent_service_pb2.LoadStateResponse: ...

    async def drained(self, timeout: float) -> None:
        """Wait until no Send is in flight, `timeout` seconds at most."""
        ...

    async def close(self) -> None: ...


Dialer = Callable[[str], PeerTransport]
"""Dialer makes the transport to the peer at an address ("host:port")."""


class NodeHandler(Protocol):
    """NodeHandler is what a transport's server calls to serve the contract.

    Each method takes and returns the contract's messages and raises a
    `RaviError` for a failed call; the transport maps it to its own encoding
    (a status, a `CallFailure` frame). `remaining` is the seconds left before the
    caller's deadline (None when it set none); `trace` the W3C trace context the
    call carried outside its envelope.
    """

    @property
    def node_id(self) -> str: ...

    def node_info(self) -> types_pb2.NodeInfo: ...

    async def serve_send(
        self,
        request: agent_service_pb2.SendRequest,
        remaining: float | None,
        trace: Mapping[str, str],
    ) -> agent_service_pb2.SendResponse: ...

    async def serve_publish(
        self,
        request: agent_service_pb2.PublishRequest,
        remaining: float | None,
        trace: Mapping[str, str],
    ) -> agent_service_pb2.PublishResponse: ...

    def serve_subscribe(
        self, request: agent_service_pb2.SubscribeRequest
    ) -> AsyncIterator[agent_service_pb2.SubscribeResponse]:
        """The stream's items: the node's description first, then events and updates.

        Raises `ResourceExhausted` at the end of a stream whose subscriber fell too
        far behind.
        """
        ...

    def serve_describe(
        self, request: agent_service_pb2.DescribeRequest
    ) -> agent_service_pb2.DescribeResponse: ...

    async def serve_resolve_promise(
        self, request: agent_service_pb2.ResolvePromiseRequest
    ) -> agent_service_pb2.ResolvePromiseResponse: ...

    async def serve_save_state(
        self, request: agent_service_pb2.SaveStateRequest
    ) -> agent_service_pb2.SaveStateResponse: ...

    async def serve_load_state(
        self, request: agent_service_pb2.LoadStateRequest
    ) -> agent_service_pb2.LoadStateResponse: ...
