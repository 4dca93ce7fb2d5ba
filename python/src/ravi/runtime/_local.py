"""LocalRuntime: every agent in this process, on asyncio."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ravi._cancellation import CancellationToken
from ravi._host import AgentHost, Lifecycle
from ravi._ids import AgentId, AgentType, TopicId, new_message_id
from ravi._interceptors import Interceptor, PublishInput, QuickSend, SendInput, chain, quick
from ravi._subscriptions import Subscription
from ravi.mesh.v1 import contract
from ravi.runtime._base import Agent, BaseRuntime
from ravi.state import StateStore, open_store

DEFAULT_TIMEOUT = contract.DEFAULT_TIMEOUT_SECONDS
DEFAULT_MAILBOX_CAPACITY = contract.DEFAULT_MAILBOX_CAPACITY
DEFAULT_IDLE_TIMEOUT = contract.DEFAULT_IDLE_TIMEOUT_SECONDS
DEFAULT_MAX_ACTIVE_AGENTS = contract.DEFAULT_MAX_ACTIVE_AGENTS
DEFAULT_CHECKPOINT = contract.DEFAULT_CHECKPOINT
DEFAULT_GRACE_PERIOD = contract.DEFAULT_GRACE_PERIOD_SECONDS


class LocalRuntime(BaseRuntime):
    """LocalRuntime runs every agent in this process: the zero-infrastructure default.

    Messages are passed by reference (never serialized). Each agent instance has
    a mailbox of at most `mailbox_capacity` messages: a send to a full mailbox
    fails at once with `MailboxFull` (RESOURCE_EXHAUSTED), and a publish waits
    for room until its deadline (back-pressure), so memory stays bounded under
    overload.

    Agent instances come and go: one idle for `idle_timeout`, or the least
    recently used idle one beyond `max_active_agents`, is passivated (its
    `save_state()` kept in `state_store`) and activated again by its next
    message, with `load_state()`. State is also saved when the runtime stops,
    and after every handled message with `checkpoint="each_message"`
    (docs/state.md).

    `stop()` ends the sends in progress at once, but first delivers what was
    published before it: an agent that publishes its last events and returns
    does not lose them to the `async with` block ending right after.

    Args:
        default_timeout: seconds a send may take when it names no timeout.
        mailbox_capacity: messages queued or running per agent instance at most.
        interceptors: hooks around sends, handler calls, publishes, activations
            and passivations (tracing, metrics); the first is outermost.
        idle_timeout: seconds without a message before an instance is
            passivated; 0 never.
        max_active_agents: active instances at most; 0 no bound.
        checkpoint: "passivation" (save on passivation and stop) or
            "each_message" (also after every handled message, before the reply).
        state_store: where passivated agents keep their state: a `StateStore`
            or a URL (`memory`, `sqlite:PATH`, `postgresql://…`); in this
            process's memory by default.
        grace_period: seconds `stop()` gives the subscribers of what was
            published before it; what still runs then is cancelled.
    """

    def __init__(
        self,
        *,
        default_timeout: float = DEFAULT_TIMEOUT,
        mailbox_capacity: int = DEFAULT_MAILBOX_CAPACITY,
        interceptors: Sequence[Interceptor] = (),
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_active_agents: int = DEFAULT_MAX_ACTIVE_AGENTS,
        checkpoint: str = DEFAULT_CHECKPOINT,
        state_store: StateStore | str | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
    ) -> None:
        if grace_period < 0:
            raise ValueError(f"grace_period must not be negative, got {grace_period}")
        self._grace_period = grace_period
        self._host = AgentHost(
            self,
            default_timeout=default_timeout,
            mailbox_capacity=mailbox_capacity,
            interceptors=interceptors,
            lifecycle=Lifecycle(
                idle_timeout,
                max_active_agents,
                checkpoint,
                open_store(state_store) if isinstance(state_store, str) else state_store,
            ),
        )
        # The name this runtime holds agents under in a shared store.
        self._holder = f"local-{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._send_chain = (
            chain(interceptors, lambda i: i.send, self._send_input) if interceptors else None
        )
        self._publish_chain = (
            chain(interceptors, lambda i: i.publish, self._publish_input) if interceptors else None
        )
        self._quick_send: QuickSend | None = quick(interceptors, "send")

    async def start(self) -> None:
        if self._host.running:
            return
        self._host.start()
        try:
            await self._host.open_store(self._holder)
        except BaseException:
            await self._host.stop()
            raise

    async def stop(self) -> None:
        await self._host.stop(self._grace_period)

    async def stop_when_idle(self, *, timeout: float | None = None) -> None:
        await self._host.wait_idle(timeout)
        await self._host.stop()

    async def wait_until_ready(self, *agent_types: str, timeout: float = 10.0) -> None:
        await self._host.wait_for_types(agent_types, timeout)

    async def register_factory(
        self,
        agent_type: str,
        factory: Callable[[], Agent | Awaitable[Agent]],
        *,
        agent_class: type[Agent],
    ) -> AgentType:
        self._host.register(agent_type, factory, agent_class)
        return AgentType(agent_type)

    # send_message returns the host's coroutine without an extra await layer (see
    # BaseAgent.send_message): a round trip is mostly such layers.
    def send_message(  # type: ignore[override]
        self,
        message: Any,
        recipient: AgentId,
        *,
        sender: AgentId | None = None,
        timeout: float | None = None,
        cancellation: CancellationToken | None = None,
        message_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Awaitable[Any]:
        hooked = self._send_chain
        if hooked is not None:
            carried = dict(metadata) if metadata else {}
            quick_send = self._quick_send
            if quick_send is None or not quick_send(recipient, carried):
                first, rest = hooked
                return first(
                    SendInput(
                        message, recipient, sender, message_id, carried, timeout, cancellation
                    ),
                    rest,
                )
            metadata = carried
        return self._host.send(
            message,
            recipient,
            sender=sender,
            timeout=timeout,
            cancellation=cancellation,
            message_id=message_id,
            metadata=metadata,
        )

    def _send_input(self, input: SendInput) -> Awaitable[Any]:
        return self._host.send(
            input.message,
            input.recipient,
            sender=input.sender,
            timeout=input.timeout,
            cancellation=input.cancellation,
            # The id as given, or None: the handler's context makes one if asked.
            message_id=input._message_id,
            metadata=input.metadata,
        )

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
        hooked = self._publish_chain
        if hooked is not None:
            first, rest = hooked
            await first(
                PublishInput(
                    message,
                    topic,
                    sender,
                    message_id or new_message_id(),
                    dict(metadata) if metadata else {},
                    timeout,
                ),
                rest,
            )
            return
        await self._host.publish(
            message,
            topic,
            sender=sender,
            message_id=message_id,
            metadata=metadata,
            timeout=timeout,
        )

    async def _publish_input(self, input: PublishInput) -> None:
        await self._host.publish(
            input.message,
            input.topic,
            sender=input.sender,
            message_id=input.message_id,
            metadata=input.metadata,
            timeout=input.timeout,
        )

    async def add_subscription(self, subscription: Subscription) -> None:
        self._host.add_subscription(subscription)

    async def remove_subscription(self, subscription_id: str) -> None:
        self._host.remove_subscription(subscription_id)

    async def resolve_promise(self, name: str, value: Any) -> None:
        self._host.resolve_promise(name, value)

    def mailbox_depths(self) -> dict[str, int]:
        """Messages queued or running in this runtime's mailboxes, per agent type."""
        return self._host.depths()

    def active_agents(self) -> dict[str, int]:
        """Active (not passivated) agent instances, per registered agent type."""
        return self._host.active_agents()

    async def agent_save_state(self, agent: AgentId) -> Mapping[str, Any]:
        return await self._host.save_agent(agent)

    async def agent_load_state(self, agent: AgentId, state: Mapping[str, Any]) -> None:
        await self._host.load_agent(agent, state)

    async def save_state(self) -> Mapping[str, Any]:
        return {
            str(mailbox.agent_id): await self._host.save_agent(mailbox.agent_id)
            for mailbox in list(self._host.agents())
        }

    async def load_state(self, state: Mapping[str, Any]) -> None:
        for agent, agent_state in state.items():
            await self._host.load_agent(AgentId.parse(agent), agent_state)
