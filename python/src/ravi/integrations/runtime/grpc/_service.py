"""The AgentService servicer and the registry of open Subscribe streams."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

from ravi.errors import RaviError, to_grpc_status
from ravi.integrations.runtime.grpc._wire import matches
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2

if TYPE_CHECKING:
    from ravi.integrations.runtime.grpc._runtime import GrpcRuntime

logger = logging.getLogger("ravi.grpc")

STREAM_QUEUE = 10_000
"""Events queued per Subscribe stream before the subscriber counts as too slow."""


class _Subscriber:
    __slots__ = ("filters", "overflowed", "queue", "subscriber_id")

    def __init__(self, filters: list[types_pb2.TopicFilter], subscriber_id: str) -> None:
        self.filters = filters
        self.subscriber_id = subscriber_id
        self.queue: asyncio.Queue[agent_service_pb2.SubscribeResponse | None] = asyncio.Queue(
            STREAM_QUEUE
        )
        self.overflowed = False

    def wants(self, topic_type: str) -> bool:
        return any(matches(f, topic_type) for f in self.filters)

    def offer(self, item: agent_service_pb2.SubscribeResponse | None) -> bool:
        if self.overflowed:
            return False
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # A stream that cannot keep up ends with RESOURCE_EXHAUSTED; the
            # subscriber reconnects and knows it missed events.
            self.overflowed = True
            return False
        return True


class Streams:
    """The Subscribe streams open on this node."""

    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()

    def open(self, filters: list[types_pb2.TopicFilter], subscriber_id: str) -> _Subscriber:
        subscriber = _Subscriber(filters, subscriber_id)
        self._subscribers.add(subscriber)
        return subscriber

    def close(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def matching(self, topic_type: str, origin: str | None) -> list[_Subscriber]:
        return [s for s in self._subscribers if s.subscriber_id != origin and s.wants(topic_type)]

    def push(self, subscribers: list[_Subscriber], event: agent_service_pb2.Event) -> int:
        item = agent_service_pb2.SubscribeResponse(event=event)
        return sum(subscriber.offer(item) for subscriber in subscribers)

    def node_changed(self, info: types_pb2.NodeInfo) -> None:
        item = agent_service_pb2.SubscribeResponse(node=info)
        for subscriber in self._subscribers:
            subscriber.offer(item)

    def end_all(self) -> None:
        for subscriber in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)


Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]


def _statuses(
    method: Callable[[Any, Request, Context], Awaitable[Response]],
) -> Callable[[Any, Request, Context], Awaitable[Response]]:
    """Turn a RaviError raised by a unary method into its gRPC status."""

    @functools.wraps(method)
    async def serve(self: Any, request: Request, context: Context) -> Response:
        try:
            return await method(self, request, context)
        except RaviError as error:
            # grpc.aio's context has abort_with_status; the stubs lack it.
            await context.abort_with_status(to_grpc_status(error))  # type: ignore[attr-defined]
            raise  # pragma: no cover - abort_with_status raises

    return serve


class AgentService(agent_service_pb2_grpc.AgentServiceServicer):
    """Serves ravi.mesh.v1.AgentService for a GrpcRuntime; errors become statuses."""

    def __init__(self, runtime: GrpcRuntime, streams: Streams) -> None:
        self._runtime = runtime
        self._streams = streams

    @_statuses
    async def Send(
        self, request: agent_service_pb2.SendRequest, context: Context
    ) -> agent_service_pb2.SendResponse:
        return await self._runtime.serve_send(request, context)

    @_statuses
    async def Publish(
        self, request: agent_service_pb2.PublishRequest, context: Context
    ) -> agent_service_pb2.PublishResponse:
        return await self._runtime.serve_publish(request, context)

    async def Subscribe(
        self,
        request: agent_service_pb2.SubscribeRequest,
        context: Context,
    ) -> AsyncIterator[agent_service_pb2.SubscribeResponse]:
        subscriber = self._streams.open(list(request.filters), request.subscriber_id)
        try:
            yield agent_service_pb2.SubscribeResponse(node=self._runtime.node_info())
            while True:
                item = await subscriber.queue.get()
                if item is None:
                    return
                yield item
                if subscriber.overflowed and subscriber.queue.empty():
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"subscriber {request.subscriber_id or '(anonymous)'} fell more than "
                        f"{STREAM_QUEUE} events behind; events were dropped",
                    )
        finally:
            self._streams.close(subscriber)

    async def Describe(
        self,
        request: agent_service_pb2.DescribeRequest,
        context: Context,
    ) -> agent_service_pb2.DescribeResponse:
        if request.HasField("caller"):
            self._runtime.peer_described_us(request.caller)
        return agent_service_pb2.DescribeResponse(node=self._runtime.node_info())

    @_statuses
    async def ResolvePromise(
        self, request: agent_service_pb2.ResolvePromiseRequest, context: Context
    ) -> agent_service_pb2.ResolvePromiseResponse:
        return await self._runtime.serve_resolve_promise(request)

    @_statuses
    async def SaveState(
        self, request: agent_service_pb2.SaveStateRequest, context: Context
    ) -> agent_service_pb2.SaveStateResponse:
        return await self._runtime.serve_save_state(request)

    @_statuses
    async def LoadState(
        self, request: agent_service_pb2.LoadStateRequest, context: Context
    ) -> agent_service_pb2.LoadStateResponse:
        return await self._runtime.serve_load_state(request)
