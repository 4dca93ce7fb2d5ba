"""W3C trace context in message metadata, and the span of a message whose trace is not sampled.

Shared by the tracing interceptor and the direct span path; both read and
write `traceparent`/`tracestate` as strings and parse them only when a span
context is needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_W3C = TraceContextTextMapPropagator()

TRACE_FLAGS = tuple(TraceFlags(flags) for flags in range(256))
"""Every TraceFlags value, made once: the SDK makes one per span context."""
_FLAGS_HEX = tuple(f"{flags:02x}" for flags in range(256))
_TRACE_ID_MAX = (1 << 128) - 1
_SPAN_ID_MAX = (1 << 64) - 1
_new_tuple = tuple.__new__
_VERSION_00 = re.compile(r"00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})")
"""A valid version-00 traceparent: lowercase hex, non-zero ids; its ids and flags."""


def span_context(
    trace_id: int, span_id: int, is_remote: bool, flags: TraceFlags, state: TraceState
) -> SpanContext:
    """The SpanContext that `SpanContext(...)` makes, without its Python-level constructor.

    A SpanContext is the tuple (trace_id, span_id, is_remote, trace_flags,
    trace_state, is_valid), and every traced message makes two or three:
    built as that tuple, one costs a third as much (tests/unit/test_telemetry.py
    pins the layout against the API's constructor).
    """
    valid = 0 < trace_id <= _TRACE_ID_MAX and 0 < span_id <= _SPAN_ID_MAX
    return _new_tuple(SpanContext, (trace_id, span_id, is_remote, flags, state, valid))


def well_formed(traceparent: str) -> bool:
    """Whether a traceparent is a valid version-00 one (lowercase hex, non-zero ids).

    Enough to pass an unsampled context on unchanged, without parsing it.
    """
    return _VERSION_00.fullmatch(traceparent) is not None


def extract(metadata: Mapping[str, str]) -> otel_context.Context:
    """The context a message's W3C headers carry (the propagator's, for less common forms)."""
    found = remote_parent(metadata)
    if not found.is_valid:
        return otel_context.Context()
    return trace.set_span_in_context(NonRecordingSpan(found), otel_context.Context())


def remote_parent(metadata: Mapping[str, str]) -> SpanContext:
    """The span context a message's W3C headers carry; invalid when they carry none.

    What `extract` finds, without the context object around it: the parent of
    a span made for the message.
    """
    found = _VERSION_00.fullmatch(metadata.get(TRACEPARENT, ""))
    if found is None:
        # Other versions, and invalid headers: the propagator's answer.
        return trace.get_current_span(_W3C.extract(metadata)).get_span_context()
    tracestate = metadata.get(TRACESTATE)
    return span_context(
        int(found[1], 16),
        int(found[2], 16),
        True,
        TRACE_FLAGS[int(found[3], 16)],
        TraceState.from_header([tracestate]) if tracestate else DEFAULT_TRACE_STATE,
    )


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """A version-00 traceparent."""
    return traceparent_of_ids(trace_id << 64 | span_id, flags)


def traceparent_of_ids(ids: int, flags: int) -> str:
    """A version-00 traceparent of both ids in one int: the trace id's bits, then the span id's."""
    # Hex from bytes: a quarter of the cost of formatting the two ints.
    text = ids.to_bytes(24).hex()
    return f"00-{text[:32]}-{text[32:]}-{_FLAGS_HEX[flags]}"


def carrier_of(context: SpanContext) -> dict[str, str]:
    """The W3C headers of a span context."""
    # Read as the tuple it is (see `span_context`), without a property call per field.
    trace_id, span_id, _, flags, state, _ = context
    carrier = {TRACEPARENT: traceparent_of_ids(trace_id << 64 | span_id, flags)}
    if state is not DEFAULT_TRACE_STATE and state:
        carrier[TRACESTATE] = state.to_header()
    return carrier


def put(carrier: Mapping[str, str], metadata: MutableMapping[str, str]) -> None:
    """Replace the trace context in `metadata` by `carrier`'s."""
    if TRACESTATE not in carrier:
        metadata.pop(TRACESTATE, None)
    metadata.update(carrier)


class Passthrough(NonRecordingSpan):
    """The span of an unsampled message: the headers it came with.

    Its span context is parsed from them only if something asks for it (user
    code, an SDK span made under it); ravi's own hooks read the headers.
    """

    def __init__(self, carrier: dict[str, str]) -> None:
        # NonRecordingSpan's own __init__ only stores the context, parsed on demand here.
        self._context: SpanContext | None = None  # type: ignore[assignment]
        self.carrier = carrier

    def get_span_context(self) -> SpanContext:
        found = self._context
        if found is None:
            found = self._context = trace.get_current_span(extract(self.carrier)).get_span_context()
        return found
