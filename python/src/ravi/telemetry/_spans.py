"""Where ravi's spans come from: the SDK's tracer, or a direct path to the OTLP exporter.

`SdkSpans` starts spans with any tracer provider's tracer. `DirectSpans` is what
`configure()` uses with the provider it built: the same sampler, id generator,
resource and batch processor, but a span of its own type (`RaviSpan`) that skips
what the SDK's span does for any caller (attribute validation under a lock,
span limits, a readable copy on end) and is encoded into OTLP bytes when it
ends. Measured, a traced round trip costs less than half of the SDK path
(docs/performance.md, "The cost of tracing"); spans of other instrumentation
and of user code still go through the SDK to the same exporter.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Event, TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util import types

from ravi.telemetry._otlp import UNSET_STATUS, EncodingSpanProcessor
from ravi.telemetry._w3c import (
    TRACE_FLAGS,
    TRACEPARENT,
    TRACESTATE,
    Passthrough,
    format_traceparent,
    span_context,
    traceparent_of_ids,
)

SCOPE = "ravi"

_SAMPLED_RANDOM = TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID
_NO_PARENT = trace.INVALID_SPAN_CONTEXT
_SPAN_ID_BITS = (1 << 64) - 1
_MAX_ATTRIBUTES = 128
"""The SDK's default attribute count limit, kept for attributes user code adds."""


class Spans(Protocol):
    """Spans starts spans for the tracing interceptor."""

    def start(
        self,
        name: str,
        kind: SpanKind,
        parent: otel_context.Context | None,
        links: Sequence[Link] | None = None,
    ) -> Span:
        """A span, recording or not, child of `parent` (of the current context when None)."""

    def child(
        self, name: str, kind: SpanKind, parent: SpanContext, links: Sequence[Link] | None = None
    ) -> Span:
        """A span, recording or not, child of the span context a message came with.

        A root when `parent` is invalid.
        """

    def root(self, name: str, kind: SpanKind) -> Span | str:
        """A span of a new trace: the caller found no current span and no parent to extract.

        Or only the traceparent of that trace, when the sampler drops it: no
        span is needed where nothing enters the trace (a client's send).
        """

    def describe(self, span: Span, shared: Mapping[str, str], own: dict[str, Any]) -> None:
        """Set the attributes of a recording span: `shared` with other spans, then its `own`.

        The caller keeps `shared` and never changes it, and hands `own` over.
        """


class SdkSpans:
    """SdkSpans starts spans with the SDK's (or any API) tracer."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self._tracer = provider.get_tracer(SCOPE)

    def start(
        self,
        name: str,
        kind: SpanKind,
        parent: otel_context.Context | None,
        links: Sequence[Link] | None = None,
    ) -> Span:
        return self._tracer.start_span(name, context=parent, kind=kind, links=links)

    def child(
        self, name: str, kind: SpanKind, parent: SpanContext, links: Sequence[Link] | None = None
    ) -> Span:
        return self._tracer.start_span(name, context=_context_of(parent), kind=kind, links=links)

    def root(self, name: str, kind: SpanKind) -> Span:
        return self._tracer.start_span(name, kind=kind)

    def describe(self, span: Span, shared: Mapping[str, str], own: dict[str, Any]) -> None:
        span.set_attributes(shared)
        span.set_attributes(own)


def _context_of(parent: SpanContext) -> otel_context.Context:
    """The context whose span is `parent`; empty (a root's) when it is invalid."""
    if not parent.is_valid:
        return otel_context.Context()
    return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())


def _root_ratio_bound(sampler: Sampler) -> int | None:
    """The bound below which a root is sampled, when roots are sampled by trace id ratio.

    So for `parentbased_traceidratio` and `traceidratio` (the recommended
    setting, docs/operations.md): a root that will not be sampled is known
    from its trace id alone. None for any other sampler, which is asked.
    """
    root = _root_of(sampler)
    return root.bound if type(root) is TraceIdRatioBased else None


def _root_of(sampler: Sampler) -> Sampler | None:
    """The sampler that decides a root: ParentBased's delegate, or the sampler itself."""
    return getattr(sampler, "_root", None) if isinstance(sampler, ParentBased) else sampler


def _keeps_sampled_children(sampler: Sampler) -> bool:
    """Whether the sampler samples every child of a sampled parent, with the parent's trace state.

    So for the parent-based samplers as OTEL_TRACES_SAMPLER builds them (the
    SDK's default among them): their delegates for a sampled parent, remote or
    local, are ALWAYS_ON, which decides just that.
    """
    return (
        isinstance(sampler, ParentBased)
        and getattr(sampler, "_remote_parent_sampled", None) is ALWAYS_ON
        and getattr(sampler, "_local_parent_sampled", None) is ALWAYS_ON
    )


