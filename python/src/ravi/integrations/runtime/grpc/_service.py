"""The AgentService servicer and the registry of open Subscribe streams."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
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

_CHUNK = 16
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


_Item = agent_service_pb2.Event | types_pb2.NodeInfo | None
_MAX_BATCH = 256


class _Subscriber:
    """One Subscribe stream's queue: events and node updates waiting to be sent."""

    __slots__ = ("batches", "filters", "items", "overflowed", "ready", "subscriber_id")

    def __init__(
        self, filters: list[types_pb2.TopicFilter], subscriber_id: str, batches: bool
    ) -> None:
        self.filters = filters
        self.subscriber_id = subscriber_id
        self.batches = batches
        self.items: deque[_Item] = deque()
        self.ready = asyncio.Event()
        self.overflowed = False

    def wants(self, topic_type: str) -> bool:
        return any(matches(f, topic_type) for f in self.filters)

    def offer(self, item: _Item) -> bool:
        if self.overflowed:
            return False
        if len(self.items) >= STREAM_QUEUE:
            # A stream that cannot keep up ends with RESOURCE_EXHAUSTED; the
            # subscriber reconnects and knows it missed events.
            self.overflowed = True
            self.ready.set()
            return False
        self.items.append(item)
        self.ready.set()
        return True

    def end(self) -> None:
        self.items.append(None)
        self.ready.set()

    async def responses(self) -> AsyncIterator[agent_service_pb2.SubscribeResponse]:
        """What goes out on the stream, until the node ends it."""
        items = self.items
        while True:
            await self.ready.wait()
            self.ready.clear()
            while items:
                item = items.popleft()
                if item is None:
                    return
                if isinstance(item, types_pb2.NodeInfo):
                    yield agent_service_pb2.SubscribeResponse(node=item)
                elif not self.batches or not items:
                    yield agent_service_pb2.SubscribeResponse(event=item)
                else:
                    # Events that are ready together go out as one message.
                    batch = [item]
                    while (
                        items
                        and len(batch) < _MAX_BATCH
                        and isinstance(items[0], agent_service_pb2.Event)
                    ):
                        event = items.popleft()
                        assert isinstance(event, agent_service_pb2.Event)
                        batch.append(event)
                    yield agent_service_pb2.SubscribeResponse(
                        events=agent_service_pb2.EventBatch(events=batch)
                    )
            if self.overflowed:
                return


class Streams:
    """The Subscribe streams open on this node."""

    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()

    def open(
        self, filters: list[types_pb2.TopicFilter], subscriber_id: str, batches: bool
    ) -> _Subscriber:
        subscriber = _Subscriber(filters, subscriber_id, batches)
        self._subscribers.add(subscriber)
        return subscriber

    def close(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def matching(self, topic_type: str, origin: str | None) -> list[_Subscriber]:
        return [s for s in self._subscribers if s.subscriber_id != origin and s.wants(topic_type)]

    def push(self, subscribers: list[_Subscriber], event: agent_service_pb2.Event) -> int:
        return sum(subscriber.offer(event) for subscriber in subscribers)

    def node_changed(self, info: types_pb2.NodeInfo) -> None:
        for subscriber in self._subscribers:
            subscriber.offer(info)

    def end_all(self) -> None:
        for subscriber in self._subscribers:
            subscriber.end()


class _ConnectSession:
    """One Connect stream: Send calls in flight, answered in any order."""

    def __init__(self, runtime: GrpcRuntime, trace: dict[str, str], draining: bool) -> None:
        self._runtime = runtime
        self._trace = trace
        self._outcomes: list[agent_service_pb2.CallOutcome] = []
        self._ready = asyncio.Event()
        self._ended = False
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._draining = draining

    async def run(
        self, requests: AsyncIterator[agent_service_pb2.ConnectRequest]
    ) -> AsyncIterator[agent_service_pb2.ConnectResponse]:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                if self._outcomes:
                    # Outcomes that are ready together go out as one message.
                    batch, self._outcomes = self._outcomes, []
                    yield agent_service_pb2.ConnectResponse(calls=batch)
                if self._ended and not self._outcomes:
                    return
        finally:
            reader.cancel()
            for task in list(self._calls.values()):
                task.cancel()

    def drain(self) -> None:
        self._draining = True
        asyncio.get_running_loop().create_task(self._end_when_done())

    async def _end_when_done(self) -> None:
        await asyncio.gather(*self._calls.values(), return_exceptions=True)
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._ready.set()

    async def _read(self, requests: AsyncIterator[agent_service_pb2.ConnectRequest]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for request in requests:
                for index, frame in enumerate(request.calls, start=1):
                    if index % _CHUNK == 0:
                        # Let the calls started so far finish and be answered
                        # while the rest of a big batch is read.
                        await asyncio.sleep(0)
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
            self._end()

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
            outcome = agent_service_pb2.CallOutcome(call_id=call_id, failure=failure_of(error))
        else:
            outcome = agent_service_pb2.CallOutcome(call_id=call_id, result=result)
        self._outcomes.append(outcome)
        self._ready.set()


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
        subscriber = self._streams.open(
            list(request.filters), request.subscriber_id, request.accept_batches
        )
        try:
            yield agent_service_pb2.SubscribeResponse(node=self._runtime.node_info())
            async for response in subscriber.responses():
                yield response
            if subscriber.overflowed:
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
