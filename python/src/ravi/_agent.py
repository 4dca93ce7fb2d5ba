"""Agents and their message handlers."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ravi._cancellation import CancellationToken
from ravi._context import MessageContext
from ravi._ids import AgentId, AgentType, TopicId, _check_type
from ravi._serialization import registry
from ravi._subscriptions import SubscriptionFactory
from ravi.errors import FailedPrecondition, NoHandler

if TYPE_CHECKING:
    from ravi.runtime._base import BaseRuntime

Handler = Callable[[Any, Any, MessageContext], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
AgentT = TypeVar("AgentT", bound="BaseAgent")

_MARK = "_ravi_message_handler"


def message_handler(func: F) -> F:
    """Mark an `async def on_x(self, message: T, ctx: MessageContext)` method as a handler.

    The type hint of the message parameter (a class, or a union of classes)
    decides which messages the method receives; messages of a subclass reach
    the handler of their nearest handled base class. Signatures are checked when
    the agent class is defined: a bad one raises `TypeError` naming the method.
    """
    target: Callable[..., Any] = func
    if not inspect.iscoroutinefunction(target):
        raise TypeError(f"message handler {func.__qualname__} must be an async def")
    params = list(inspect.signature(func).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) != 3 or any(p.kind not in positional for p in params):
        raise TypeError(
            f"message handler {func.__qualname__} must take exactly (self, message, ctx); "
            f"got ({', '.join(p.name for p in params)})"
        )
    setattr(func, _MARK, True)
    return func


def _message_types(owner: type, name: str, func: Callable[..., Any]) -> tuple[type, ...]:
    where = f"message handler {owner.__qualname__}.{name}"
    try:
        hints = typing.get_type_hints(func)
    except (NameError, TypeError) as exc:
        raise TypeError(f"{where}: cannot resolve its type hints: {exc}") from exc
    _, message_param, ctx_param = inspect.signature(func).parameters
    if message_param not in hints:
        raise TypeError(f"{where}: the message parameter {message_param!r} needs a type hint")
    hint = hints[message_param]
    members = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    for member in members:
        if not isinstance(member, type) or member is object:
            raise TypeError(
                f"{where}: the message type must be a class or a union of classes; got {hint!r}"
            )
    ctx_hint = hints.get(ctx_param)
    if ctx_hint is not None and not (
        isinstance(ctx_hint, type) and issubclass(MessageContext, ctx_hint)
    ):
        raise TypeError(f"{where}: the context parameter must be a MessageContext")
    return members


def agent_class_of(agent_class: type[Any]) -> type[BaseAgent]:
    """`agent_class`, checked to be a BaseAgent subclass (what a runtime registers).

    Raises:
        TypeError: it is not.
    """
    if not (isinstance(agent_class, type) and issubclass(agent_class, BaseAgent)):
        raise TypeError(f"agent_class must be a BaseAgent subclass, got {agent_class!r}")
    return agent_class


class BaseAgent:
    """BaseAgent is the base class of every agent.

    Subclasses declare handlers with `@message_handler`; the runtime creates one
    instance per `AgentId` when the first message for it arrives, and delivers
    that instance's messages one at a time, in order. Set `reentrant = True` on a
    class whose instances may handle several messages at once (and so may call
    themselves).

    An instance that goes without messages for the runtime's `idle_timeout`, or
    is the least recently used beyond its `max_active_agents`, is passivated:
    its `save_state()` goes to the runtime's state store, `close()` is called,
    and the next message creates a new instance that gets the state back
    through `load_state()`. An instance with a message queued or running
    (including a handler awaiting `ctx.wait_for`) is never passivated; set
    `resident = True` on a class, or on one instance, to keep it active
    regardless.
    """

    reentrant: ClassVar[bool] = False
    resident: bool = False
    _ravi_handlers: ClassVar[dict[type, tuple[str, Handler]]] = {}
    _ravi_dispatch: ClassVar[dict[type, Handler]] = {}
    _ravi_subscription_factories: ClassVar[tuple[SubscriptionFactory, ...]] = ()
    _ravi_id: AgentId
    _ravi_runtime: BaseRuntime

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherited: dict[type, tuple[str, Handler]] = {}
        for base in reversed(cls.__mro__[1:]):
            inherited.update(getattr(base, "_ravi_handlers", {}))
        own: dict[type, tuple[str, Handler]] = {}
        for name, func in cls.__dict__.items():
            if not getattr(func, _MARK, False):
                continue
            for message_type in _message_types(cls, name, func):
                if message_type in own:
                    raise TypeError(
                        f"{cls.__qualname__} has two handlers for {message_type.__qualname__}: "
                        f"{own[message_type][0]} and {name}"
                    )
                base_name = inherited.get(message_type, (name, None))[0]
                if base_name != name:
                    raise TypeError(
                        f"{cls.__qualname__}.{name} handles {message_type.__qualname__}, "
                        f"which the inherited handler {base_name} handles already; "
                        f"override {base_name} instead"
                    )
                own[message_type] = (name, func)
        # A base handler overridden by a plain method (no decorator) is routed to
        # the override, so overriding keeps working as Python users expect.
        for message_type, (name, func) in list(inherited.items()):
            override = cls.__dict__.get(name)
            if override is not None and override is not func and message_type not in own:
                inherited[message_type] = (name, override)
        cls._ravi_handlers = {**inherited, **own}
        cls._ravi_dispatch = {t: f for t, (_, f) in cls._ravi_handlers.items()}

    @classmethod
    def handled_types(cls) -> tuple[type, ...]:
        """The message types this agent class has handlers for."""
        return tuple(cls._ravi_handlers)

    @classmethod
    def _ravi_lookup(cls, message_type: type) -> Handler:
        """Find the handler for a message type (its own, or its nearest handled base's)."""
        handler = cls._ravi_dispatch.get(message_type)
        if handler is not None:
            return handler
        candidates = [base for base in message_type.__mro__[1:] if base in cls._ravi_handlers]
        if not candidates:
            handled = ", ".join(sorted(_type_name(t) for t in cls._ravi_handlers))
            raise NoHandler(
                f"agent class {cls.__qualname__} has no handler for "
                f"{_type_name(message_type)} (it handles {handled or 'nothing'})"
            )
        nearest = candidates[0]
        if any(not issubclass(nearest, other) for other in candidates[1:]):
            names = ", ".join(c.__qualname__ for c in candidates)
            raise NoHandler(
                f"agent class {cls.__qualname__}: {message_type.__qualname__} matches handlers "
                f"of several unrelated base classes ({names}); add a handler for it"
            )
        handler = cls._ravi_handlers[nearest][1]
        cls._ravi_dispatch[message_type] = handler
        return handler

    @classmethod
    async def register(
        cls: type[AgentT],
        runtime: BaseRuntime,
        type: str,
        factory: Callable[[], AgentT | Awaitable[AgentT]] | None = None,
        *,
        skip_class_subscriptions: bool = False,
    ) -> AgentType:
        """Register this class under an agent type on `runtime`.

        Args:
            runtime: the runtime to register with.
            type: the agent type name; `AgentId(type, key)` then addresses instances.
            factory: builds an instance (sync or async); the class itself when omitted,
                which needs a constructor without required arguments.
            skip_class_subscriptions: do not add the subscriptions declared with
                `type_subscription` / `default_subscription` on the class.
        """
        _check_type("agent type", type)
        if factory is None:
            _require_no_arg_constructor(cls)
            factory = cls
        await runtime.register_factory(type, factory, agent_class=cls)
        if not skip_class_subscriptions:
            for make in cls._ravi_subscription_factories:
                await runtime.add_subscription(make(type))
        return AgentType(type)

    def _ravi_bind(self, runtime: BaseRuntime, agent_id: AgentId) -> None:
        self._ravi_runtime = runtime
        self._ravi_id = agent_id

    @property
    def id(self) -> AgentId:
        """This instance's id (set by the runtime once the instance is created)."""
        try:
            return self._ravi_id
        except AttributeError:
            raise FailedPrecondition(
                f"{type(self).__qualname__} is not bound to a runtime yet; "
                "its id is known once the runtime created it"
            ) from None

    @property
    def runtime(self) -> BaseRuntime:
        """The runtime hosting this instance."""
        try:
            return self._ravi_runtime
        except AttributeError:
            raise FailedPrecondition(
                f"{type(self).__qualname__} is not bound to a runtime yet"
            ) from None

    # send_message and publish_message hand back the runtime's coroutine instead
    # of awaiting it in one more coroutine of their own: one frame less per
    # message on the hottest path. Callers `await` them all the same.
    def send_message(
        self,
        message: Any,
        recipient: AgentId,
        *,
        timeout: float | None = None,
        cancellation: CancellationToken | None = None,
        message_id: str | None = None,
    ) -> Awaitable[Any]:
        """Send `message` to `recipient` as this agent; await it for the reply."""
        return self.runtime.send_message(
            message,
            recipient,
            sender=self.id,
            timeout=timeout,
            cancellation=cancellation,
            message_id=message_id,
        )

    def publish_message(
        self, message: Any, topic: TopicId, *, message_id: str | None = None
    ) -> Awaitable[None]:
        """Publish `message` on `topic` as this agent (this agent does not receive it)."""
        return self.runtime.publish_message(message, topic, sender=self.id, message_id=message_id)

    async def save_state(self) -> Mapping[str, Any]:
        """Return this agent's state as JSON-compatible data (none by default)."""
        return {}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore state returned by `save_state` (nothing to restore by default)."""

    async def close(self) -> None:
        """Release resources when the instance is passivated or the runtime stops."""


def _require_no_arg_constructor(cls: type) -> None:
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        raise TypeError(
            f"{cls.__qualname__}() needs arguments ({', '.join(required)}): "
            "pass a factory to register()"
        )


def _type_name(message_type: type) -> str:
    """The name a message type travels under, as the other side of a call sees it."""
    try:
        return registry.type_name(message_type)
    except TypeError:  # not a message class: a plain value
        return message_type.__qualname__