class DirectSpans:
    """DirectSpans makes `RaviSpan`s for a provider whose only processor is `processor`."""

    def __init__(self, provider: TracerProvider, processor: EncodingSpanProcessor) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self._random = self._ids.is_trace_id_random()
        # The SDK's default generator draws its ids with random.getrandbits
        # (again while one is zero): drawn here directly, without its calls.
        self._bits = random.getrandbits if type(self._ids) is RandomIdGenerator else None
        self._dropped_flags = TraceFlags.RANDOM_TRACE_ID if self._random else TraceFlags.DEFAULT
        self._root_bound = _root_ratio_bound(self._sampler)
        self._keeps_children = _keeps_sampled_children(self._sampler)
        self._roots_always = _root_of(self._sampler) is ALWAYS_ON
        random_flag = TraceFlags.RANDOM_TRACE_ID if self._random else TraceFlags.DEFAULT
        self._root_flags = TRACE_FLAGS[TraceFlags.SAMPLED | random_flag]
        self._queue = processor.direct(provider.resource, InstrumentationScope(SCOPE))

    def start(
        self,
        name: str,
        kind: SpanKind,
        parent: otel_context.Context | None,
        links: Sequence[Link] | None = None,
    ) -> Span:
        found = trace.get_current_span(parent).get_span_context()
        return self._started(name, kind, links, found, parent)

    def child(
        self, name: str, kind: SpanKind, parent: SpanContext, links: Sequence[Link] | None = None
    ) -> Span:
        return self._started(name, kind, links, parent, parent)

    def _started(
        self,
        name: str,
        kind: SpanKind,
        links: Sequence[Link] | None,
        parent_context: SpanContext,
        asked: otel_context.Context | SpanContext | None,
    ) -> Span:
        # What the SDK's Tracer.start_span decides, in the same order. The
        # parent is read as the tuple it is (see `span_context`).
        trace_id, _, _, flags, state, valid = parent_context
        if valid:
            if flags & TraceFlags.SAMPLED and self._keeps_children:
                # A sampled parent under a parent-based sampler, the common
                # traced message: ALWAYS_ON's decision, the parent's trace
                # state, its random-trace-id flag, in one step.
                bits = self._bits
                span_id = (bits(64) if bits is not None else 0) or self._ids.generate_span_id()
                context = span_context(
                    trace_id,
                    span_id,
                    False,
                    TRACE_FLAGS[flags & _SAMPLED_RANDOM],
                    state,
                )
                return RaviSpan(
                    self, name, context, parent_context, kind, {}, list(links) if links else ()
                )
            random = flags.random_trace_id
        elif asked is None and not links:
            # A root with no context to ask the sampler about but the current one
            # (a message from a client that does not trace, handled here):
            # decided in one step, as a send from outside any trace is.
            made = self.root(name, kind)
            return Passthrough({TRACEPARENT: made}) if isinstance(made, str) else made
        else:
            trace_id = self._ids.generate_trace_id()
            random = self._random
        return self._sampled(name, kind, links, parent_context, trace_id, random, asked)

    def root(self, name: str, kind: SpanKind) -> Span | str:
        # Both ids in one draw: the trace id's 128 bits, then the span id's 64.
        bits = self._bits
        drawn = bits(192) if bits is not None else 0
        trace_id = drawn >> 64
        if not trace_id or not drawn & _SPAN_ID_BITS:
            # Another generator; or a zero id, which the SDK's draws again.
            trace_id = self._ids.generate_trace_id()
            drawn = 0
        bound = self._root_bound
        if bound is not None:
            if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= bound:
                # The ratio sampler's DROP, decided as it would (no attributes,
                # no trace state for a root) without its call and result objects.
                if not drawn:
                    drawn = trace_id << 64 | self._ids.generate_span_id()
                return traceparent_of_ids(drawn, self._dropped_flags)
        elif not self._roots_always:
            return self._sampled(name, kind, None, _NO_PARENT, trace_id, self._random, None)
        if drawn:
            # A sampled root: the ratio sampler's RECORD_AND_SAMPLE or
            # ALWAYS_ON's (no attributes, no trace state for a root), in one step.
            context = span_context(
                trace_id, drawn & _SPAN_ID_BITS, False, self._root_flags, DEFAULT_TRACE_STATE
            )
            return RaviSpan(self, name, context, None, kind, {}, ())
        return self._sampled(name, kind, None, _NO_PARENT, trace_id, self._random, None)

    def _sampled(  # noqa: PLR0917 - the two callers above, in order
        self,
        name: str,
        kind: SpanKind,
        links: Sequence[Link] | None,
        parent_context: SpanContext,
        trace_id: int,
        random: bool,
        asked: otel_context.Context | SpanContext | None,
    ) -> Span:
        """The span, as the sampler decides for a parent given as `asked`.

        `asked` is what the SDK's tracer would hand the sampler: the caller's
        context (None: the current one), or a span context that came with a
        message, made into a context only if the sampler is asked.
        """
        if parent_context.is_valid:
            always = self._keeps_children and parent_context.trace_flags.sampled
        else:
            always = self._roots_always
        if always:
            # ALWAYS_ON's decision, without its call and result objects.
            decision: Decision = Decision.RECORD_AND_SAMPLE
            trace_state: TraceState | None = (
                parent_context.trace_state if parent_context.is_valid else None
            )
            attributes: dict[str, Any] = {}
        else:
            if isinstance(asked, SpanContext):
                asked = _context_of(asked)
            result = self._sampler.should_sample(asked, trace_id, name, kind, None, links)
            decision, trace_state = result.decision, result.trace_state
            attributes = dict(result.attributes) if result.attributes else {}
        flags = TRACE_FLAGS[
            (TraceFlags.SAMPLED if decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT)
            | (TraceFlags.RANDOM_TRACE_ID if random else TraceFlags.DEFAULT)
        ]
        bits = self._bits
        # The default generator's draw, without its calls; it draws again on a zero.
        span_id = (bits(64) if bits is not None else 0) or self._ids.generate_span_id()
        if decision is Decision.DROP:
            # Unsampled: what travels on is the headers; a span context only if asked.
            carrier = {TRACEPARENT: format_traceparent(trace_id, span_id, flags)}
            if trace_state:
                carrier[TRACESTATE] = trace_state.to_header()
            return Passthrough(carrier)
        span_context = SpanContext(
            trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=trace_state
        )
        return RaviSpan(
            self,
            name,
            span_context,
            parent_context if parent_context.is_valid else None,
            kind,
            attributes,
            list(links) if links else (),
        )

    def describe(self, span: Span, shared: Mapping[str, str], own: dict[str, Any]) -> None:
        if type(span) is RaviSpan and span.shared is None and not span.attributes:
            # `shared` is encoded once for every span that shares it; `own`
            # becomes the span's, as set_attributes would leave it (both are
            # well under the attribute limit).
            span.shared = shared
            span.attributes = own
        else:
            span.set_attributes(shared)
            span.set_attributes(own)

    def ended(self, span: RaviSpan) -> None:
        self._queue(span)


