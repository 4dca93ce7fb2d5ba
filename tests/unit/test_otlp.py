"""ravi's OTLP encoding writes the same ExportTraceServiceRequest as the SDK's encoder."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from ravi.telemetry._otlp import EncodedSpan, SpanEncoder
from ravi.telemetry._spans import RaviSpan

REMOTE = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(1),
    trace_state=TraceState([("ravi", "x1"), ("other", "y")]),
)


def sdk_spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    providers = [
        TracerProvider(resource=Resource.create({"service.name": "a", "n": 1}, "https://s/1")),
        TracerProvider(resource=Resource.create({"service.name": "b"})),
    ]
    for provider in providers:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    first = providers[0].get_tracer("ravi")
    other = providers[0].get_tracer("other.scope", "1.2", schema_url="https://s/2")
    second = providers[1].get_tracer("ravi")
    with first.start_as_current_span(
        "handle echo",
        kind=SpanKind.SERVER,
        attributes={"s": "text", "b": True, "i": -7, "f": 1.5, "l": ["a", "b"], "n": [1, 2]},
    ) as outer:
        outer.add_event("something", {"k": "v", "big": 2**40})
        outer.record_exception(ValueError("boom"))
        outer.set_status(Status(StatusCode.ERROR, "it failed"))
        with other.start_as_current_span("inner", kind=SpanKind.CLIENT) as inner:
            inner.set_status(Status(StatusCode.OK))
    remote_parent = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    for kind in SpanKind:
        second.start_span(
            f"deliver {kind.name}",
            context=remote_parent,
            kind=kind,
            links=[Link(REMOTE, {"why": "published"}), Link(REMOTE)],
        ).end()
    return list(exporter.get_finished_spans())


def test_the_request_is_the_sdks_field_by_field() -> None:
    spans = sdk_spans()
    ours = ExportTraceServiceRequest.FromString(SpanEncoder().encode(spans))
    assert ours == encode_spans(spans)


def test_an_encoder_reused_across_batches_keeps_encoding_the_same() -> None:
    spans = sdk_spans()
    encoder = SpanEncoder()
    for _ in range(3):
        assert ExportTraceServiceRequest.FromString(encoder.encode(spans)) == encode_spans(spans)


def test_a_ravi_span_encodes_as_the_sdk_span_with_the_same_fields() -> None:
    resource = Resource.create({"service.name": "n"})
    scope = InstrumentationScope("ravi")
    context = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1))
    span = RaviSpan(
        None,  # type: ignore[arg-type]  # never ended through its spans here
        "send echo",
        context,
        REMOTE,
        SpanKind.CLIENT,
        {"messaging.system": "ravi", "ravi.agent.type": "echo"},
        [Link(REMOTE)],
    )
    span.set_attribute("ravi.route.hop_count", 2)
    span.add_event("note", {"k": "v"}, timestamp=5)
    span.set_status(StatusCode.ERROR, "bad")
    span.end_time = span.start_time + 1000
    sdk = ReadableSpan(
        name="send echo",
        context=context,
        parent=REMOTE,
        resource=resource,
        attributes={
            "messaging.system": "ravi",
            "ravi.agent.type": "echo",
            "ravi.route.hop_count": 2,
        },
        events=[Event("note", {"k": "v"}, 5)],
        links=[Link(REMOTE)],
        kind=SpanKind.CLIENT,
        status=Status(StatusCode.ERROR, "bad"),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=scope,
    )
    encoder = SpanEncoder()
    ours = encoder.request([EncodedSpan(resource, scope, encoder.span(span))])  # type: ignore[arg-type]
    assert ExportTraceServiceRequest.FromString(ours) == encode_spans([sdk])
