"""ravi's OTLP encoding writes the same ExportTraceServiceRequest as the SDK's encoder."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
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

from ravi.telemetry._otlp import (
    ENCODE_BATCH,
    EncodedSpan,
    EncodingSpanProcessor,
    OtlpSpanExporter,
    SpanEncoder,
)
from ravi.telemetry._spans import DirectSpans, RaviSpan

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


RESOURCE = Resource.create({"service.name": "n"})
RAVI = InstrumentationScope("ravi")
CONTEXT = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1))


def ravi_span(
    name: str, kind: SpanKind, attributes: dict[str, object], links: list[Link]
) -> RaviSpan:
    """A span of `CONTEXT`, child of `REMOTE`, never ended through its spans here."""
    return RaviSpan(None, name, CONTEXT, REMOTE, kind, attributes, links)  # type: ignore[arg-type]


def assert_encodes_as_sdk(span: RaviSpan, **fields: Any) -> None:
    """`span`, ended, encodes as the SDK's span of the same name, ids, kind, times and `fields`."""
    span.end_time = span.start_time + 1000
    sdk = ReadableSpan(
        name=span.name,
        context=CONTEXT,
        parent=REMOTE,
        resource=RESOURCE,
        kind=span.kind,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=RAVI,
        **fields,
    )
    encoder = SpanEncoder()
    for _ in range(2):  # written, then from what the encoder kept
        ours = encoder.request([EncodedSpan(RESOURCE, RAVI, encoder.span(span))])  # type: ignore[arg-type]
        assert ExportTraceServiceRequest.FromString(ours) == encode_spans([sdk])


def test_a_ravi_span_encodes_as_the_sdk_span_with_the_same_fields() -> None:
    span = ravi_span(
        "send echo",
        SpanKind.CLIENT,
        {"messaging.system": "ravi", "ravi.agent.type": "echo"},
        [Link(REMOTE)],
    )
    span.set_attribute("ravi.route.hop_count", 2)
    span.add_event("note", {"k": "v"}, timestamp=5)
    span.set_status(StatusCode.ERROR, "bad")
    assert_encodes_as_sdk(
        span,
        attributes={
            "messaging.system": "ravi",
            "ravi.agent.type": "echo",
            "ravi.route.hop_count": 2,
        },
        events=[Event("note", {"k": "v"}, 5)],
        links=[Link(REMOTE)],
        status=Status(StatusCode.ERROR, "bad"),
    )


class _Held(OtlpSpanExporter):
    """Keeps what it is asked to export; holds the first export until released."""

    def __init__(self) -> None:
        super().__init__(endpoint="http://127.0.0.1:1", insecure=True)
        self.exported: list[object] = []
        self.exporting = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[object]) -> SpanExportResult:  # type: ignore[override]
        self.exporting.set()
        assert self.release.wait(10)
        self.exported += spans
        return SpanExportResult.SUCCESS


def test_direct_spans_are_batched_and_a_full_queue_drops_as_the_sdk_does(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    exporter = _Held()
    processor = EncodingSpanProcessor(exporter, max_queue_size=4)
    provider = TracerProvider()
    spans = DirectSpans(provider, processor)

    def end_one() -> None:
        spans.root("handle echo", SpanKind.SERVER).end()

    end_one()
    end_one()  # a batch: encoded, and the export thread takes both and waits in export
    assert exporter.exporting.wait(10)
    for _ in range(6):  # the queue holds 4: two are dropped, with the SDK's warning
        end_one()
    assert "Queue full" in caplog.text
    exporter.release.set()
    processor.shutdown()
    assert len(exporter.exported) == 6
    assert all(isinstance(item, bytes) for item in exporter.exported)
    end_one()  # after shutdown: ignored, as the SDK ignores it
    assert len(exporter.exported) == 6


class _Kept(OtlpSpanExporter):
    """Keeps what it is asked to export."""

    def __init__(self) -> None:
        super().__init__(endpoint="http://127.0.0.1:1", insecure=True)
        self.exported: list[object] = []
        self.exports = threading.Event()

    def export(self, spans: Sequence[object]) -> SpanExportResult:  # type: ignore[override]
        self.exported += spans
        self.exports.set()
        return SpanExportResult.SUCCESS


def test_direct_spans_are_encoded_a_batch_at_a_time_on_the_thread_that_ends_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    exporter = _Kept()
    encoding = threading.get_ident()
    threads: set[int] = set()
    encode = exporter.encoder.span

    def noted(span: Any) -> bytes:
        threads.add(threading.get_ident())
        return encode(span)

    monkeypatch.setattr(exporter.encoder, "span", noted)
    processor = EncodingSpanProcessor(exporter)
    spans = DirectSpans(TracerProvider(), processor)
    for _ in range(ENCODE_BATCH - 1):
        spans.root("handle echo", SpanKind.SERVER).end()
    assert not threads, "a span was encoded before a batch of them had ended"
    spans.root("handle echo", SpanKind.SERVER).end()
    assert threads == {encoding}
    assert len(processor._batch_processor._queue) == ENCODE_BATCH
    processor.shutdown()
    assert len(exporter.exported) == ENCODE_BATCH


@pytest.mark.parametrize("how", ["timer", "force_flush", "shutdown"])
def test_direct_spans_short_of_a_batch_are_exported_all_the_same(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # A trickle of spans: fewer than ENCODE_BATCH ever end.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50" if how == "timer" else "60000")
    exporter = _Kept()
    processor = EncodingSpanProcessor(exporter)
    spans = DirectSpans(TracerProvider(), processor)
    for _ in range(3):
        spans.root("handle echo", SpanKind.SERVER).end()
    if how == "timer":
        assert exporter.exports.wait(10), "the schedule delay passed and nothing was exported"
    elif how == "force_flush":
        assert processor.force_flush()
    processor.shutdown()
    assert len(exporter.exported) == 3
    assert all(isinstance(item, bytes) for item in exporter.exported)


def test_a_delivery_span_encodes_as_the_sdk_span_with_the_same_fields() -> None:
    # The common span, written by the short paths: attributes shared with other
    # spans and its own (a long unique one among them), a bare link, status unset.
    local = SpanContext(0x1234, 0x9ABC, is_remote=False, trace_flags=TraceFlags(1))
    shared = {"messaging.system": "ravi", "ravi.agent.type": "sub"}
    own = {"messaging.message.id": "m" * 200, "ravi.agent.key": "k", "ravi.topic.source": ""}
    span = ravi_span("deliver sub", SpanKind.CONSUMER, {}, [Link(REMOTE), Link(local)])
    span.shared = shared
    span.attributes = dict(own)
    assert_encodes_as_sdk(span, attributes={**shared, **own}, links=[Link(REMOTE), Link(local)])


def test_the_exporter_sends_the_requests_it_wrote_to_a_trace_service() -> None:
    received: list[ExportTraceServiceRequest] = []

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: ExportTraceServiceRequest, context: object) -> object:
            received.append(request)
            return ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        exporter = OtlpSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=10)
        spans = sdk_spans()
        resource, scope = spans[0].resource, spans[0].instrumentation_scope
        direct = [s for s in spans if (s.resource, s.instrumentation_scope) == (resource, scope)]
        exporter.direct = (resource, scope)
        # Spans queued as bytes by the direct path, then SDK spans of two resources.
        queued = [exporter.encoder.span(span) for span in direct]
        assert exporter.export(queued) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
    finally:
        server.stop(None)
    assert received == [encode_spans(direct), encode_spans(spans)]
