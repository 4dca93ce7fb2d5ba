"""The in-process agent engine shared by LocalRuntime and GrpcRuntime.

An `AgentHost` owns the agent types registered in one process, creates agent
instances lazily per key, and gives each instance a mailbox served by one
worker task: messages to one agent are handled one at a time, in order, while
distinct agents run concurrently. Reentrant agents get a task per message
instead.

Every direct send has a deadline, enforced by a loop timer; when it passes, or
the caller is cancelled, the handler is cancelled too (the worker cancels its
own task and then `uncancel()`s it). Deadlock by re-entry is refused up front:
each running call knows the chain of non-reentrant agents blocked waiting on it,
so a send that targets one of them fails with `ReentrantCall` instead of
hanging.

Instances come and go: one idle for `idle_timeout`, or the least recently used
beyond `max_active_agents`, is passivated (its state saved to the host's
`StateStore`, the instance and its mailbox released) and activated again, its
state loaded, by its next message. The message path only sets a mailbox's
`used` flag; the idle sweep (a task waking every quarter of `idle_timeout`)
and the eviction at activation read it, the CLOCK way: a used instance gets a
second chance.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ravi._agent import BaseAgent, Handler, agent_class_of
from ravi._cancellation import CancellationToken
from ravi._context import MessageContext
from ravi._deadlines import Deadlines
from ravi._hints import not_registered
from ravi._ids import AgentId, TopicId, new_message_id
from ravi._interceptors import (
    ActivateInput,
    HandleInput,
    Interceptor,
    PassivateInput,
    QuickHandle,
    chain,
    quick,
)
from ravi._subscriptions import Subscription, TypeSubscription
from ravi.errors import (
    AgentTypeNotFound,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    MailboxFull,
    NotFound,
    RaviError,
    ReentrantCall,
    StaleState,
    Unavailable,
    handler_error,
)
from ravi.state import MemoryStore, StateStore

if TYPE_CHECKING:
    from ravi.runtime._base import BaseRuntime

logger = logging.getLogger("ravi")

AgentFactory = Callable[[], BaseAgent | Awaitable[BaseAgent]]

_QUEUED = 0
_RUNNING = 1
_DONE = 2

_NO_CHAIN: tuple[tuple[str, str], ...] = ()

# Resolved promises a host remembers (to refuse a second answer) at most.
MAX_RESOLVED_PROMISES = 100_000

CHECKPOINTS = ("passivation", "each_message")
"""When agent state is saved: on passivation and stop only, or also after each message."""

# Instances saved at once when a runtime stops, at most.
_SAVE_CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class _AgentRegistration:
    factory: AgentFactory
    agent_class: type[BaseAgent]


_STATEFUL: dict[type, bool] = {}


def _stateful(cls: type[BaseAgent]) -> bool:
    """Whether instances of `cls` have state to save (they override save or load)."""
    found = _STATEFUL.get(cls)
    if found is None:
        found = _STATEFUL[cls] = (
            cls.save_state is not BaseAgent.save_state or cls.load_state is not BaseAgent.load_state
        )
    return found


def _closes(cls: type[BaseAgent]) -> bool:
    return cls.close is not BaseAgent.close


class _Context(MessageContext):
    """What every handler's context holds: the message and where it comes from."""

    # `failure_counter` is left unset (read with getattr on the failure path
    # only, so a message pays nothing for it): telemetry's quick check sets it
    # on a message it lets through unwrapped, so the failure is still counted
    # without a coroutine of its own around every handler.
    __slots__ = (
        "_cancellation",
        "_message_id",
        "_metadata",
        "_sender",
        "failure_counter",
        "host",
        "message",
    )
    failure_counter: Callable[[str, Exception], None]

    def __init__(
        self,
        host: AgentHost,
        message: Any,
        sender: AgentId | None,
        message_id: str | None,
        metadata: Mapping[str, str] | None,
    ) -> None:
        self.host = host
        self.message = message
        self._sender = sender
        self._message_id = message_id
        self._metadata = metadata
        self._cancellation: CancellationToken | None = None

    @property
    def sender(self) -> AgentId | None:
        return self._sender

    @property
    def message_id(self) -> str:
        if self._message_id is None:
            self._message_id = new_message_id()
        return self._message_id

    @property
    def metadata(self) -> Mapping[str, str]:
        return self._metadata or {}

    @property
    def cancellation(self) -> CancellationToken:
        if self._cancellation is None:
            self._cancellation = CancellationToken()
        return self._cancellation

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        result = fn(*args)
        if isinstance(result, Awaitable):
            result = await result
        return result

    async def wait_for(self, name: str, *, timeout: float | None = None) -> Any:
        return await self.host.wait_for_promise(name, timeout)

    def idempotency_key(self, step_name: str) -> str:
        return f"{self.message_id}/{step_name}"


class _Publication(_Context):
    """A published message: one object shared by every subscriber's delivery."""

    __slots__ = ("_topic", "trace_context")

    def __init__(  # noqa: PLR0917 - positional on the hot path, built in one place
        self,
        host: AgentHost,
        message: Any,
        sender: AgentId | None,
        message_id: str,
        metadata: Mapping[str, str] | None,
        topic: TopicId,
    ) -> None:
        super().__init__(host, message, sender, message_id, metadata)
        self._topic = topic
        # Telemetry's hook keeps here the trace context it entered for one
        # delivery of an unsampled publication, for the others to reuse.
        self.trace_context: Any = None

    @property
    def topic(self) -> TopicId | None:
        return self._topic

    def time_remaining(self) -> float | None:
        return None


