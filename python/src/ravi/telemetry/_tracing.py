"""Tracing and metrics interceptors (the conventions of docs/operations.md).

Both are built to be left on (docs/performance.md, "The cost of tracing"):

- A message whose trace is not sampled makes no span: its hooks carry the
  `traceparent` it came with on to the sends it causes, and a handler running
  where that trace is current already (a send handled in the caller's task)
  attaches nothing. Only where the trace enters a task (a message from another
  node, a mailbox worker) is a non-recording span attached, so that user code
  and nested sends see it. Inside such a trace, a send and a call handled in
  its caller's task take `_quick_send` and `_quick_handle` (see
  ravi._interceptors): no hook input is built for them.
- A sampled message makes its spans through the SDK, with their attributes set
  once the span is known to record.
- Metrics count in the process and report on collection (observable counters);
  handler durations are recorded for the messages whose trace is sampled, or
  that are not traced at all.

These fast paths apply when the tracer provider's sampler drops every child of
an unsampled parent, as the parent-based samplers (the SDK's default, and
`parentbased_*` in OTEL_TRACES_SAMPLER) do; with any other sampler, or no SDK,
every message goes through the SDK's own decision.
"""

from __future__ import annotations

import contextvars
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from typing import Any

import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation import _SPAN_KEY

from ravi._context import MessageContext
from ravi._host import _Call, _Publication
from ravi._ids import AgentId
from ravi._interceptors import (
    ActivateInput,
    ForwardInput,
    HandleInput,
    Interceptor,
    PassivateInput,
    PublishInput,
    SendInput,
)
from ravi._mesh.codec import UNARY_RPCS
from ravi._serialization import registry
from ravi.errors import RaviError, code_of
from ravi.telemetry import _durations
from ravi.telemetry._spans import SCOPE, SdkSpans, Spans
from ravi.telemetry._w3c import (
    TRACEPARENT,
    TRACESTATE,
    Passthrough,
    carrier_of,
    extract,
    put,
    remote_parent,
    well_formed,
)

LANGUAGE = "python"
_UNSAMPLED_FLAGS = frozenset("02468ace")
"""The last hex digit of a traceparent whose sampled bit is clear."""
_SHARED_LIMIT = 4096
"""Sets of shared span attributes kept (one per operation, agent type, message type)."""


def _context_variable() -> ContextVar[otel_context.Context] | None:
    """The ContextVar behind OpenTelemetry's default (contextvars) runtime context, if in use.

    Getting and setting it directly saves the API's Python layers around it,
    on every message.
    """
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if isinstance(runtime, ContextVarsRuntimeContext) and isinstance(variable, ContextVar):
        return variable
    return None


_VARIABLE = _context_variable()
_get_current: Callable[[], Mapping[str, Any]] = (
    _VARIABLE.get if _VARIABLE is not None else otel_context.get_current
)
_EMPTY = contextvars.Context().run(_get_current)
"""The context of a task that has none of its own (a new task, a mailbox worker)."""


def _set_current(context: otel_context.Context) -> object:
    if _VARIABLE is None:
        return otel_context.attach(context)
    return _VARIABLE.set(context)


def _enter(span: Span) -> object:
    """Make `span` current; returns what `_leave` restores."""
    if _VARIABLE is None:
        return otel_context.attach(trace.set_span_in_context(span))
    return _VARIABLE.set(otel_context.Context({**_VARIABLE.get(), _SPAN_KEY: span}))


def _leave(token: Any) -> None:
    if _VARIABLE is None:
        otel_context.detach(token)
    else:
        _VARIABLE.reset(token)


_NO_SPAN = trace.INVALID_SPAN


def _carry(span: Span | str, metadata: dict[str, str]) -> Span | None:
    """Put the context a message travels in into its metadata; the span, if it records."""
    if isinstance(span, str):
        # A root the sampler drops: only its traceparent travels.
        metadata.pop(TRACESTATE, None)
        metadata[TRACEPARENT] = span
        return None
    if type(span) is Passthrough:
        put(span.carrier, metadata)
        return None
    found = span.get_span_context()
    if not span.is_recording():
        if found.is_valid:
            put(carrier_of(found), metadata)
        return None
    put(carrier_of(found), metadata)
    return span


