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
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
) -> T:
    """Call `check` until it returns without raising, and return its result.

    Args:
        check: the coroutine function to call.
        timeout: seconds to keep trying.
        interval: seconds between tries.
        retry_on: the exceptions that mean "not yet" (assertion failures by default).

    Raises:
        The last failure, once `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except retry_on:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)