class _Call(_Context):
    """One direct send to one agent; also the handler's `MessageContext`."""

    __slots__ = (
        "chain",
        "deadline",
        "future",
        "key",
        "mailbox",
        "state",
        "task",
    )

    def __init__(  # noqa: PLR0917 - positional on the hot path, built in one place
        self,
        host: AgentHost,
        message: Any,
        key: tuple[str, str],
        sender: AgentId | None,
        message_id: str | None,
        metadata: Mapping[str, str] | None,
        deadline: float,
        chain: tuple[tuple[str, str], ...],
        future: asyncio.Future[Any],
    ) -> None:
        # The base fields are set here rather than through super().__init__():
        # one Python call less on every send.
        self.host = host
        self.message = message
        self._sender = sender
        self._message_id = message_id
        self._metadata = metadata
        self._cancellation = None
        self.key = key
        self.deadline = deadline
        self.chain = chain
        self.future = future
        self.state = _QUEUED
        self.mailbox: _Mailbox | None = None
        self.task: asyncio.Task[Any] | None = None

    @property
    def topic(self) -> TopicId | None:
        return None

    def time_remaining(self) -> float | None:
        return max(0.0, self.deadline - self.host.loop.time())

    def blocked_chain(self) -> tuple[tuple[str, str], ...]:
        """The agents blocked while this call's handler awaits a nested send."""
        mailbox = self.mailbox
        if mailbox is None or mailbox.reentrant:
            return self.chain
        return (*self.chain, self.key)

    def finish(self, result: Any) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def stop(self, error: RaviError) -> None:
        """End the call early (deadline, caller gone, runtime stopping) with `error`."""
        state = self.state
        if state == _DONE:
            return
        self.state = _DONE
        self.fail(error)
        if self._cancellation is not None:
            self._cancellation.cancel()
        if state == _RUNNING:
            task = self.task
            # A handler that stops its own call (through a shared token) keeps
            # running to its end; cancelling the running task would instead leave
            # a cancel request pending for whatever it awaits next.
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    @property
    def pending(self) -> bool:
        return self.state != _DONE

    def expire(self) -> None:
        self.stop(DeadlineExceeded(f"deadline exceeded sending to {self.key[0]}/{self.key[1]}"))


_Frame = _Call | tuple["_Mailbox", _Publication]
"""What `current_call` holds while a handler runs: the send, or (mailbox, publication)."""

current_call: contextvars.ContextVar[_Frame | None] = contextvars.ContextVar(
    "ravi_current_call", default=None
)
"""The message whose handler is running in this task, if any (for nested sends)."""


