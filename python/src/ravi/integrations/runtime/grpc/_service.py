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

from ravi.errors import RaviError, Unavailable, to_grpc_status
from ravi.integrations.runtime.grpc._wire import failure_of, matches
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2

if TYPE_CHECKING:
    from ravi.integrations.runtime.grpc._runtime import GrpcRuntime

logger = logging.getLogger("ravi.grpc")

STREAM_QUEUE = 10_000
"""Events queued per Subscribe stream before the subscriber counts as too slow."""


_TRACE_KEYS = ("traceparent", "tracestate")
Context = grpc.aio.ServicerContext[Any, Any]


def trace_context(context: Context) -> dict[str, str]:
    """The W3C trace context a unary call or stream carries in its gRPC metadata."""
    return {
        key: value
        for key, value in context.invocation_metadata() or ()
        if key in _TRACE_KEYS and isinstance(value, str)
    }


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


class _ConnectSession:
    """One Connect stream: Send calls in flight, answered in any order."""

    def __init__(self, runtime: GrpcRuntime, trace: dict[str, str], draining: bool) -> None:
        self._runtime = runtime
        self._trace = trace
        self._responses: asyncio.Queue[agent_service_pb2.ConnectResponse | None] = asyncio.Queue()
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._draining = draining

    async def run(
        self, frames: AsyncIterator[agent_service_pb2.ConnectRequest]
    ) -> AsyncIterator[agent_service_pb2.ConnectResponse]:
        reader = asyncio.get_running_loop().create_task(self._read(frames))
        try:
            while (response := await self._responses.get()) is not None:
                yield response
        finally:
            reader.cancel()
            for task in list(self._calls.values()):
                task.cancel()

    def drain(self) -> None:
        self._draining = True
        asyncio.get_running_loop().create_task(self._end_when_done())

    async def _end_when_done(self) -> None:
        await asyncio.gather(*self._calls.values(), return_exceptions=True)
        self._responses.put_nowait(None)

    async def _read(self, frames: AsyncIterator[agent_service_pb2.ConnectRequest]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for frame in frames:
                if frame.HasField("send"):
                    if self._draining:
                        self._answer(frame.call_id, error=Unavailable("the node is stopping"))
                        continue
                    timeout = frame.timeout_millis / 1000 if frame.timeout_millis else None
                    task = loop.create_task(self._serve(frame.call_id, frame.send, timeout))
                    self._calls[frame.call_id] = task
                    task.add_done_callback(self._forget(frame.call_id))
                elif frame.HasField("cancel"):
                    cancelled = self._calls.pop(frame.call_id, None)
                    if cancelled is not None:
                        cancelled.cancel()
            await asyncio.gather(*self._calls.values(), return_exceptions=True)
        finally:
            self._responses.put_nowait(None)

    def _forget(self, call_id: int) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._calls.pop(call_id, None)

        return done

    async def _serve(
        self, call_id: int, request: agent_service_pb2.SendRequest, timeout: float | None
    ) -> None:
        try:
            response = await self._runtime.serve_send(request, timeout, self._trace)
        except RaviError as error:
            self._answer(call_id, error=error)
        else:
            self._answer(call_id, result=response)

    def _answer(
        self,
        call_id: int,
        *,
        result: agent_service_pb2.SendResponse | None = None,
        error: RaviError | None = None,
    ) -> None:
        if error is not None:
            frame = agent_service_pb2.ConnectResponse(call_id=call_id, failure=failure_of(error))
        else:
            frame = agent_service_pb2.ConnectResponse(call_id=call_id, result=result)
        self._responses.put_nowait(frame)


Request = TypeVar("Request")
Response = TypeVar("Response")


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
        self._sessions: set[_ConnectSession] = set()
        self._draining = False

    @_statuses
    async def Send(
        self, request: agent_service_pb2.SendRequest, context: Context
    ) -> agent_service_pb2.SendResponse:
        return await self._runtime.serve_send(
            request, context.time_remaining(), trace_context(context)
        )

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_service_pb2.ConnectRequest],
        context: Context,
    ) -> AsyncIterator[agent_service_pb2.ConnectResponse]:
        session = _ConnectSession(self._runtime, trace_context(context), self._draining)
        self._sessions.add(session)
        try:
            async for response in session.run(request_iterator):
                yield response
        finally:
            self._sessions.discard(session)

    def drain(self) -> None:
        """Stop taking calls on Connect streams; end each once its calls are done."""
        self._draining = True
        for session in self._sessions:
            session.drain()

    @_statuses
    async def Publish(
        self, request: agent_service_pb2.PublishRequest, context: Context
    ) -> agent_service_pb2.PublishResponse:
        return await self._runtime.serve_publish(
            request, context.time_remaining(), trace_context(context)
        )

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
