"""The Subscribe streams a node serves: one queue per subscriber, and the fan-out to them."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from ravi._mesh.codec import matches
from ravi.errors import Unavailable
from ravi.mesh.v1 import agent_service_pb2, types_pb2

STREAM_QUEUE = 10_000
"""Events queued per Subscribe stream before the subscriber counts as too slow."""

_Item = agent_service_pb2.Event | types_pb2.NodeInfo | None
_MAX_BATCH = 256
_CATCH_UP_TURNS = 8


class Subscriber:
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


def backed_up(subscribers: list[Subscriber]) -> bool:
    """Whether a stream holds a full batch or more: its writer is behind.

    A stream that overflowed takes no more events and is ending: no publisher
    waits for it (as on the Go and Node nodes, which drop it at once).
    """
    return any(
        len(subscriber.items) >= _MAX_BATCH and not subscriber.overflowed
        for subscriber in subscribers
    )


async def catch_up(subscribers: list[Subscriber]) -> None:
    """Give the writers of backed-up streams event-loop turns, a bounded number.

    A loop of publishes that awaits nothing else never lets a writer run: every
    event would wait for the loop's end, and a loop longer than STREAM_QUEUE
    would end a stream whose subscriber keeps up. One turn lets a batching
    writer send its whole backlog, but a writer that sends one event per
    message (Go's and Node's nodes ask for no batches) needs a few turns per
    event. The bound keeps a stuck subscriber from holding the publisher: its
    stream still fills up and ends.
    """
    for _ in range(_CATCH_UP_TURNS):
        await asyncio.sleep(0)
        if not backed_up(subscribers):
            return


class Streams:
    """The Subscribe streams open on this node."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._ended = False

    def start(self) -> None:
        """Take streams again (a node that stopped and starts anew)."""
        self._ended = False

    def open(
        self, filters: list[types_pb2.TopicFilter], subscriber_id: str, batches: bool
    ) -> Subscriber:
        if self._ended:
            # A stream opened while the node stops would hold the server's
            # stop for its whole grace period.
            raise Unavailable("the node is stopping")
        subscriber = Subscriber(filters, subscriber_id, batches)
        self._subscribers.add(subscriber)
        return subscriber

    def close(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def matching(self, topic_type: str, origin: str | None) -> list[Subscriber]:
        return [s for s in self._subscribers if s.subscriber_id != origin and s.wants(topic_type)]

    def push(self, subscribers: list[Subscriber], event: agent_service_pb2.Event) -> int:
        return sum(subscriber.offer(event) for subscriber in subscribers)

    def node_changed(self, info: types_pb2.NodeInfo) -> None:
        for subscriber in self._subscribers:
            subscriber.offer(info)

    def end_all(self) -> None:
        """End every stream, and refuse new ones: the node is stopping."""
        self._ended = True
        for subscriber in self._subscribers:
            subscriber.end()