class _Mailbox:
    """The queue of one agent instance and the worker that drains it."""

    __slots__ = (
        "agent",
        "agent_id",
        "busy",
        "capacity",
        "checkpoint",
        "dispatch",
        "handlers",
        "host",
        "inflight",
        "key",
        "pending",
        "queue",
        "quiet_since",
        "reentrant",
        "retired",
        "save_lock",
        "stateful",
        "task",
        "used",
        "version",
        "waiter",
    )

    def __init__(
        self, host: AgentHost, agent: BaseAgent, agent_id: AgentId, version: int = 0
    ) -> None:
        self.host = host
        self.agent = agent
        self.agent_id = agent_id
        self.key = (agent_id.type, agent_id.key)
        self.capacity = host.mailbox_capacity
        self.reentrant = type(agent).reentrant
        self.dispatch = type(agent)._ravi_lookup
        self.handlers = type(agent)._ravi_dispatch
        self.queue: deque[_Call | _Publication] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.pending = 0
        # The worker starts with the first message that has to queue: most
        # instances only ever handle messages inline, in their callers' tasks.
        self.task: asyncio.Task[None] | None = None
        # A reentrant agent's tasks in flight, each with what it handles.
        self.inflight: dict[asyncio.Task[None], _Call | _Publication] = {}
        self.busy: _Call | _Publication | None = None
        self.used = False
        """Set by every message after the first, cleared by the idle sweep and the eviction."""
        self.quiet_since = host.loop.time()
        self.retired = False
        """Passivated or discarded: no longer the instance of its key."""
        self.stateful = _stateful(type(agent))
        self.version = version
        """The version of the agent's state in the store, as loaded or last saved."""
        self.checkpoint = self.stateful and host.checkpoint_each_message
        self.save_lock = asyncio.Lock() if self.checkpoint else None

    def idle(self) -> bool:
        """Whether a send may run in the caller's task without breaking the order."""
        return self.reentrant or (self.busy is None and not self.queue)

    def put(self, entry: _Call | _Publication) -> None:
        """Queue a send or a publication (the caller checked the capacity)."""
        self.pending += 1
        self.host.outstanding += 1
        if self.reentrant:
            if type(entry) is _Publication:
                task = self.host.loop.create_task(self._deliver_alone(entry))
            else:
                assert isinstance(entry, _Call)
                entry.mailbox = self
                task = self.host.loop.create_task(self._handle(entry))
                entry.task = task
            self.inflight[task] = entry
            task.add_done_callback(self._landed)
            return
        self.queue.append(entry)
        if self.task is None:
            self.task = self.host.loop.create_task(
                self._serve(), name=f"ravi-mailbox-{self.agent_id}", context=contextvars.Context()
            )
        elif self.busy is None:
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self.inflight.pop(task, None)

    def calls(self) -> list[_Call]:
        """The sends queued here or being handled by this mailbox's tasks."""
        calls = [entry for entry in self.queue if isinstance(entry, _Call)]
        if isinstance(self.busy, _Call):
            calls.append(self.busy)
        calls += [entry for entry in self.inflight.values() if isinstance(entry, _Call)]
        return calls

    def full_error(self) -> MailboxFull:
        return MailboxFull(f"mailbox of {self.agent_id} is full ({self.capacity} messages)")

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run_inline(self, call: _Call) -> Any:
        """Handle a send in the caller's own task, which saves two task switches.

        Only for an idle mailbox (or a reentrant agent), so messages keep their
        order; messages arriving meanwhile queue up for the worker.
        """
        call.mailbox = self
        call.task = asyncio.current_task()
        if not self.reentrant:
            self.busy = call
        inline = self.host.inline
        inline.add(call)
        self.pending += 1
        self.host.outstanding += 1
        try:
            await self._handle(call)
        except asyncio.CancelledError:
            future = call.future
            if future.done() and not future.cancelled():
                future.exception()  # the caller sees CancelledError instead
            raise
        finally:
            inline.discard(call)
            if not self.reentrant:
                self.busy = None
                if self.queue:
                    self._wake()
        return call.future.result()

    async def _serve(self) -> None:  # noqa: PLR0912, PLR0915 - the hot loop, inlined on purpose
        # _handle and _deliver_alone are inlined here: one coroutine less per
        # message is a measurable share of a delivery (see docs/performance.md).
        queue = self.queue
        host = self.host
        loop = host.loop
        agent = self.agent
        handlers = self.handlers
        dispatch = self.dispatch
        intercepted = host.handle_chain
        quick_handle = host.quick_handle
        quick: bool | contextvars.Token[Any]
        while not host.stopping:
            if not queue or self.busy is not None:
                if self.retired and not queue:
                    return
                self.waiter = loop.create_future()
                await self.waiter
                self.waiter = None
                continue
            entry = queue.popleft()
            message = entry.message
            if type(entry) is _Publication:
                self.busy = entry
                token = current_call.set((self, entry))
                quick = False
                try:
                    if intercepted is None or (
                        quick_handle is not None and (quick := quick_handle(self.agent_id, entry))
                    ):
                        handler = handlers.get(type(message)) or dispatch(type(message))
                        await handler(agent, message, entry)
                    else:
                        await intercepted.first(
                            HandleInput(self.agent_id, message, entry), intercepted.rest
                        )
                    if self.checkpoint:
                        await host.checkpoint(self)
                except Exception as exc:
                    self._log_failure(entry, exc, quick is not False)
                finally:
                    if quick and quick is not True:
                        quick.var.reset(quick)
                    current_call.reset(token)
                    self.busy = None
            elif isinstance(entry, _Call) and entry.state == _QUEUED:
                call = entry
                self.busy = call
                call.mailbox = self
                call.task = self.task
                call.state = _RUNNING
                token = current_call.set(call)
                quick = False
                try:
                    if intercepted is None or (
                        quick_handle is not None and (quick := quick_handle(self.agent_id, call))
                    ):
                        handler = handlers.get(type(message)) or dispatch(type(message))
                        result = await handler(agent, message, call)
                    else:
                        result = await intercepted.first(
                            HandleInput(self.agent_id, message, call), intercepted.rest
                        )
                    if self.checkpoint:
                        await host.checkpoint(self)
                except asyncio.CancelledError:
                    if not self._stopped_early(call):
                        raise
                except Exception as exc:
                    self._failed(call, exc)
                else:
                    self._succeeded(call, result)
                finally:
                    if quick and quick is not True:
                        quick.var.reset(quick)
                    call.state = _DONE
                    current_call.reset(token)
                    self.busy = None
            self.pending -= 1
            host.outstanding -= 1
            if not host.outstanding and host.idle_waiters:
                host.wake_idle_waiters()

    async def _handle(self, call: _Call) -> None:
        """Handle a send in the current task (a reentrant agent's task, or inline)."""
        call.state = _RUNNING
        token = current_call.set(call)
        quick: bool | contextvars.Token[Any] = False
        try:
            host = self.host
            intercepted = host.handle_chain
            if intercepted is None or (
                (quick_handle := host.quick_handle) is not None
                and (quick := quick_handle(self.agent_id, call))
            ):
                result = await self.dispatch(type(call.message))(self.agent, call.message, call)
            else:
                result = await intercepted.first(
                    HandleInput(self.agent_id, call.message, call), intercepted.rest
                )
            if self.checkpoint:
                await self.host.checkpoint(self)
        except asyncio.CancelledError:
            if not self._stopped_early(call):
                raise
        except Exception as exc:
            self._failed(call, exc)
        else:
            self._succeeded(call, result)
        finally:
            if quick and quick is not True:
                quick.var.reset(quick)
            call.state = _DONE
            current_call.reset(token)
            self.pending -= 1
            self.host.call_done()

    async def _deliver_alone(self, publication: _Publication) -> None:
        """Deliver a publication to a reentrant agent, in its own task."""
        token = current_call.set((self, publication))
        quick: bool | contextvars.Token[Any] = False
        try:
            host = self.host
            intercepted = host.handle_chain
            message = publication.message
            if intercepted is None or (
                (quick_handle := host.quick_handle) is not None
                and (quick := quick_handle(self.agent_id, publication))
            ):
                await self.dispatch(type(message))(self.agent, message, publication)
            else:
                await intercepted.first(
                    HandleInput(self.agent_id, message, publication), intercepted.rest
                )
            if self.checkpoint:
                await host.checkpoint(self)
        except Exception as exc:
            self._log_failure(publication, exc, quick is not False)
        finally:
            if quick and quick is not True:
                quick.var.reset(quick)
            current_call.reset(token)
            self.pending -= 1
            self.host.call_done()

    def passivatable(self) -> bool:
        """Whether the instance may go now: nothing queued or running, not resident."""
        return (
            not self.pending
            and self.busy is None
            and not self.queue
            and not getattr(self.agent, "resident", False)
        )

    def retire(self) -> None:
        """Stop being the instance of its key; the worker ends once the queue is empty."""
        self.retired = True
        self._wake()

    def fail_queued(self, error: RaviError) -> None:
        """Fail the queued sends with `error` and drop the queued publications."""
        host = self.host
        while self.queue:
            entry = self.queue.popleft()
            if isinstance(entry, _Call):
                entry.stop(error)
            else:
                self._log_failure(entry, error)
            self.pending -= 1
            host.call_done()

    def _log_failure(self, publication: _Publication, exc: Exception, quick: bool = False) -> None:
        # The counter a quick check set counts for the deliveries it let
        # through; another delivery of the publication may have been wrapped.
        if quick and (counter := getattr(publication, "failure_counter", None)) is not None:
            counter(self.agent_id.type, exc)
        logger.error(
            "handler of %s failed on %s published on %s",
            self.agent_id,
            type(publication.message).__qualname__,
            publication.topic,
            exc_info=exc,
        )

    def _stopped_early(self, call: _Call) -> bool:
        """Whether a CancelledError was our own stop of `call`, now taken back.

        `_Call.stop` marks the call done before it cancels the task, so a call
        still running was cancelled by someone else (the runtime stopping its
        workers, or the task's owner): it fails with `Cancelled` and the caller
        re-raises.
        """
        if call.state != _DONE:
            call.state = _DONE
            call.fail(Cancelled(f"cancelled while {self.agent_id} was handling the message"))
            return False
        # The call was stopped (deadline, caller gone) and our own cancel() landed
        # here: withdraw it so the task serves the next message.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True

    def _failed(self, call: _Call, exc: Exception) -> None:
        counter = getattr(call, "failure_counter", None)
        if counter is not None:
            counter(self.agent_id.type, exc)
        call.fail(handler_error(exc, str(self.agent_id)))

    @staticmethod
    def _succeeded(call: _Call, result: Any) -> None:
        if call.state == _DONE:
            # Stopped while the handler finished anyway: the cancel request was
            # never delivered, so withdraw it.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
        call.finish(result)


