"""Small, bounded helpers for asynchronous tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
) -> T:
    """Call `check` until it returns without raising `AssertionError`, and return its result.

    Raises:
        AssertionError: the last failure, once `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)