def _message_type(message: Any) -> str:
    try:
        return registry.type_name(type(message))
    except TypeError:
        return type(message).__qualname__


def _unary_rpc(details: Any) -> bool:
    """Whether a call (server or client details) is one of AgentService's unary RPCs."""
    method = details.method
    return (method.decode() if isinstance(method, bytes) else method) in UNARY_RPCS


def _unsampled(traceparent: str) -> bool:
    """Whether a version-00 traceparent says: not sampled (other forms take the full path)."""
    return len(traceparent) == 55 and traceparent[54] in _UNSAMPLED_FLAGS


def _drops_unsampled_children(provider: trace.TracerProvider) -> bool:
    """Whether the provider's sampler drops every span whose parent is not sampled.

    Asked of the sampler itself, for a local and a remote parent, so any sampler
    that behaves like the parent-based ones qualifies; a ratio sampler alone does
    not (it decides by trace id, whatever the parent said).
    """
    sampler = getattr(provider, "sampler", None)
    if not isinstance(sampler, Sampler):
        return False
    for remote in (False, True):
        parent = SpanContext(1, 1, is_remote=remote, trace_flags=TraceFlags(0))
        result = sampler.should_sample(
            trace.set_span_in_context(NonRecordingSpan(parent)), 1, "probe", SpanKind.INTERNAL
        )
        if result.decision is not Decision.DROP:
            return False
    return True


