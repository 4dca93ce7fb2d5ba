"""The context handed to every message handler."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, overload

from ravi._cancellation import CancellationToken
from ravi._ids import AgentId, TopicId

T = TypeVar("T")


class MessageContext(ABC):
    """MessageContext describes the message being handled and offers durable hooks.

    Each runtime has its own implementation; handlers receive it explicitly as
    their last argument. The durable hooks `step` and `wait_for` behave as
    strongly as the runtime allows: on LocalRuntime and GrpcRuntime they run the
    function and wait in memory; on RestateRuntime a recorded step is never
    recomputed and a wait survives restarts.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def sender(self) -> AgentId | None:
        """The agent that sent the message, or None for a message from outside any agent."""

    @property
    @abstractmethod
    def topic(self) -> TopicId | None:
        """The topic a published message arrived on, or None for a direct send."""

    @property
    @abstractmethod
    def message_id(self) -> str:
        """The message's unique id."""

    @property
    def is_rpc(self) -> bool:
        """Whether the message was sent directly and the sender awaits the reply."""
        return self.topic is None

    @property
    @abstractmethod
    def metadata(self) -> Mapping[str, str]:
        """String metadata that travelled with the message (trace context, tenant, ...)."""

    @property
    @abstractmethod
    def cancellation(self) -> CancellationToken:
        """Set when the caller cancels or the deadline passes."""

    @abstractmethod
    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline, or None without a deadline."""

    @overload
    async def step(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T: ...

    @overload
    async def step(self, name: str, fn: Callable[..., T], *args: Any) -> T: ...

    @abstractmethod
    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` (sync or async) as a named step and return its result.

        On a durable runtime the result is journaled: once recorded it is
        returned again on replay instead of calling `fn`. A step that is running
        when a process crashes runs again, so side effects should use
        `idempotency_key(name)`.
        """

    @abstractmethod
    async def wait_for(self, name: str, *, timeout: float | None = None) -> Any:
        """Wait for the named promise to be resolved with `runtime.resolve_promise`.

        Args:
            name: the promise name, unique in the runtime (for example
                f"approval-{request_id}").
            timeout: seconds to wait at most; None waits as long as the call's
                own deadline allows.

        Returns:
            The value passed to `resolve_promise`.
        """

    @abstractmethod
    def idempotency_key(self, step_name: str) -> str:
        """A key that is the same every time this message's step `step_name` runs.

        Tools with side effects (payments, e-mails) use it to do their work once
        even when a step runs again after a crash.
        """