@dataclass(frozen=True)
class Lifecycle:
    """How agent instances come and go on a host, and where their state goes.

    Attributes:
        idle_timeout: seconds without a message after which an instance is
            passivated; 0 never.
        max_active_agents: active instances at most (the least recently used
            idle one is passivated to make room); 0 no bound.
        checkpoint: "passivation" saves state on passivation and stop only;
            "each_message" also after every handled message, before its reply.
        state_store: where passivated agents keep their state (memory when None).
    """

    idle_timeout: float = 0.0
    max_active_agents: int = 0
    checkpoint: str = "passivation"
    state_store: StateStore | None = None

    def __post_init__(self) -> None:
        check_lifecycle(self.idle_timeout, self.max_active_agents, self.checkpoint)


class AgentHost:
    """The agents hosted by one process: registrations, instances, mailboxes, subscriptions.

    Args:
        runtime: the public runtime agents are bound to.
        default_timeout: seconds a send may take when it names none.
        mailbox_capacity: messages queued or running per instance at most.
        interceptors: hooks around handler calls, activations and passivations.
        lifecycle: passivation settings and the state store.
    """

    def __init__(
        self,
        runtime: BaseRuntime,
        *,
        default_timeout: float,
        mailbox_capacity: int,
        interceptors: Sequence[Interceptor] = (),
        lifecycle: Lifecycle | None = None,
    ) -> None:
        if default_timeout <= 0:
            raise ValueError("default_timeout must be positive")
        if mailbox_capacity < 1:
            raise ValueError("mailbox_capacity must be at least 1")
        lifecycle = lifecycle or Lifecycle()
        self.runtime = runtime
        self.default_timeout = default_timeout
        self.mailbox_capacity = mailbox_capacity
        self.idle_timeout = lifecycle.idle_timeout
        self.max_active_agents = lifecycle.max_active_agents
        self.checkpoint_each_message = lifecycle.checkpoint == "each_message"
        store = lifecycle.state_store
        self.store = store if store is not None else MemoryStore()
        self._store_open: asyncio.Event | None = None
        self._store_error: BaseException | None = None
        self._passivating: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.active: dict[str, int] = {}
        """Active instances per agent type."""
        self.registrations: dict[str, _AgentRegistration] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self._by_topic_type: dict[str, tuple[str, ...]] = {}
        # Oldest activation (or second chance) first: the eviction's clock hand.
        self._mailboxes: OrderedDict[tuple[str, str], _Mailbox] = OrderedDict()
        self._activating: dict[tuple[str, str], asyncio.Future[_Mailbox]] = {}
        self.on_activated: Callable[[tuple[str, str]], None] | None = None
        """Called with each key that got an instance (a node of a pool checks where it belongs)."""
        self._deadline_of: dict[tuple[str, str], float] = {}
        self._leaving: dict[tuple[str, str], _Mailbox] = {}
        self._promises: dict[str, asyncio.Future[Any]] = {}
        # Resolved promises, oldest first: kept to refuse a second answer, up
        # to a bound, so that a long-running node does not grow without end.
        self._resolved: OrderedDict[str, None] = OrderedDict()
        self.idle_waiters: list[asyncio.Future[None]] = []
        self.inline: set[_Call] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines | None = None
        self.outstanding = 0
        self.running = False
        self.stopping = False
        self._registered: asyncio.Event | None = None
        self.handle_chain = (
            chain(interceptors, lambda i: i.handle, self._handle_input) if interceptors else None
        )
        self.quick_handle: QuickHandle | None = quick(interceptors, "handle")
        self._activate_chain = (
            chain(interceptors, lambda i: i.activate, self._activate_input)
            if interceptors
            else None
        )
        self._passivate_chain = (
            chain(interceptors, lambda i: i.passivate, self._passivate_input)
            if interceptors
            else None
        )

    def _handle_input(self, input: HandleInput) -> Awaitable[Any]:
        # The handler's own coroutine, with no layer of ours around it. A send
        # knows its mailbox, unless an interceptor changed the recipient.
        agent_id, message, ctx = input.agent_id, input.message, input.ctx
        mailbox = ctx.mailbox if type(ctx) is _Call else None
        if mailbox is None or mailbox.agent_id is not agent_id:
            mailbox = self._mailboxes[(agent_id.type, agent_id.key)]
        handler: Handler = mailbox.handlers.get(type(message)) or mailbox.dispatch(type(message))
        return handler(mailbox.agent, message, ctx)

    @property
    def deadlines(self) -> Deadlines:
        """The deadline heap of this host's sends (and of the remote calls it makes)."""
        deadlines = self._deadlines
        if deadlines is None:
            raise Unavailable("the runtime is not started: call `await runtime.start()` first")
        return deadlines

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            raise Unavailable("the runtime is not started: call `await runtime.start()` first")
        return loop

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop)
        self._store_open = asyncio.Event()
        self._store_error = None
        self.running = True
        self.stopping = False
        if self.idle_timeout > 0:
            self._sweeper = self._loop.create_task(self._sweep(), name="ravi-idle-sweep")
        if self._registered is not None:
            self._registered.set()

    async def open_store(self, holder: str) -> None:
        """Open the state store for this host (as `holder` in a shared one).

        Activations of agents with state wait for it, so a server may already
        serve calls while it opens.

        Raises:
            Unavailable: the store cannot be reached (activations fail with it too).
        """
        event = self._store_open
        assert event is not None, "start() the host first"
        try:
            await self.store.open(holder)
        except BaseException as exc:
            self._store_error = exc
            raise
        finally:
            event.set()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop: sends end with `Cancelled`; publications accepted before are delivered first.

        The subscribers' handlers of what was published before the stop get up
        to `grace` seconds to run (and may publish or send on meanwhile); then
        whatever still runs is cancelled.
        """
        if not self.running:
            return
        if grace > 0:
            await self.deliver_publications(grace)
        self.running = False
        self.stopping = True
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
        mailboxes = list(self._mailboxes.values())
        await self._cancel_all(mailboxes)
        self._mailboxes.clear()
        self.active.clear()
        # Graceful or not, a stop saves what the instances hold: the handlers
        # were given their grace period (GrpcRuntime) or cancelled above.
        if sweeper is not None:
            await asyncio.gather(sweeper, return_exceptions=True)
        await self._save_all(mailboxes)
        self._promises.clear()
        self._resolved.clear()
        if self._deadlines is not None:
            self._deadlines.clear()
        self.outstanding = 0
        self.wake_idle_waiters()

    async def _cancel_all(self, mailboxes: list[_Mailbox]) -> None:
        """End every call, queued or running, and every pending promise, of a stopping host."""
        for call in list(self.inline):
            call.stop(Cancelled("runtime stopped while the message was being handled"))
        tasks: list[asyncio.Task[Any]] = []
        for mailbox in mailboxes:
            for entry in mailbox.queue:
                if isinstance(entry, _Call):
                    entry.stop(
                        Cancelled(f"runtime stopped before {mailbox.agent_id} got the message")
                    )
            for task in (mailbox.task, *mailbox.inflight):
                if task is not None:
                    task.cancel()
                    tasks.append(task)
        for future in self._promises.values():
            if not future.done():
                future.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _save_all(self, mailboxes: list[_Mailbox]) -> None:
        """Save the state of every instance a stopping host had, then close the store."""
        await asyncio.gather(*self._passivating.values(), return_exceptions=True)
        for start in range(0, len(mailboxes), _SAVE_CONCURRENCY):
            await asyncio.gather(
                *(
                    self._let_go(mailbox, "stop")
                    for mailbox in mailboxes[start : start + _SAVE_CONCURRENCY]
                )
            )
        await self._close_store()

    async def deliver_publications(self, grace: float) -> None:
        """End every send now, then let the mailboxes deliver the publications they hold."""
        for call in list(self.inline):
            call.stop(Cancelled("runtime stopped while the message was being handled"))
        for mailbox in list(self._mailboxes.values()):
            for call in mailbox.calls():
                call.stop(Cancelled(f"runtime stopped before {mailbox.agent_id} handled it"))
        try:
            await self.wait_idle(grace)
        except DeadlineExceeded:
            logger.warning(
                "stopping: %d message(s) still queued or running after the grace period "
                "of %s s are cancelled",
                self.outstanding,
                grace,
            )

    async def wait_idle(self, timeout: float | None) -> None:
        if self.outstanding == 0:
            return
        waiter = self.loop.create_future()
        self.idle_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the runtime did not become idle within {timeout} s "
                f"({self.outstanding} message(s) still queued or running)"
            ) from None
        finally:
            if waiter in self.idle_waiters:
                self.idle_waiters.remove(waiter)

    def call_done(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0 and self.idle_waiters:
            self.wake_idle_waiters()

    def wake_idle_waiters(self) -> None:
        waiters, self.idle_waiters = self.idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- registration ------------------------------------------------------

    def register(
        self, agent_type: str, factory: Callable[[], Any], agent_class: type[Any]
    ) -> type[BaseAgent]:
        """Register `factory` for `agent_type`; returns the checked agent class."""
        if agent_type in self.registrations:
            raise AlreadyExists(f"agent type {agent_type!r} is registered already")
        checked = agent_class_of(agent_class)
        self.registrations[agent_type] = _AgentRegistration(factory, checked)
        if self._registered is not None:
            self._registered.set()
        return checked

    async def wait_for_types(self, agent_types: Sequence[str], timeout: float) -> None:
        """Wait until the host runs and every one of `agent_types` is registered."""
        event = self._registered = self._registered or asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                while not (self.running and all(t in self.registrations for t in agent_types)):
                    event.clear()
                    await event.wait()
        except TimeoutError:
            raise TimeoutError(self._not_ready(agent_types, timeout)) from None

    def _not_ready(self, agent_types: Sequence[str], timeout: float) -> str:
        if not self.running:
            return f"the runtime did not start within {timeout:g} s: call start() first"
        missing = [f'"{t}"' for t in agent_types if t not in self.registrations]
        known = ", ".join(sorted(self.registrations)) or "none"
        what = "agent type" if len(missing) == 1 else "agent types"
        return (
            f"{what} {', '.join(missing)} not registered after {timeout:g} s; "
            f"registered types: {known}"
        )

    def hosts(self, agent_type: str) -> bool:
        return agent_type in self.registrations

    def add_subscription(self, subscription: Subscription) -> None:
        if subscription.id in self.subscriptions:
            raise AlreadyExists(f"a subscription with id {subscription.id!r} exists already")
        self.subscriptions[subscription.id] = subscription
        self._by_topic_type.clear()

    def remove_subscription(self, subscription_id: str) -> None:
        if self.subscriptions.pop(subscription_id, None) is None:
            raise NotFound(f"no subscription with id {subscription_id!r}")
        self._by_topic_type.clear()

    def subscriber_types(self, topic_type: str) -> tuple[str, ...]:
        """The agent types subscribed to a topic type, each once, in subscription order."""
        found = self._by_topic_type.get(topic_type)
        if found is None:
            found = tuple(
                dict.fromkeys(
                    s.agent_type
                    for s in self.subscriptions.values()
                    if (
                        s.topic_type == topic_type
                        if isinstance(s, TypeSubscription)
                        else topic_type.startswith(s.topic_type_prefix)
                    )
                )
            )
            self._by_topic_type[topic_type] = found
        return found

    # --- instances ---------------------------------------------------------

    async def mailbox(self, agent_id: AgentId) -> _Mailbox:
        key = (agent_id.type, agent_id.key)
        mailbox = self._mailboxes.get(key)
        if mailbox is None:
            mailbox = await self._activated(key, agent_id, self.loop.time() + self.default_timeout)
        mailbox.used = True
        return mailbox

    async def _activated(
        self, key: tuple[str, str], agent_id: AgentId, deadline: float
    ) -> _Mailbox:
        """The instance of a key that has none yet: activated now, or by a concurrent caller.

        A new instance is not marked used: its place at the end of the eviction
        order says it is the most recent; `used` marks its later messages.
        """
        mailbox = await self._activate(key, agent_id, deadline)
        while mailbox.retired:
            # Activated by another caller, and passivated before this one resumed.
            mailbox = await self._activate(key, agent_id, deadline)
        return mailbox

    async def _activate(
        self, key: tuple[str, str], agent_id: AgentId, deadline: float | None = None
    ) -> _Mailbox:
        """The instance of `key`, created (its state loaded) for its first message.

        A caller that was not the one creating it must check `retired` on what
        it gets: the instance may have been passivated before it resumed.
        """
        pending = self._activating.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        registration = self.registrations.get(agent_id.type)
        if registration is None:
            raise AgentTypeNotFound(not_registered(agent_id.type, self.registrations))
        if not self.running:
            raise Unavailable("the runtime is not running")
        future: asyncio.Future[_Mailbox] = self.loop.create_future()
        self._activating[key] = future
        try:
            leaving = self._passivating.get(key)
            if leaving is not None:
                # The state this activation loads is the one the passivation saves.
                await asyncio.shield(leaving)
            if deadline is None:
                deadline = self.loop.time() + self.default_timeout
            if self._activate_chain is None:
                await self._create(registration, key, agent_id, deadline)
            else:
                self._deadline_of[key] = deadline
                try:
                    await self._activate_chain(ActivateInput(agent_id))
                finally:
                    self._deadline_of.pop(key, None)
            mailbox = self._mailboxes[key]
            future.set_result(mailbox)
            if self.on_activated is not None:
                self.on_activated(key)
            return mailbox
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # a failed activation is reported to its caller, here
            raise
        finally:
            del self._activating[key]

    async def _activate_input(self, input: ActivateInput) -> None:
        key = (input.agent_id.type, input.agent_id.key)
        registration = self.registrations[input.agent_id.type]
        mailbox = await self._create(registration, key, input.agent_id, self._deadline_of[key])
        input.loaded_version = mailbox.version

    async def _create(
        self,
        registration: _AgentRegistration,
        key: tuple[str, str],
        agent_id: AgentId,
        deadline: float,
    ) -> _Mailbox:
        agent = registration.factory()
        if isinstance(agent, Awaitable):
            agent = await agent
        if not isinstance(agent, registration.agent_class):
            raise TypeError(
                f"the factory of agent type {agent_id.type!r} returned "
                f"{type(agent).__qualname__}, not a {registration.agent_class.__qualname__}"
            )
        agent._ravi_bind(self.runtime, agent_id)
        version = 0
        if _stateful(type(agent)):
            version = await self._load(agent, agent_id, deadline)
        if self.max_active_agents and len(self._mailboxes) >= self.max_active_agents:
            self._make_room()
        if not self.running:
            raise Unavailable("the runtime stopped while the agent was being activated")
        mailbox = _Mailbox(self, agent, agent_id, version)
        self._mailboxes[key] = mailbox
        self.active[agent_id.type] = self.active.get(agent_id.type, 0) + 1
        return mailbox

    async def _load(self, agent: BaseAgent, agent_id: AgentId, deadline: float) -> int:
        """Load `agent`'s stored state into it; returns its version.

        A shared store answers that another node holds the agent while that
        node hands it over (a pool rebalancing): wait for it, up to `deadline`.
        """
        event = self._store_open
        assert event is not None
        if not event.is_set():
            try:
                async with asyncio.timeout_at(deadline):
                    await event.wait()
            except TimeoutError:
                raise Unavailable("the state store did not open before the deadline") from None
        if self._store_error is not None:
            raise Unavailable(f"the state store is not available: {self._store_error}")
        delay = 0.005
        while True:
            stored = await self.store.load(agent_id)
            if not stored.held_by:
                break
            if self.loop.time() + delay >= deadline:
                raise Unavailable(
                    f"{agent_id} is held by node {stored.held_by!r}, which did not let it go "
                    "before the deadline (it saves the agent's state first)",
                    metadata={"agent_type": agent_id.type, "node_id": stored.held_by},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        if stored.state is not None:
            await agent.load_state(stored.state)
        return stored.version

    # --- passivation -------------------------------------------------------

    def _make_room(self) -> None:
        """Passivate the least recently used idle instances until there is room for one more.

        The order of `_mailboxes` is the order of activation; an instance used
        since it was last looked at moves to the end instead of going (CLOCK,
        a second chance), so the hot path never reorders anything. When every
        instance is busy or resident, the bound is exceeded until one is not.
        """
        mailboxes = self._mailboxes
        bound = self.max_active_agents
        for _ in range(2 * len(mailboxes)):
            if len(mailboxes) < bound:
                return
            key, mailbox = next(iter(mailboxes.items()))
            if not mailbox.used and mailbox.passivatable():
                self.passivate(mailbox, "capacity")
                continue
            mailbox.used = False
            mailboxes.move_to_end(key)

    def passivate(self, mailbox: _Mailbox, reason: str) -> asyncio.Future[None] | None:
        """Let an idle instance go: it stops being its key's instance at once.

        Returns what is left to do (saving its state, closing it) as a task
        that a new activation of the key waits for, or None when nothing is.
        """
        key = mailbox.key
        if self._mailboxes.get(key) is mailbox:
            del self._mailboxes[key]
            self.active[key[0]] -= 1
        mailbox.retire()
        if not (mailbox.stateful or _closes(type(mailbox.agent)) or self._passivate_chain):
            return None
        task = self.loop.create_task(self._let_go(mailbox, reason))
        self._passivating[key] = task

        def done(_: asyncio.Future[None]) -> None:
            if self._passivating.get(key) is task:
                del self._passivating[key]

        task.add_done_callback(done)
        return task

    async def _let_go(self, mailbox: _Mailbox, reason: str) -> None:
        if self._passivate_chain is None:
            await self._save_and_close(mailbox, reason)
            return
        key = mailbox.key
        self._leaving[key] = mailbox
        try:
            await self._passivate_chain(PassivateInput(mailbox.agent_id, reason))
        except Exception as exc:
            logger.error("an interceptor failed passivating %s", mailbox.agent_id, exc_info=exc)
        finally:
            if self._leaving.get(key) is mailbox:
                del self._leaving[key]

    async def _passivate_input(self, input: PassivateInput) -> None:
        mailbox = self._leaving[(input.agent_id.type, input.agent_id.key)]
        input.saved = await self._save_and_close(mailbox, input.reason)

    async def _save_and_close(self, mailbox: _Mailbox, reason: str) -> bool:
        """Save the state of a passivated instance (unless stale), then close it."""
        saved = False
        agent = mailbox.agent
        if mailbox.stateful and mailbox.version >= 0:
            try:
                state = await agent.save_state()
                mailbox.version = await self.store.save(
                    mailbox.agent_id, state, mailbox.version, release=True
                )
                saved = True
            except StaleState as error:
                logger.warning("%s was not saved on %s: %s", mailbox.agent_id, reason, error)
            except Exception as exc:
                logger.error(
                    "saving the state of %s on %s failed", mailbox.agent_id, reason, exc_info=exc
                )
        if _closes(type(agent)):
            try:
                await agent.close()
            except Exception as exc:
                logger.error("closing %s failed", mailbox.agent_id, exc_info=exc)
        return saved

    async def checkpoint(self, mailbox: _Mailbox) -> None:
        """Save a running instance's state after a message (`checkpoint="each_message"`).

        Raises:
            StaleState: the store has moved on (another node took the agent over):
                the instance is discarded, its queued messages fail with the error.
        """
        lock = mailbox.save_lock
        assert lock is not None
        async with lock:
            if mailbox.version < 0:
                raise StaleState(f"{mailbox.agent_id} was discarded: its state is stale")
            try:
                state = await mailbox.agent.save_state()
                mailbox.version = await self.store.save(mailbox.agent_id, state, mailbox.version)
            except InvalidArgument:
                raise  # state that cannot be stored: nothing was written
            except BaseException as exc:
                # Whether the write landed is unknown (or it was refused): the
                # next message loads the agent from the store afresh.
                self._discard(mailbox, exc)
                raise

    def _discard(self, mailbox: _Mailbox, cause: BaseException) -> None:
        mailbox.version = -1
        key = mailbox.key
        if self._mailboxes.get(key) is mailbox:
            del self._mailboxes[key]
            self.active[key[0]] -= 1
        error = (
            cause
            if isinstance(cause, StaleState)
            else StaleState(
                f"{mailbox.agent_id} was discarded: saving its state failed ({cause!r})"
            )
        )
        mailbox.fail_queued(error)
        mailbox.retire()

    async def _sweep(self) -> None:
        """Passivate the instances idle for `idle_timeout`, every quarter of it."""
        loop = self.loop
        timeout = self.idle_timeout
        while self.running:
            await asyncio.sleep(timeout / 4)
            now = loop.time()
            try:
                for mailbox in list(self._mailboxes.values()):
                    if mailbox.used:
                        mailbox.used = False
                        mailbox.quiet_since = now
                    elif (
                        now - mailbox.quiet_since >= timeout
                        and not mailbox.retired
                        and mailbox.passivatable()
                    ):
                        self.passivate(mailbox, "idle")
            except Exception as exc:  # one bad instance must not end the sweeps
                logger.error("the idle sweep failed", exc_info=exc)

    async def _close_store(self) -> None:
        event = self._store_open
        if event is None or not event.is_set() or self._store_error is not None:
            return
        try:
            await self.store.close()
        except Exception as exc:
            logger.error("closing the state store failed", exc_info=exc)

    def agents(self) -> Iterable[_Mailbox]:
        return self._mailboxes.values()

    def active_agents(self) -> dict[str, int]:
        """Active instances per agent type (every registered type, 0 included)."""
        return {agent_type: self.active.get(agent_type, 0) for agent_type in self.registrations}

    def depths(self) -> dict[str, int]:
        """Messages queued or running, per agent type."""
        totals: dict[str, int] = {}
        for mailbox in self._mailboxes.values():
            totals[mailbox.key[0]] = totals.get(mailbox.key[0], 0) + mailbox.pending
        return totals

    # --- messaging ---------------------------------------------------------

    async def send(
        self,
        message: Any,
        recipient: AgentId,
        *,
        sender: AgentId | None,
        timeout: float | None,
        cancellation: CancellationToken | None,
        message_id: str | None,
        metadata: Mapping[str, str] | None,
        call_chain: tuple[tuple[str, str], ...] = _NO_CHAIN,
    ) -> Any:
        """Deliver a send to a local agent and return the reply.

        `call_chain` is the chain of blocked agents a send from another node
        carries; a send from a local handler takes its chain from the handler.
        """
        if not self.running:
            raise Unavailable("the runtime is not running: call `await runtime.start()` first")
        mailbox = self._mailboxes.get((recipient.type, recipient.key))
        loop = self.loop
        deadline = loop.time() + (self.default_timeout if timeout is None else timeout)
        if mailbox is None:
            mailbox = await self._activated((recipient.type, recipient.key), recipient, deadline)
        else:
            mailbox.used = True
        chain = call_chain
        parent = current_call.get()
        if parent is not None:
            inherited = _inherited(parent)
            if inherited is not None:
                parent_deadline, chain = inherited
                if parent_deadline is not None:
                    deadline = min(deadline, parent_deadline)
        if chain and not mailbox.reentrant and mailbox.key in chain:
            raise ReentrantCall(
                f"{recipient} is busy waiting on this call "
                f"({' -> '.join('/'.join(k) for k in (*chain, mailbox.key))}); "
                "the call would deadlock: make the agent reentrant or restructure the calls"
            )
        future: asyncio.Future[Any] = loop.create_future()
        call = _Call(
            self, message, mailbox.key, sender, message_id, metadata, deadline, chain, future
        )
        deadlines = self._deadlines
        assert deadlines is not None
        deadlines.add(deadline, call)
        unlink = cancellation.add_callback(_cancel_call(call)) if cancellation else None
        try:
            if mailbox.pending >= mailbox.capacity:
                raise mailbox.full_error()
            if mailbox.idle():
                return await mailbox.run_inline(call)
            mailbox.put(call)
            return await future
        except asyncio.CancelledError:
            call.stop(Cancelled("the caller cancelled the call"))
            raise
        finally:
            deadlines.finished()
            if unlink is not None:
                unlink()

    async def publish(
        self,
        message: Any,
        topic: TopicId,
        *,
        sender: AgentId | None,
        message_id: str | None,
        metadata: Mapping[str, str] | None,
        timeout: float | None,
        remote: Callable[[str, _Publication], None] | None = None,
        agent_types: tuple[str, ...] | None = None,
        elsewhere: Callable[[str, str], bool] | None = None,
    ) -> int:
        """Deliver to every matching subscriber hosted here; returns the number of deliveries.

        A subscription naming an agent type not registered here goes to `remote`
        (GrpcRuntime sends it on to the node hosting the type), or is logged.
        `agent_types` delivers to those agent types instead of the subscribed ones.
        `elsewhere(agent_type, key)` says an agent lives on another member of
        this node's pool, which delivers the publication itself.
        """
        if not self.running:
            raise Unavailable("the runtime is not running: call `await runtime.start()` first")
        if agent_types is None:
            agent_types = self.subscriber_types(topic.type)
        if not agent_types:
            return 0
        if message_id is None:
            message_id = new_message_id()
        source = topic.source
        sender_key = (sender.type, sender.key) if sender is not None else None
        publication = _Publication(self, message, sender, message_id, metadata, topic)
        deadline: float | None = None
        delivered = 0
        for agent_type in agent_types:
            key = (agent_type, source)
            if key == sender_key or (elsewhere is not None and elsewhere(agent_type, source)):
                continue
            mailbox = self._mailboxes.get(key)
            if mailbox is None:
                if agent_type not in self.registrations:
                    self._not_hosted(agent_type, publication, remote)
                    continue
                if deadline is None:
                    deadline = self.loop.time() + (
                        self.default_timeout if timeout is None else timeout
                    )
                mailbox = await self._activated(key, AgentId(agent_type, source), deadline)
            else:
                mailbox.used = True
            if mailbox.pending >= mailbox.capacity:
                if deadline is None:
                    deadline = self.loop.time() + (
                        self.default_timeout if timeout is None else timeout
                    )
                await self._wait_for_room(mailbox, deadline)
            mailbox.put(publication)
            delivered += 1
        return delivered

    @staticmethod
    def _not_hosted(
        agent_type: str,
        publication: _Publication,
        remote: Callable[[str, _Publication], None] | None,
    ) -> None:
        if remote is not None:
            remote(agent_type, publication)
            return
        logger.warning(
            "a subscription to %r names agent type %r, which is not registered",
            publication.topic.type if publication.topic else "",
            agent_type,
        )

    async def _wait_for_room(self, mailbox: _Mailbox, deadline: float) -> None:
        # Back-pressure for publishers: poll at a short interval instead of adding
        # a wake-up to every dequeue, which would cost the common case.
        loop = self.loop
        delay = 0.0005
        while mailbox.pending >= mailbox.capacity:
            if loop.time() >= deadline:
                raise MailboxFull(
                    f"mailbox of {mailbox.agent_id} stayed full ({mailbox.capacity} messages) "
                    "until the publish deadline"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            if not self.running:
                raise Unavailable("the runtime stopped")

    # --- promises ----------------------------------------------------------

    def _promise(self, name: str) -> asyncio.Future[Any]:
        future = self._promises.get(name)
        if future is None:
            future = self.loop.create_future()
            self._promises[name] = future
        return future

    async def wait_for_promise(self, name: str, timeout: float | None) -> Any:
        future = self._promise(name)
        if future.done():
            return future.result()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"promise {name!r} was not resolved within {timeout} s"
            ) from None

    def promise_awaited(self, name: str) -> bool:
        """Whether a handler waits for the promise and it is not resolved yet."""
        future = self._promises.get(name)
        return future is not None and not future.done()

    def resolve_promise(self, name: str, value: Any) -> None:
        if not self.running:
            raise Unavailable("the runtime is not running")
        future = self._promise(name)
        if future.done():
            raise AlreadyExists(f"promise {name!r} is resolved already")
        future.set_result(value)
        self._resolved[name] = None
        while len(self._resolved) > MAX_RESOLVED_PROMISES:
            oldest, _ = self._resolved.popitem(last=False)
            self._promises.pop(oldest, None)

    # --- state -------------------------------------------------------------

    async def save_agent(self, agent_id: AgentId) -> Mapping[str, Any]:
        mailbox = await self.mailbox(agent_id)
        return dict(await mailbox.agent.save_state())

    async def load_agent(self, agent_id: AgentId, state: Mapping[str, Any]) -> None:
        mailbox = await self.mailbox(agent_id)
        await mailbox.agent.load_state(state)
        if mailbox.checkpoint:
            await self.checkpoint(mailbox)


def check_lifecycle(idle_timeout: float, max_active_agents: int, checkpoint: str) -> None:
    """Refuse lifecycle settings that cannot work, naming the setting.

    Raises:
        ValueError: a setting is out of its range.
    """
    if idle_timeout < 0:
        raise ValueError(f"idle_timeout must not be negative (0: never), got {idle_timeout}")
    if max_active_agents < 0:
        raise ValueError(
            f"max_active_agents must not be negative (0: no bound), got {max_active_agents}"
        )
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}; got {checkpoint!r}")


def _inherited(parent: _Frame) -> tuple[float | None, tuple[tuple[str, str], ...]] | None:
    """What a send made by a running handler inherits: its deadline and call chain.

    None when the handler has finished (a task it spawned is sending later).
    """
    if isinstance(parent, _Call):
        if parent.state != _RUNNING:
            return None
        return parent.deadline, parent.blocked_chain()
    handling, publication = parent
    if handling.busy is not publication and not handling.reentrant:
        return None
    return None, () if handling.reentrant else (handling.key,)


def nested_call() -> tuple[float | None, tuple[tuple[str, str], ...]]:
    """The deadline (loop time) and call chain a send made now inherits, if any."""
    parent = current_call.get()
    inherited = _inherited(parent) if parent is not None else None
    return inherited if inherited is not None else (None, _NO_CHAIN)


def _cancel_call(call: _Call) -> Callable[[], None]:
    def cancel() -> None:
        call.stop(Cancelled("the call was cancelled through its cancellation token"))

    return cancel
