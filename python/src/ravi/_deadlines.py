"""Deadlines of calls in flight, enforced by one loop timer."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from typing import Protocol

_COMPACT_AT = 1024


class Expiring(Protocol):
    """A call with a deadline: it expires unless it is no longer pending."""

    @property
    def pending(self) -> bool: ...

    def expire(self) -> None: ...


class Deadlines:
    """The deadlines of calls in flight, enforced by one loop timer.

    A loop timer per call costs a Python TimerHandle, its comparisons and its
    cancellation on every call; here a call costs one heap push of a tuple.
    Entries of finished calls stay until the heap is compacted (when it is
    mostly such entries) or their deadline pops them.
    """

    __slots__ = ("armed_at", "heap", "live", "loop", "sequence", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, Expiring]] = []
        self.sequence = itertools.count()
        self.timer: asyncio.TimerHandle | None = None
        self.armed_at = math.inf
        self.live = 0

    def add(self, deadline: float, call: Expiring) -> None:
        """Expire `call` at `deadline` (loop time) unless it finished by then."""
        heapq.heappush(self.heap, (deadline, next(self.sequence), call))
        self.live += 1
        if deadline < self.armed_at:
            self._arm(deadline)

    def finished(self) -> None:
        """Note that a call added earlier finished (whether or not it expired)."""
        self.live -= 1
        heap = self.heap
        if len(heap) > _COMPACT_AT and len(heap) > 4 * self.live:
            heap[:] = [entry for entry in heap if entry[2].pending]
            heapq.heapify(heap)
            if not heap and self.timer is not None:
                self.timer.cancel()
                self.timer = None
                self.armed_at = math.inf

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(when, self._fire)
        self.armed_at = when

    def _fire(self) -> None:
        self.timer = None
        self.armed_at = math.inf
        heap = self.heap
        now = self.loop.time()
        while heap and heap[0][0] <= now:
            call = heapq.heappop(heap)[2]
            if call.pending:
                call.expire()
        if heap:
            self._arm(heap[0][0])

    def clear(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.heap.clear()