class TracingInterceptor(Interceptor):
    """TracingInterceptor makes the spans of docs/operations.md and propagates their context.

    The `send` and `publish` spans inject W3C trace context into the message
    metadata; the `handle` and `deliver` spans take their parent from it (or,
    without it, from the current span: the RPC span of a unary call), so one
    request is one trace across nodes and languages. Samplers see the span name
    and kind; attributes are set once a span records (as the Go and Node
    members do).

    Args:
        node_id: this node's id, for the ravi.node.id attribute.
        tracer_provider: the provider to trace with (the global one when None).
    """

    def __init__(self, node_id: str, tracer_provider: trace.TracerProvider | None = None) -> None:
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._provider = provider
        self._spans: Spans = SdkSpans(provider)
        self._fast = _drops_unsampled_children(provider)
        self._common = {
            "messaging.system": "ravi",
            "ravi.node.id": node_id,
            "ravi.language": LANGUAGE,
        }
        self._shared: dict[tuple[str | None, ...], dict[str, str]] = {}
        self._metrics: MetricsInterceptor | None = None
        self._type_names: dict[type, str] = {}

    # --- RPC spans (GrpcRuntime installs these) -----------------------------

    def grpc_server_interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
        """OpenTelemetry's grpc.aio server interceptor, for AgentService's unary RPCs."""
        return [aio_server_interceptor(tracer_provider=self._provider, filter_=_unary_rpc)]  # type: ignore[no-untyped-call]

    def grpc_client_interceptors(self) -> Sequence[grpc.aio.ClientInterceptor]:
        """OpenTelemetry's grpc.aio client interceptor, for AgentService's unary RPCs.

        Only the unary-unary one: a channel without stream interceptors keeps
        its streams (the multiplexed calls, Subscribe) free of any wrapping.
        """
        unary: list[Any] = [
            interceptor
            for interceptor in aio_client_interceptors(  # type: ignore[no-untyped-call]
                tracer_provider=self._provider, filter_=_unary_rpc
            )
            if isinstance(interceptor, grpc.aio.UnaryUnaryClientInterceptor)
        ]
        return unary

    def rpc_trace_context(self) -> Mapping[str, str]:
        """The W3C headers of the current span (the RPC's, in a unary call), empty without one."""
        found = _get_current().get(_SPAN_KEY, _NO_SPAN).get_span_context()
        return carrier_of(found) if found.is_valid else {}

    def _direct(self, spans: Spans) -> None:
        """Make spans with `spans` (what `configure()` installs) instead of the SDK's tracer."""
        self._spans = spans

    def _count(self, metrics: MetricsInterceptor) -> None:
        """Count and time messages as `metrics` would, in this interceptor's own hooks.

        What `configure()` installs: one hook per message instead of two, the
        sampling decision made once, and no coroutine of metrics' own around a
        handler where tracing has one already.
        """
        self._metrics = metrics

    # --- agent lifecycles (counted, never traced) ---------------------------

    def activate(
        self, input: ActivateInput, next: Callable[[ActivateInput], Awaitable[None]]
    ) -> Awaitable[None]:
        if self._metrics is None:
            return next(input)
        return self._metrics.activate(input, next)

    def passivate(
        self, input: PassivateInput, next: Callable[[PassivateInput], Awaitable[None]]
    ) -> Awaitable[None]:
        if self._metrics is None:
            return next(input)
        return self._metrics.passivate(input, next)

    # --- the caller's side ------------------------------------------------

    def _quick_send(self, recipient: AgentId, metadata: dict[str, str]) -> bool:
        """All `send` does for a send from an unsampled handler: count it, carry its context on.

        False, with nothing done, for any other send (see ravi._interceptors).
        """
        if not self._fast:
            return False
        current = _get_current().get(_SPAN_KEY, _NO_SPAN)
        if type(current) is not Passthrough:
            return False
        metrics = self._metrics
        if metrics is not None:
            metrics._sent[recipient.type] += 1
        if metadata:
            put(current.carrier, metadata)
        else:
            metadata.update(current.carrier)
        return True

    def send(self, input: SendInput, next: Callable[[SendInput], Awaitable[Any]]) -> Awaitable[Any]:
        recipient = input.recipient
        if self._quick_send(recipient, input.metadata):
            return next(input)
        metrics = self._metrics
        if metrics is not None:
            metrics._sent[recipient.type] += 1
        span = self._start(f"send {recipient.type}", SpanKind.CLIENT, input.metadata)
        if span is None:
            return next(input)
        message_type = self._type_name(input.message)
        shared = self._shared.get(("send", recipient.type, message_type))
        if shared is None:
            shared = self._share(
                ("send", recipient.type, message_type),
                {
                    "messaging.operation.type": "send",
                    "messaging.destination.name": recipient.type,
                    "ravi.agent.type": recipient.type,
                    "ravi.message.type": message_type,
                },
            )
        self._spans.describe(
            span,
            shared,
            {"ravi.agent.key": recipient.key, "messaging.message.id": input.message_id},
        )
        return self._run(span, input, next)

    def publish(
        self, input: PublishInput, next: Callable[[PublishInput], Awaitable[None]]
    ) -> Awaitable[None]:
        topic = input.topic
        span = self._start(f"publish {topic.type}", SpanKind.PRODUCER, input.metadata)
        if span is None:
            return next(input)
        message_type = self._type_name(input.message)
        shared = self._shared.get(("publish", topic.type, message_type))
        if shared is None:
            shared = self._share(
                ("publish", topic.type, message_type),
                {
                    "messaging.operation.type": "publish",
                    "messaging.destination.name": topic.type,
                    "ravi.message.type": message_type,
                },
            )
        self._spans.describe(
            span,
            shared,
            {"ravi.topic.source": topic.source, "messaging.message.id": input.message_id},
        )
        return self._run(span, input, next)

    def _type_name(self, message: Any) -> str:
        found = self._type_names.get(type(message))
        if found is None:
            found = self._type_names[type(message)] = _message_type(message)
        return found

    def _share(self, key: tuple[str | None, ...], attributes: dict[str, str]) -> dict[str, str]:
        """The attributes many spans have in common, kept as one object (see `Spans.start`)."""
        if len(self._shared) >= _SHARED_LIMIT:
            self._shared.clear()
        shared = self._shared[key] = {**self._common, **attributes}
        return shared

    def _start(self, name: str, kind: SpanKind, metadata: dict[str, str]) -> Span | None:
        """The recording span of a send or publish; None when it does not record.

        Either way the metadata carries the context the message travels in.
        """
        current = _get_current().get(_SPAN_KEY, _NO_SPAN)
        span: Span | str
        if current is _NO_SPAN and TRACEPARENT not in metadata:
            # From outside any trace (a client's loop of sends or publishes): a root.
            span = self._spans.root(name, kind)
        else:
            if self._fast:
                if type(current) is Passthrough:
                    put(current.carrier, metadata)
                    return None
                found = current.get_span_context()
                if found.is_valid and not found.trace_flags.sampled:
                    put(carrier_of(found), metadata)
                    return None
            if current.get_span_context().is_valid:
                span = self._spans.start(name, kind, None)
            elif TRACEPARENT in metadata:
                # No current span: a traceparent the caller put in the metadata parents it.
                span = self._spans.start(name, kind, extract(metadata))
            else:
                span = self._spans.root(name, kind)
        return _carry(span, metadata)

    # --- the handler's side -----------------------------------------------

    def _within(self, traceparent: str | None) -> bool:
        """Whether a message runs in the unsampled trace current here already: nothing to attach."""
        current = _get_current().get(_SPAN_KEY, _NO_SPAN)
        if type(current) is Passthrough and current.carrier[TRACEPARENT] == traceparent:
            return True
        if traceparent is None:
            found = current.get_span_context()
            return found.is_valid and not found.trace_flags.sampled
        return False

    def _quick_handle(self, agent_id: AgentId, ctx: MessageContext) -> bool | Token[Any]:
        """All `handle` does for a message of an unsampled trace: enter the trace, count it.

        True when the message runs within its trace already (a send handled in
        its caller's task); a token for the host to reset after the handler
        when this entered the trace (a message from another node, a mailbox
        worker's). The host counts a failure with the counter set on the
        message, so nothing wraps the handler. False, with nothing done, for
        any other message (see ravi._interceptors).
        """
        if not self._fast or (type(ctx) is not _Call and type(ctx) is not _Publication):
            return False
        # `_within`, `_unsampled` and `handle`'s checks, inline: this runs for
        # every message of an unsampled trace (docs/performance.md).
        metadata = ctx._metadata
        traceparent = metadata.get(TRACEPARENT) if metadata else None
        if traceparent is not None and (
            len(traceparent) != 55 or traceparent[54] not in _UNSAMPLED_FLAGS
        ):
            # `_unsampled`, inline. A sampled message makes its span, and other
            # forms take the full path (the trace a task entered is never
            # sampled: a sampled one has its span current, not its headers).
            return False
        base = _get_current()
        current = base.get(_SPAN_KEY, _NO_SPAN)
        entered: bool | Token[Any] = True
        if type(current) is Passthrough and current.carrier[TRACEPARENT] == traceparent:
            pass
        elif traceparent is None:
            if not self._within(None):
                return False
        elif _VARIABLE is not None and well_formed(traceparent):
            entered = _VARIABLE.set(self._unsampled_context(ctx, traceparent, base))
        else:
            return False
        metrics = self._metrics
        if metrics is not None:
            metrics._handled[agent_id.type] += 1
            ctx.failure_counter = metrics._count_failure
        return entered

    def handle(
        self, input: HandleInput, next: Callable[[HandleInput], Awaitable[Any]]
    ) -> Awaitable[Any]:
        ctx = input.ctx
        metadata = ctx.metadata
        traceparent = metadata.get(TRACEPARENT)
        metrics = self._metrics
        if metrics is not None:
            metrics._handled[input.agent_id.type] += 1
        if self._fast and (traceparent is None or _unsampled(traceparent)):
            if self._within(traceparent):
                if metrics is None:
                    return next(input)
                if type(ctx) is _Call:
                    # Counted by the host, as on the quick path: no wrapper.
                    ctx.failure_counter = metrics._count_failure
                    return next(input)
                return metrics._counted(input.agent_id.type, next(input))
            if traceparent is not None and well_formed(traceparent):
                return self._unsampled(traceparent, input, next)
        return self._handled(input, next)

    def _unsampled_context(
        self, ctx: MessageContext, traceparent: str, base: Mapping[str, Any]
    ) -> otel_context.Context:
        """The context a message of an unsampled trace runs in: its trace, no span made.

        `base` is the context current where it runs.
        """
        # The deliveries of one publication to mailbox workers (tasks with no
        # context of their own) share the context the first one entered.
        publication = ctx if type(ctx) is _Publication and base is _EMPTY else None
        if publication is not None and publication.trace_context is not None:
            shared: otel_context.Context = publication.trace_context
            return shared
        carrier = {TRACEPARENT: traceparent}
        tracestate = ctx.metadata.get(TRACESTATE)
        if tracestate is not None:
            carrier[TRACESTATE] = tracestate
        context = otel_context.Context({**base, _SPAN_KEY: Passthrough(carrier)})
        if publication is not None:
            publication.trace_context = context
        return context

    async def _unsampled(
        self,
        traceparent: str,
        input: HandleInput,
        next: Callable[[HandleInput], Awaitable[Any]],
    ) -> Any:
        token = _set_current(self._unsampled_context(input.ctx, traceparent, _get_current()))
        try:
            return await next(input)
        except Exception as error:
            if self._metrics is not None:
                self._metrics._failure(input.agent_id.type, error)
            raise
        finally:
            _leave(token)

    async def _handled(
        self, input: HandleInput, next: Callable[[HandleInput], Awaitable[Any]]
    ) -> Any:
        ctx = input.ctx
        metadata = ctx.metadata
        agent_type = input.agent_id.type
        topic = ctx.topic
        spans = self._spans
        traceparent = metadata.get(TRACEPARENT)
        if traceparent is not None:
            parent = remote_parent(metadata)
            if topic is None:
                span = spans.child(f"handle {agent_type}", SpanKind.SERVER, parent)
            else:
                span = spans.child(
                    f"deliver {agent_type}",
                    SpanKind.CONSUMER,
                    parent,
                    [Link(parent)] if parent.is_valid else None,
                )
        elif topic is None:
            span = spans.start(f"handle {agent_type}", SpanKind.SERVER, None)
        else:
            published = trace.get_current_span().get_span_context()
            span = spans.start(
                f"deliver {agent_type}",
                SpanKind.CONSUMER,
                None,
                [Link(published)] if published.is_valid else None,
            )
        if span.is_recording():
            self._describe(span, input)
        # What `_run` and the metrics' own timing would do, in this one
        # coroutine: a traced message on the handling node is the mesh's
        # busiest path (docs/performance.md, "The cost of tracing").
        metrics = self._metrics
        durations = None
        if metrics is not None and not (traceparent is not None and _unsampled(traceparent)):
            durations = metrics._durations
        token = _enter(span)
        started = time.perf_counter()
        try:
            return await next(input)
        except Exception as error:
            if span.is_recording():
                _record_failure(span, error)
            if metrics is not None:
                metrics._failure(agent_type, error)
            raise
        finally:
            if durations is not None:
                durations.record(agent_type, time.perf_counter() - started)
            _leave(token)
            span.end()

    def _describe(self, span: Span, input: HandleInput) -> None:
        """Set the attributes of a recording `handle` or `deliver` span."""
        ctx = input.ctx
        agent_type = input.agent_id.type
        topic = ctx.topic
        topic_type = topic.type if topic is not None else None
        message_type = self._type_name(input.message)
        shared = self._shared.get(("process", agent_type, message_type, topic_type))
        if shared is None:
            common = {
                "messaging.operation.type": "process",
                "ravi.agent.type": agent_type,
                "ravi.message.type": message_type,
            }
            if topic_type is not None:
                common["ravi.topic.type"] = topic_type
            shared = self._share(("process", agent_type, message_type, topic_type), common)
        attributes = {
            "ravi.agent.key": input.agent_id.key,
            "messaging.message.id": ctx.message_id,
        }
        if ctx.sender is not None:
            attributes["ravi.sender"] = str(ctx.sender)
        if topic is not None:
            attributes["ravi.topic.source"] = topic.source
        self._spans.describe(span, shared, attributes)

    # --- a node passing a send on -----------------------------------------

    def forward(
        self, input: ForwardInput, next: Callable[[ForwardInput], Awaitable[Any]]
    ) -> Awaitable[Any]:
        traceparent = input.metadata.get(TRACEPARENT)
        if self._fast and traceparent is not None and _unsampled(traceparent):
            return next(input)
        return self._forwarded(input, next)

    async def _forwarded(
        self, input: ForwardInput, next: Callable[[ForwardInput], Awaitable[Any]]
    ) -> Any:
        parent = extract(input.metadata) if TRACEPARENT in input.metadata else None
        agent_type = input.recipient.type
        span = self._spans.start(f"forward {agent_type}", SpanKind.INTERNAL, parent)
        if not span.is_recording():
            return await next(input)
        shared = self._shared.get(("forward", agent_type))
        if shared is None:
            shared = self._share(("forward", agent_type), {"ravi.agent.type": agent_type})
        self._spans.describe(
            span,
            shared,
            {"ravi.agent.key": input.recipient.key, "ravi.route.hop_count": input.hop_count},
        )
        result = await self._run(span, input, next)
        if input.next_node:
            span.set_attribute("ravi.route.next_node", input.next_node)
        return result

    # --- spans --------------------------------------------------------------

    async def _run(self, span: Span, input: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        """Await `next(input)` with `span` current; end it, marked failed if that raised."""
        token = _enter(span)
        try:
            return await next(input)
        except Exception as error:
            if span.is_recording():
                _record_failure(span, error)
            raise
        finally:
            _leave(token)
            span.end()


def _record_failure(span: Span, error: Exception) -> None:
    span.record_exception(error)
    span.set_attribute("ravi.error.code", code_of(error).name)
    # A handler's own exception becomes HANDLER_FAILED for its caller.
    reason = error.reason if isinstance(error, RaviError) else "HANDLER_FAILED"
    if reason:
        span.set_attribute("ravi.error.reason", reason)
    span.set_status(Status(StatusCode.ERROR, str(error)))


class MetricsInterceptor(Interceptor):
    """MetricsInterceptor counts messages and agent lifecycles, and times handlers and activations.

    Counts are kept in the process and reported when the metrics are collected
    (observable counters: the same cumulative sums, without the SDK's cost per
    message). Handler durations are recorded for messages whose trace is
    sampled or that carry no trace context, so with sampling the histogram is a
    sample of the durations (docs/operations.md, "Metrics").

    Args:
        meter_provider: the provider to record with (the global one when None).
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        counts = _COUNTS.get(provider)
        if counts is None:
            counts = _COUNTS[provider] = _Counts(provider.get_meter(SCOPE))
        # Interceptors on one provider share the counts, as they would share
        # synchronous counters: an observable instrument is registered once.
        self._sent = counts.sent
        self._handled = counts.handled
        self._failed = counts.failed
        self._durations = counts.durations
        self._activated = counts.activated
        self._passivated = counts.passivated
        self._activation = counts.activation
        self._count_failure = self._failure

    def send(self, input: SendInput, next: Callable[[SendInput], Awaitable[Any]]) -> Awaitable[Any]:
        self._sent[input.recipient.type] += 1
        return next(input)

    def handle(
        self, input: HandleInput, next: Callable[[HandleInput], Awaitable[Any]]
    ) -> Awaitable[Any]:
        agent_type = input.agent_id.type
        self._handled[agent_type] += 1
        traceparent = input.ctx.metadata.get(TRACEPARENT)
        if traceparent is not None and _unsampled(traceparent):
            return self._counted(agent_type, next(input))
        return self._timed(agent_type, next(input))

    async def _counted(self, agent_type: str, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except Exception as error:
            self._failure(agent_type, error)
            raise

    async def _timed(self, agent_type: str, work: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await work
        except Exception as error:
            self._failure(agent_type, error)
            raise
        finally:
            self._durations.record(agent_type, time.perf_counter() - started)

    def _failure(self, agent_type: str, error: Exception) -> None:
        key = (agent_type, code_of(error).name)
        self._failed[key] = self._failed.get(key, 0) + 1

    async def activate(
        self, input: ActivateInput, next: Callable[[ActivateInput], Awaitable[None]]
    ) -> None:
        attributes = {"ravi.agent.type": input.agent_id.type}
        started = time.perf_counter()
        await next(input)
        self._activation.record(time.perf_counter() - started, attributes)
        self._activated.add(1, attributes)

    async def passivate(
        self, input: PassivateInput, next: Callable[[PassivateInput], Awaitable[None]]
    ) -> None:
        await next(input)
        self._passivated.add(
            1, {"ravi.agent.type": input.agent_id.type, "ravi.passivation.reason": input.reason}
        )


class _HistogramDurations:
    """Handler durations recorded with the SDK's histogram instrument."""

    def __init__(self, meter: metrics.Meter) -> None:
        self._histogram = meter.create_histogram(
            _durations.NAME, unit=_durations.UNIT, description=_durations.DESCRIPTION
        )
        self._attributes: dict[str, dict[str, str]] = {}

    def record(self, agent_type: str, seconds: float) -> None:
        attributes = self._attributes.get(agent_type)
        if attributes is None:
            attributes = self._attributes[agent_type] = {"ravi.agent.type": agent_type}
        self._histogram.record(seconds, attributes)


def _count_durations(provider: metrics.MeterProvider, counted: _durations.Durations) -> None:
    """Count the handler durations of interceptors on `provider` in `counted`.

    For `configure()`, whose metric reader reports them (ravi/telemetry/_durations.py).
    """
    _COUNTS[provider] = _Counts(provider.get_meter(SCOPE), counted)


class _Counts:
    """The messages counted for one meter provider, and the instruments reporting them."""

    def __init__(self, meter: metrics.Meter, counted: _durations.Durations | None = None) -> None:
        # Counted with `+= 1`: a defaultdict's missing key costs no method call on a hit.
        self.sent: defaultdict[str, int] = defaultdict(int)
        self.handled: defaultdict[str, int] = defaultdict(int)
        self.failed: dict[tuple[str, str], int] = {}
        meter.create_observable_counter(
            "ravi.messages.sent", [self._observe_sent], description="sends made here"
        )
        meter.create_observable_counter(
            "ravi.messages.handled",
            [self._observe_handled],
            description="messages this node's agents handled",
        )
        meter.create_observable_counter(
            "ravi.messages.failed",
            [self._observe_failed],
            description="handled messages whose handler failed",
        )
        self.durations = _HistogramDurations(meter) if counted is None else counted
        # Activations and passivations are rare next to messages: the SDK's
        # synchronous instruments cost nothing that matters there.
        self.activated = meter.create_counter(
            "ravi.agents.activated", description="agent instances activated here"
        )
        self.passivated = meter.create_counter(
            "ravi.agents.passivated",
            description="agent instances passivated here, by reason (idle, capacity, moved, stop)",
        )
        self.activation = meter.create_histogram(
            "ravi.agent.activation.duration",
            unit="s",
            description="how long activating an instance took, its state load included",
        )

    def _observe_sent(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"ravi.agent.type": t}) for t, n in self.sent.copy().items()]

    def _observe_handled(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"ravi.agent.type": t}) for t, n in self.handled.copy().items()]

    def _observe_failed(self, _options: CallbackOptions) -> list[Observation]:
        return [
            Observation(n, {"ravi.agent.type": t, "ravi.error.code": code})
            for (t, code), n in self.failed.copy().items()
        ]


_COUNTS: weakref.WeakKeyDictionary[metrics.MeterProvider, _Counts] = weakref.WeakKeyDictionary()
