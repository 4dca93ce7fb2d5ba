"""Cancellation tokens: cancel a send from outside, or notice cancellation inside a handler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ravi.errors import Cancelled


class CancellationToken:
    """CancellationToken signals that a call should stop.

    Pass one to `send_message(..., cancellation=token)` to cancel the call from
    elsewhere. Inside a handler, `ctx.cancellation` is set when the caller
    cancels or the deadline passes; async handlers are also cancelled at their
    next await, so checking the token matters only for long synchronous work.
    """

    __slots__ = ("_callbacks", "_cancelled")

    def __init__(self) -> None:
        self._cancelled = False
        self._callbacks: list[Callable[[], object]] = []

    @property
    def cancelled(self) -> bool:
        """Whether `cancel()` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Cancel: run the registered callbacks once, in registration order."""
        if self._cancelled:
            return
        self._cancelled = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_callback(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Run `callback` on cancellation (at once if already cancelled).

        Returns:
            A function that unregisters the callback.
        """
        if self._cancelled:
            callback()
            return _nothing
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def raise_if_cancelled(self) -> None:
        """Raise `ravi.errors.Cancelled` if the token is cancelled."""
        if self._cancelled:
            raise Cancelled("the call was cancelled")

    async def wait(self) -> None:
        """Return once the token is cancelled."""
        if self._cancelled:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        remove = self.add_callback(wake)
        try:
            await future
        finally:
            remove()


def _nothing() -> None:
    return None