class RaviSpan(Span):
    """RaviSpan is a recording span of ravi's own, encoded into OTLP when it ends.

    It has what the OTLP encoder reads from an SDK span (`ReadableSpan`'s
    names), and implements the whole span API for user code that finds it
    current.
    """

    __slots__ = (
        "_context",
        "_spans",
        "attributes",
        "end_time",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "shared",
        "start_time",
        "status",
    )

    dropped_attributes = 0
    dropped_events = 0
    dropped_links = 0

    def __init__(  # noqa: PLR0917 - built in one place
        self,
        spans: DirectSpans,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: list[Link] | tuple[()],
    ) -> None:
        self._spans = spans
        self.shared: Mapping[str, str] | None = None
        """Attributes this span shares with others (encoded once for all of them)."""
        self._context = context
        self.name = name
        self.parent = parent
        self.kind = kind
        self.attributes = attributes
        self.links = links
        # No lists until something is added: fewer objects per span.
        self.events: list[Event] | tuple[()] = ()
        self.status = UNSET_STATUS
        self.start_time = time.time_ns()
        self.end_time: int | None = None

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self.end_time is None:
            shared = self.shared
            if shared is not None and not shared.keys().isdisjoint(attributes):
                # An attribute shared with other spans changes on this one.
                self.attributes = {**shared, **self.attributes}
                self.shared = None
            own = self.attributes
            for key, value in attributes.items():
                if key in own or len(own) < _MAX_ATTRIBUTES:
                    own[key] = value

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        self.set_attributes({key: value})

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        if self.end_time is None:
            event = Event(name, attributes, timestamp or time.time_ns())
            self.events = [*self.events, event]

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.end_time is None and context.is_valid:
            self.links = [*self.links, Link(context, attributes)]

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, UNSET changes nothing.
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The event the SDK records (the semantic conventions' exception.*).
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        recorded: dict[str, types.AnyValue] = {
            "exception.type": f"{module}.{qualname}"
            if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time or time.time_ns()
        self._spans.ended(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_val is not None and self.is_recording():
            self.record_exception(exc_val, escaped=True)
            name = exc_type.__name__ if exc_type else ""
            self.set_status(Status(StatusCode.ERROR, f"{name}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)
