"""Interceptors: hooks around sending, handling and publishing messages, and agent lifecycles.

Tracing, metrics, auth propagation and auditing plug in here. Each hook takes
one dataclass input (so fields can be added without breaking overrides) and
the next function in the chain, and returns an awaitable: usually an `async
def` that awaits `next(input)`, or a plain method that returns `next(input)`
itself when it has nothing to do after it, which saves a coroutine per hook
(the pass-through `Interceptor` does that). A runtime without interceptors takes
a path that never builds the inputs, so hooks cost nothing until one is
installed.

An interceptor of ravi's own may also offer a quick check for the messages it
has nothing to wrap: `_quick_send(recipient, metadata)` and
`_quick_handle(agent_id, ctx)` do the whole of their hook's work (counting,
adding trace context to `metadata`, entering the message's trace) and return
True, or do nothing and return False. `_quick_handle` may instead return the
`contextvars.Token` of the context variable it set: the host resets it once
the handler is done, in the same task. A runtime whose only interceptor offers
one calls it first and, on a true answer, passes the message on without
building its input or entering the chain: that is most of what an unsampled
trace costs (docs/performance.md, "The cost of tracing").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from ravi._cancellation import CancellationToken
from ravi._context import MessageContext
from ravi._ids import AgentId, TopicId, new_message_id

T = TypeVar("T")

QuickSend = Callable[[AgentId, dict[str, str]], bool]
QuickHandle = Callable[[AgentId, MessageContext], "bool | Token[Any]"]


class SendInput:
    """SendInput describes a direct send as the caller makes it.

    Interceptors may add entries to `metadata` (for example trace context); they
    travel with the message to the handler's `ctx.metadata`. `message_id` is
    made when first read (the caller's own, if it gave one): most hooks never
    read it, and making one costs about 4% of a hooked round trip.
    """

    __slots__ = (
        "_message_id",
        "cancellation",
        "message",
        "metadata",
        "recipient",
        "sender",
        "timeout",
    )

    def __init__(  # noqa: PLR0917 - the fields, in the order the dataclass had them
        self,
        message: Any,
        recipient: AgentId,
        sender: AgentId | None,
        message_id: str | None = None,
        metadata: dict[str, str] | None = None,
        timeout: float | None = None,
        cancellation: CancellationToken | None = None,
    ) -> None:
        self.message = message
        self.recipient = recipient
        self.sender = sender
        self._message_id = message_id
        self.metadata: dict[str, str] = {} if metadata is None else metadata
        self.timeout = timeout
        self.cancellation = cancellation

    @property
    def message_id(self) -> str:
        found = self._message_id
        if found is None:
            found = self._message_id = new_message_id()
        return found

    @message_id.setter
    def message_id(self, value: str) -> None:
        self._message_id = value

    def __repr__(self) -> str:
        return (
            f"SendInput(message={self.message!r}, recipient={self.recipient!r}, "
            f"sender={self.sender!r}, message_id={self.message_id!r}, "
            f"metadata={self.metadata!r}, timeout={self.timeout!r}, "
            f"cancellation={self.cancellation!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SendInput):
            return NotImplemented
        return (
            self.message == other.message
            and self.recipient == other.recipient
            and self.sender == other.sender
            and self.message_id == other.message_id
            and self.metadata == other.metadata
            and self.timeout == other.timeout
            and self.cancellation == other.cancellation
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was


@dataclass(slots=True)
class HandleInput:
    """HandleInput describes one message about to be handled by one agent."""

    agent_id: AgentId
    message: Any
    ctx: MessageContext


@dataclass(slots=True)
class PublishInput:
    """PublishInput describes a publish as the publisher makes it."""

    message: Any
    topic: TopicId
    sender: AgentId | None
    message_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None


@dataclass(slots=True)
class ForwardInput:
    """ForwardInput describes a send this node passes on to a peer (GrpcRuntime only).

    `request` is the `ravi.mesh.v1.SendRequest` as it will go out (its route
    already counts this hop); `next_node` is filled in once the peer is chosen,
    before `next` returns. A node of a `dns:` pool forwarding a key to its
    owner among the members sets `next_node` to the owner before calling the
    hooks.
    """

    recipient: AgentId
    hop_count: int
    request: Any
    timeout: float
    metadata: dict[str, str] = field(default_factory=dict)
    next_node: str = ""


@dataclass(slots=True)
class ActivateInput:
    """ActivateInput describes an agent instance being created for its first message.

    `next` builds the instance and, for an agent with state, loads it from the
    state store; `loaded_version` is then the version loaded (0: none).
    """

    agent_id: AgentId
    loaded_version: int = 0


@dataclass(slots=True)
class PassivateInput:
    """PassivateInput describes an agent instance being let go.

    `reason` says why: "idle" (no message for `idle_timeout`), "capacity"
    (beyond `max_active_agents`), "moved" (another node of its pool owns the
    key now) or "stop" (the runtime stops). `next` saves its state to the
    store (for an agent with state) and closes it; `saved` says whether a
    save succeeded.
    """

    agent_id: AgentId
    reason: str
    saved: bool = False


class Interceptor:
    """Interceptor wraps sends, handler calls, publishes and lifecycles; override what you need.

    Each method receives its input and `next`, and must await `next(input)`
    (possibly with a modified input), or return it, unless it means to
    short-circuit. An override may be `async def`.
    """

    def send(self, input: SendInput, next: Callable[[SendInput], Awaitable[Any]]) -> Awaitable[Any]:
        """Around a direct send, on the caller's side; returns the reply."""
        return next(input)

    def handle(
        self, input: HandleInput, next: Callable[[HandleInput], Awaitable[Any]]
    ) -> Awaitable[Any]:
        """Around a handler call, on the agent's side; returns the handler's result."""
        return next(input)

    def publish(
        self, input: PublishInput, next: Callable[[PublishInput], Awaitable[None]]
    ) -> Awaitable[None]:
        """Around a publish, on the publisher's side."""
        return next(input)

    def forward(
        self, input: ForwardInput, next: Callable[[ForwardInput], Awaitable[Any]]
    ) -> Awaitable[Any]:
        """Around a send a node forwards to a peer; returns the peer's response."""
        return next(input)

    def activate(
        self, input: ActivateInput, next: Callable[[ActivateInput], Awaitable[None]]
    ) -> Awaitable[None]:
        """Around the activation of an agent instance (off the message path)."""
        return next(input)

    def passivate(
        self, input: PassivateInput, next: Callable[[PassivateInput], Awaitable[None]]
    ) -> Awaitable[None]:
        """Around the passivation of an agent instance (off the message path)."""
        return next(input)


Hook = Callable[[T, Callable[[T], Awaitable[Any]]], Awaitable[Any]]


class Chain(NamedTuple, Generic[T]):
    """Interceptors composed around a terminal call: the outermost hook and what it calls next.

    Callable as one function; a call site on the message path unpacks it and
    calls `first(input, rest)` itself, which saves a frame of ours per message.
    """

    first: Hook[T]
    rest: Callable[[T], Awaitable[Any]]

    def __call__(self, input: T) -> Awaitable[Any]:
        return self.first(input, self.rest)


def chain(
    interceptors: Sequence[Interceptor],
    hook: Callable[[Interceptor], Hook[T]],
    terminal: Callable[[T], Awaitable[Any]],
) -> Chain[T]:
    """Compose `interceptors` (at least one) around `terminal`, the first one outermost."""
    rest = terminal
    for interceptor in reversed(interceptors[1:]):
        rest = _link(hook(interceptor), rest)
    return Chain(hook(interceptors[0]), rest)


def _link(
    method: Hook[T], next_call: Callable[[T], Awaitable[Any]]
) -> Callable[[T], Awaitable[Any]]:
    # A plain function: the hook's own awaitable is what the caller awaits,
    # with no coroutine of the chain's in between.
    def call(input: T) -> Awaitable[Any]:
        return method(input, next_call)

    return call


def quick(interceptors: Sequence[Interceptor], hook: str) -> Callable[..., bool] | None:
    """The quick check for `hook` ("send", "handle") of a runtime's only interceptor, if any.

    None when there are several interceptors, or when a subclass overrides the
    hook the check stands for (its override must run).
    """
    if len(interceptors) != 1:
        return None
    interceptor_class = type(interceptors[0])
    name = f"_quick_{hook}"
    for owner in interceptor_class.__mro__:
        if name in vars(owner):
            if getattr(interceptor_class, hook) is not vars(owner).get(hook):
                return None
            check: Callable[..., bool] = getattr(interceptors[0], name)
            return check
    return None
