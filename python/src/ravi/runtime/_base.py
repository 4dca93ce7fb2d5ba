"""The interface every ravi runtime implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from ravi._cancellation import CancellationToken
from ravi._ids import AgentId, AgentType, TopicId
from ravi._subscriptions import Subscription

Agent = TypeVar("Agent")
"""The agent class a factory makes (a `ravi.BaseAgent` subclass, checked at registration).

Unbound here so that the runtime interface does not import the agent class,
which refers to it: agents depend on runtimes, not the other way round.
"""


class BaseRuntime(ABC):
    """BaseRuntime is what agent code talks to, implemented by every runtime.

    LocalRuntime, GrpcRuntime and RestateRuntime implement all of it, so agents
    run unchanged on each. Use it as an async context manager, or call `start()` and `stop()`.
    """

    @abstractmethod
    async def start(self) -> None:
        """Start delivering messages."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop: sends end now, what was published before is still delivered.

        Sends queued or being handled end with `Cancelled` at once. Messages
        published before the stop still reach their subscribers: LocalRuntime
        and GrpcRuntime run those handlers first, for up to their grace period;
        RestateRuntime holds them durably and delivers them once a worker serves
        the subscriber again. `stop_when_idle()` waits for the sends too.
        """

    @abstractmethod
    async def stop_when_idle(self, *, timeout: float | None = None) -> None:
        """Wait until no message is queued or being handled, then stop.

        Raises:
            DeadlineExceeded: the runtime was still busy after `timeout` seconds
                (it keeps running then).
        """

    @abstractmethod
    async def wait_until_ready(self, *agent_types: str, timeout: float = 10.0) -> None:
        """Wait until the runtime has started and can deliver to every one of `agent_types`.

        What "can deliver" means depends on the runtime: LocalRuntime hosts the
        type; GrpcRuntime hosts it or knows a connected peer that does;
        RestateRuntime has registered its deployment with Restate, which routes
        to every deployment.

        Raises:
            TimeoutError: a type was still unreachable after `timeout` seconds.
        """

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @abstractmethod
    async def register_factory(
        self,
        agent_type: str,
        factory: Callable[[], Agent | Awaitable[Agent]],
        *,
        agent_class: type[Agent],
    ) -> AgentType:
        """Register a factory for `agent_type`; `BaseAgent.register` calls this.

        Raises:
            AlreadyExists: the type is registered already.
            TypeError: `agent_class` is not a `ravi.BaseAgent` subclass.
        """

    @abstractmethod
    async def send_message(
        self,
        message: Any,
        recipient: AgentId,
        *,
        sender: AgentId | None = None,
        timeout: float | None = None,
        cancellation: CancellationToken | None = None,
        message_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Send `message` to `recipient` and return the handler's reply.

        Args:
            message: the message; its type selects the handler.
            recipient: the agent to deliver to (created on first use).
            sender: the sending agent, if any (`BaseAgent.send_message` sets it).
            timeout: seconds until the deadline; the runtime's default when None.
                Inside a handler, the deadline is never later than the handler's own.
            cancellation: cancels the call when cancelled.
            message_id: a unique id; generated when None.
            metadata: string metadata to carry with the message.

        Raises:
            RaviError: the call failed; `code` says how (NOT_FOUND, UNIMPLEMENTED,
                DEADLINE_EXCEEDED, ...), and `HandlerFailed` carries a handler's
                exception type and message.
        """

    @abstractmethod
    async def publish_message(
        self,
        message: Any,
        topic: TopicId,
        *,
        sender: AgentId | None = None,
        message_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish `message` on `topic` to every matching subscription.

        Returns once the message is accepted for delivery. The sender does not
        receive its own message; a subscriber that fails does not affect the
        others.
        """

    @abstractmethod
    async def add_subscription(self, subscription: Subscription) -> None:
        """Add a subscription."""

    @abstractmethod
    async def remove_subscription(self, subscription_id: str) -> None:
        """Remove the subscription with this id.

        Raises:
            NotFound: no subscription has this id.
        """

    @abstractmethod
    async def resolve_promise(self, name: str, value: Any) -> None:
        """Resolve the promise a handler awaits (or will await) with `ctx.wait_for(name)`.

        Raises:
            AlreadyExists: the promise is resolved already.
        """

    @abstractmethod
    async def agent_save_state(self, agent: AgentId) -> Mapping[str, Any]:
        """The state of one agent, as its `save_state` returns it."""

    @abstractmethod
    async def agent_load_state(self, agent: AgentId, state: Mapping[str, Any]) -> None:
        """Load state into one agent through its `load_state`."""

    @abstractmethod
    async def save_state(self) -> Mapping[str, Any]:
        """The state of every agent instance, keyed by "type/key"."""

    @abstractmethod
    async def load_state(self, state: Mapping[str, Any]) -> None:
        """Load state returned by `save_state`, creating agents as needed."""
