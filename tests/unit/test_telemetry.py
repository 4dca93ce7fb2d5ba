"""Tracing: the spans of docs/operations.md, their links, and their error attributes."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)

from ravi import (
    AgentId,
    BaseAgent,
    HandleInput,
    Interceptor,
    MessageContext,
    SendInput,
    TopicId,
    TypeSubscription,
    message_handler,
    message_type,
)
from ravi._interceptors import quick
from ravi.errors import HandlerFailed
from ravi.runtime import LocalRuntime
from ravi.telemetry import MetricsInterceptor, TracingInterceptor, configure
from ravi.telemetry._otlp import EncodingSpanProcessor, OtlpSpanExporter
from ravi.telemetry._spans import DirectSpans
from ravi.telemetry._w3c import Passthrough, remote_parent, span_context, well_formed


@message_type("telemetry.Ask")
@dataclass
class Ask:
    text: str


@message_type("telemetry.News")
@dataclass
class News:
    text: str


class Front(BaseAgent):
    @message_handler
    async def on_ask(self, message: Ask, ctx: MessageContext) -> str:
        await self.publish_message(News(message.text), TopicId("news", "t1"))
        return str(await self.send_message(Ask(message.text), AgentId("back", "b")))


class Back(BaseAgent):
    @message_handler
    async def on_ask(self, message: Ask, ctx: MessageContext) -> str:
        if message.text == "fail":
            raise ValueError("back failed")
        return f"back saw {message.text}"

    @message_handler
    async def on_news(self, message: News, ctx: MessageContext) -> None:
        return None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


async def run(exporter: InMemorySpanExporter, text: str) -> dict[str, ReadableSpan]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime = LocalRuntime(interceptors=[TracingInterceptor("node-t", provider)])
    await Front.register(runtime, "front")
    await Back.register(runtime, "back")
    await runtime.add_subscription(TypeSubscription("news", "back"))
    async with runtime:
        with contextlib.suppress(HandlerFailed):  # the failing case still has spans
            await runtime.send_message(Ask(text), AgentId("front", "f"))
        await runtime.stop_when_idle(timeout=5)
    return {span.name: span for span in exporter.get_finished_spans()}


async def test_spans_nest_send_handle_send_handle_in_one_trace(
    spans: InMemorySpanExporter,
) -> None:
    by_name = await run(spans, "hello")
    outer_send, outer_handle = by_name["send front"], by_name["handle front"]
    inner_send, inner_handle = by_name["send back"], by_name["handle back"]
    assert {s.context.trace_id for s in by_name.values()} == {outer_send.context.trace_id}
    assert outer_handle.parent is not None
    assert outer_handle.parent.span_id == outer_send.context.span_id
    assert inner_send.parent is not None
    assert inner_send.parent.span_id == outer_handle.context.span_id
    assert inner_handle.parent is not None
    assert inner_handle.parent.span_id == inner_send.context.span_id
    assert (outer_send.kind, outer_handle.kind) == (SpanKind.CLIENT, SpanKind.SERVER)
    assert outer_handle.attributes is not None
    assert outer_handle.attributes["ravi.agent.type"] == "front"
    assert outer_handle.attributes["ravi.message.type"] == "telemetry.Ask"
    assert outer_handle.attributes["ravi.node.id"] == "node-t"
    assert outer_handle.attributes["ravi.language"] == "python"


async def test_a_delivery_is_a_child_of_its_publish_and_links_to_it(
    spans: InMemorySpanExporter,
) -> None:
    by_name = await run(spans, "hello")
    publish, deliver = by_name["publish news"], by_name["deliver back"]
    assert (publish.kind, deliver.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert deliver.parent is not None
    assert deliver.parent.span_id == publish.context.span_id
    assert [link.context.span_id for link in deliver.links] == [publish.context.span_id]
    assert deliver.attributes is not None
    assert deliver.attributes["ravi.topic.source"] == "t1"


async def test_a_failing_handler_marks_its_spans_as_errors(spans: InMemorySpanExporter) -> None:
    by_name = await run(spans, "fail")
    failed = by_name["handle back"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["ravi.error.code"] == "UNKNOWN"
    assert failed.attributes["ravi.error.reason"] == "HANDLER_FAILED"
    assert any(event.name == "exception" for event in failed.events)
    assert by_name["send back"].status.status_code is StatusCode.ERROR


def test_nothing_is_installed_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    assert configure("node-x") is None
    installed = configure("node-x", endpoint="http://127.0.0.1:1")
    assert installed is not None
    # One interceptor traces and counts (TracingInterceptor._count).
    assert [type(i).__name__ for i in installed.interceptors] == ["TracingInterceptor"]
    installed.shutdown()


class Probe(BaseAgent):
    """Records what an unsampled handler sees, and makes a span of its own."""

    seen: ClassVar[list[tuple[str, int, bool]]] = []
    tracer: ClassVar[trace.Tracer] = trace.NoOpTracer()

    @message_handler
    async def on_ask(self, message: Ask, ctx: MessageContext) -> str:
        own = Probe.tracer.start_span("user span")
        own.end()
        Probe.seen.append(
            (ctx.metadata["traceparent"], own.get_span_context().trace_id, own.is_recording())
        )
        if message.text == "nested":
            await self.send_message(Ask("leaf"), AgentId("probe", "leaf"))
        return "ok"


def unsampled_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def test_an_unsampled_trace_makes_no_span_and_its_context_reaches_every_hop(
    spans: InMemorySpanExporter,
) -> None:
    provider = unsampled_provider(spans)
    Probe.tracer = provider.get_tracer("user code")
    Probe.seen.clear()
    runtime = LocalRuntime(interceptors=[TracingInterceptor("node-u", provider)])
    await Probe.register(runtime, "probe")
    async with runtime:
        await runtime.send_message(Ask("nested"), AgentId("probe", "root"))
    assert spans.get_finished_spans() == ()
    (outer, outer_trace, outer_recorded), (inner, inner_trace, inner_recorded) = Probe.seen
    # The nested send carries the same (unsampled) context; user spans under it
    # belong to that trace and are not recorded either: no orphan root traces.
    assert inner == outer
    assert outer[-2:] in {"00", "02"}
    assert outer_trace == inner_trace == int(outer[3:35], 16)
    assert not outer_recorded
    assert not inner_recorded


class Listener(BaseAgent):
    """Records the span current in its handler and the traceparent it was delivered with."""

    seen: ClassVar[list[tuple[str, trace.Span]]] = []

    @message_handler
    async def on_news(self, message: News, ctx: MessageContext) -> None:
        Listener.seen.append((ctx.metadata["traceparent"], trace.get_current_span()))


async def test_the_deliveries_of_an_unsampled_publication_run_in_its_trace(
    spans: InMemorySpanExporter,
) -> None:
    Listener.seen.clear()
    runtime = LocalRuntime(interceptors=[TracingInterceptor("node-u", unsampled_provider(spans))])
    for name in ("l1", "l2", "l3"):
        await Listener.register(runtime, name)
        await runtime.add_subscription(TypeSubscription("news", name))
    async with runtime:
        for _ in range(2):
            await runtime.publish_message(News("hi"), TopicId("news", "t"))
        await runtime.stop_when_idle(timeout=5)
    assert spans.get_finished_spans() == ()
    assert len(Listener.seen) == 6
    by_trace: dict[str, list[trace.Span]] = {}
    for traceparent, span in Listener.seen:
        by_trace.setdefault(traceparent, []).append(span)
    assert len(by_trace) == 2
    for traceparent, current in by_trace.items():
        # Each mailbox worker runs its delivery under the publication's context,
        # entered once and shared by the publication's three deliveries.
        assert len({id(span) for span in current}) == 1
        context = current[0].get_span_context()
        assert not current[0].is_recording()
        assert (context.trace_id, context.span_id) == (
            int(traceparent[3:35], 16),
            int(traceparent[36:52], 16),
        )


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", True),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02", True),
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-00", False),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-00", False),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-00", False),
        ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", False),
        ("00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-00", False),
        ("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-00", False),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-", False),
        ("", False),
    ],
)
def test_only_a_valid_version_00_traceparent_is_passed_on_unparsed(
    traceparent: str, expected: bool
) -> None:
    assert well_formed(traceparent) is expected


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [(0x1234, 0x5678), (0, 0x5678), (0x1234, 0), (1 << 128, 1), (1, 1 << 64), (-1, 1)],
)
@pytest.mark.parametrize("remote", [False, True])
def test_a_span_context_built_as_a_tuple_is_the_apis(
    trace_id: int, span_id: int, remote: bool
) -> None:
    # ravi builds span contexts, and reads them (carriers, the OTLP encoder),
    # as the API's tuple (trace_id, span_id, is_remote, trace_flags,
    # trace_state, is_valid): an API that changed the layout fails here.
    state = TraceState([("k", "v")])
    made = SpanContext(
        trace_id, span_id, is_remote=remote, trace_flags=TraceFlags(1), trace_state=state
    )
    built = span_context(trace_id, span_id, remote, TraceFlags(1), state)
    assert type(built) is SpanContext
    assert tuple(built) == tuple(made)
    assert tuple(made) == (trace_id, span_id, remote, TraceFlags(1), state, made.is_valid)
    fields = ("trace_id", "span_id", "is_remote", "trace_flags", "trace_state", "is_valid")
    assert [getattr(built, name) for name in fields] == [getattr(made, name) for name in fields]


def traced_and_counted(fused: bool, provider: TracerProvider, meters: MeterProvider) -> list[Any]:
    """Tracing and metrics as two interceptors, or as the one `configure()` installs."""
    tracing = TracingInterceptor("node-m", provider)
    if not fused:
        return [tracing, MetricsInterceptor(meters)]
    tracing._count(MetricsInterceptor(meters))
    return [tracing]


@pytest.mark.parametrize("fused", [False, True], ids=["two interceptors", "fused"])
async def test_metrics_count_every_message_and_time_the_sampled_ones(fused: bool) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    for sampled in (False, True):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0 if sampled else 0.0)))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        runtime = LocalRuntime(interceptors=traced_and_counted(fused, provider, meters))
        await Back.register(runtime, "back")
        async with runtime:
            for text in ("a", "b", "fail"):
                with contextlib.suppress(HandlerFailed):
                    await runtime.send_message(Ask(text), AgentId("back", "b"))
        points = {
            (metric.name, tuple(sorted(point.attributes.items()))): point
            for resource in reader.get_metrics_data().resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            for point in metric.data.data_points
        }
        back = (("ravi.agent.type", "back"),)
        # Counts accumulate over both runtimes (one provider): 3, then 6.
        runs = 2 if sampled else 1
        assert points[("ravi.messages.sent", back)].value == 3 * runs
        assert points[("ravi.messages.handled", back)].value == 3 * runs
        failed = (("ravi.agent.type", "back"), ("ravi.error.code", "UNKNOWN"))
        assert points[("ravi.messages.failed", failed)].value == runs
        timed = points.get(("ravi.handler.duration", back))
        assert (timed.count if timed else 0) == (3 if sampled else 0)


def message_counts(reader: InMemoryMetricReader) -> dict[tuple[str, Any], Any]:
    """The `ravi.messages.*` points read now, by metric name and attributes."""
    return {
        (metric.name, tuple(sorted(point.attributes.items()))): point.value
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name.startswith("ravi.messages.")
        for point in metric.data.data_points
    }


class Relay(BaseAgent):
    """Asks `back` from its own handler: a send handled in the caller's task."""

    @message_handler
    async def on_ask(self, message: Ask, ctx: MessageContext) -> str:
        try:
            return str(await self.send_message(Ask(message.text), AgentId("back", "b")))
        except HandlerFailed:
            return "back failed"


async def test_a_failure_inside_an_unsampled_trace_is_counted_once() -> None:
    # The nested send runs in the relay's task, under the relay's unsampled
    # trace: the hook lets it through unwrapped and the host counts its failure.
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    runtime = LocalRuntime(interceptors=traced_and_counted(True, provider, meters))
    await Relay.register(runtime, "relay")
    await Back.register(runtime, "back")
    async with runtime:
        assert await runtime.send_message(Ask("fail"), AgentId("relay", "r")) == "back failed"
        assert await runtime.send_message(Ask("fine"), AgentId("relay", "r")) == "back saw fine"
    counted = message_counts(reader)
    back = (("ravi.agent.type", "back"),)
    failed = (("ravi.agent.type", "back"), ("ravi.error.code", "UNKNOWN"))
    # The relay's own sends come from outside any trace; the nested ones take
    # the quick checks of ravi._interceptors, and are counted all the same.
    assert counted[("ravi.messages.sent", back)] == 2
    assert counted[("ravi.messages.handled", back)] == 2
    assert counted[("ravi.messages.failed", failed)] == 1
    assert [key for key in counted if key[0] == "ravi.messages.failed"] == [
        ("ravi.messages.failed", failed)
    ]


class Fragile(BaseAgent):
    """Fails on the news "fail", in a mailbox worker's task."""

    @message_handler
    async def on_news(self, message: News, ctx: MessageContext) -> None:
        if message.text == "fail":
            raise ValueError("fragile failed")
        Listener.seen.append((ctx.metadata["traceparent"], trace.get_current_span()))


@pytest.mark.parametrize("fused", [False, True], ids=["two interceptors", "fused"])
async def test_a_failed_delivery_of_an_unsampled_publication_is_counted_once(fused: bool) -> None:
    # Fused, the mailbox worker takes the quick check: it enters the trace,
    # and the host counts the failure with the counter the check set. With
    # two interceptors the hook's wrapper counts it. Either way, once.
    Listener.seen.clear()
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    runtime = LocalRuntime(interceptors=traced_and_counted(fused, provider, meters))
    await Fragile.register(runtime, "fragile")
    await runtime.add_subscription(TypeSubscription("news", "fragile"))
    async with runtime:
        for text in ("fail", "fine", "fail"):
            await runtime.publish_message(News(text), TopicId("news", "t"))
        await runtime.stop_when_idle(timeout=5)
    counted = message_counts(reader)
    fragile = (("ravi.agent.type", "fragile"),)
    failed = (("ravi.agent.type", "fragile"), ("ravi.error.code", "UNKNOWN"))
    assert counted[("ravi.messages.handled", fragile)] == 3
    assert counted[("ravi.messages.failed", failed)] == 2
    ((traceparent, current),) = Listener.seen
    assert current.get_span_context().span_id == int(traceparent[36:52], 16)
    assert not current.is_recording()


class Watching(TracingInterceptor):
    """A user's subclass that overrides the hooks: the quick checks must not bypass them."""

    def __init__(self, provider: TracerProvider) -> None:
        super().__init__("node-w", provider)
        self.seen: list[str] = []

    def send(self, input: SendInput, next: Callable[[SendInput], Awaitable[Any]]) -> Awaitable[Any]:
        self.seen.append(f"send {input.recipient.type}")
        return super().send(input, next)

    def handle(
        self, input: HandleInput, next: Callable[[HandleInput], Awaitable[Any]]
    ) -> Awaitable[Any]:
        self.seen.append(f"handle {input.agent_id.type}")
        return super().handle(input, next)


async def test_a_subclass_that_overrides_the_hooks_sees_every_message_of_an_unsampled_trace() -> (
    None
):
    watching = Watching(TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0))))
    assert quick([watching], "send") is None
    assert quick([watching], "handle") is None
    plain = TracingInterceptor("node-p")
    assert quick([plain], "send") is not None
    assert quick([plain, Interceptor()], "send") is None
    runtime = LocalRuntime(interceptors=[watching])
    await Relay.register(runtime, "relay")
    await Back.register(runtime, "back")
    async with runtime:
        assert await runtime.send_message(Ask("hi"), AgentId("relay", "r")) == "back saw hi"
    # The nested send is handled in the relay's task, inside its unsampled trace.
    assert watching.seen == ["send relay", "handle relay", "send back", "handle back"]


class Unsent(OtlpSpanExporter):
    """Sends nothing: spans are not what the test looks at."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Relayed(BaseAgent):
    """Asks `back` and keeps the metadata its message carried there."""

    carried: ClassVar[list[dict[str, str]]] = []

    @message_handler
    async def on_ask(self, message: Ask, ctx: MessageContext) -> str:
        return str(await self.send_message(Ask(message.text), AgentId("keeper", "k")))


class Keeper(BaseAgent):
    @message_handler
    async def on_ask(self, message: Ask, ctx: MessageContext) -> str:
        Relayed.carried.append(dict(ctx.metadata))
        return "kept"


async def test_a_recording_span_carries_the_trace_state_it_came_with() -> None:
    # configure()'s span path: the send span of a handler in a sampled trace
    # with a trace state passes both on (the W3C rule for a child).
    processor = EncodingSpanProcessor(Unsent(endpoint="http://127.0.0.1:1"))
    provider = TracerProvider()
    tracing = TracingInterceptor("node-t", provider)
    tracing._direct(DirectSpans(provider, processor))
    runtime = LocalRuntime(interceptors=[tracing])
    await Relayed.register(runtime, "relay")
    await Keeper.register(runtime, "keeper")
    Relayed.carried.clear()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        async with runtime:
            for state in ("vendor=v1", None):
                metadata = {"traceparent": parent}
                if state:
                    metadata["tracestate"] = state
                await runtime.send_message(Ask("x"), AgentId("relay", "r"), metadata=metadata)
    finally:
        processor.shutdown()
    with_state, without = Relayed.carried
    for carried in (with_state, without):
        found = remote_parent(carried)
        assert found.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
        assert found.span_id != 0xB7AD6B7169203331  # the relay's send span, a child
        assert found.trace_flags.sampled
    assert with_state["tracestate"] == "vendor=v1"
    assert "tracestate" not in without


@pytest.mark.parametrize(
    "sampler",
    [ParentBased(TraceIdRatioBased(0.5)), TraceIdRatioBased(0.25)],
    ids=["parentbased_traceidratio", "traceidratio"],
)
def test_a_root_is_sampled_as_the_ratio_sampler_decides(sampler: Any) -> None:
    # configure()'s span path decides a ratio-sampled root from its trace id
    # alone; it must agree with the sampler, trace by trace.
    provider = TracerProvider(sampler=sampler)
    processor = EncodingSpanProcessor(OtlpSpanExporter(endpoint="http://127.0.0.1:1"))
    spans = DirectSpans(provider, processor)
    try:
        decided = [spans.root("send x", SpanKind.CLIENT) for _ in range(400)]
        # A handler's span for a message that came without a traceparent is a
        # root too, decided the same way.
        handled = [spans.start("send x", SpanKind.CLIENT, None) for _ in range(400)]
        assert all(type(span) is Passthrough for span in handled if not span.is_recording())
        for decision in [*decided, *handled]:
            # A dropped root is only its traceparent, a valid one.
            if isinstance(decision, str):
                assert well_formed(decision)
            span = Passthrough({"traceparent": decision}) if isinstance(decision, str) else decision
            found = span.get_span_context()
            asked = sampler.should_sample(None, found.trace_id, "send x", SpanKind.CLIENT)
            assert span.is_recording() == (asked.decision is Decision.RECORD_AND_SAMPLE)
            assert found.trace_flags.sampled == span.is_recording()
            assert found.trace_flags.random_trace_id
        assert 0 < sum(not isinstance(span, str) for span in decided) < len(decided)
        assert 0 < sum(span.is_recording() for span in handled) < len(handled)
    finally:
        processor.shutdown()


class Counting(IdGenerator):
    """Ids from a counter: not random, so a dropped root's flags say so."""

    def __init__(self) -> None:
        self.next = 0

    def generate_span_id(self) -> int:
        self.next += 1
        return self.next

    def generate_trace_id(self) -> int:
        self.next += 1
        return self.next


def test_a_dropped_root_takes_its_ids_from_the_providers_generator() -> None:
    provider = TracerProvider(sampler=TraceIdRatioBased(0.0), id_generator=Counting())
    processor = EncodingSpanProcessor(OtlpSpanExporter(endpoint="http://127.0.0.1:1"))
    spans = DirectSpans(provider, processor)
    try:
        assert spans.root("send x", SpanKind.CLIENT) == f"00-{1:032x}-{2:016x}-00"
        assert spans.root("send x", SpanKind.CLIENT) == f"00-{3:032x}-{4:016x}-00"
    finally:
        processor.shutdown()


@pytest.mark.parametrize(
    "sampler",
    [
        ParentBased(ALWAYS_OFF),
        ParentBased(ALWAYS_ON, remote_parent_sampled=ALWAYS_OFF),
        ParentBased(ALWAYS_ON, local_parent_sampled=TraceIdRatioBased(0.0)),
        TraceIdRatioBased(0.0),
    ],
    ids=["default delegates", "remote sampled dropped", "local sampled by ratio", "no parent"],
)
@pytest.mark.parametrize("remote", [True, False], ids=["remote parent", "local parent"])
@pytest.mark.parametrize(
    "flags",
    [TraceFlags.SAMPLED, TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID],
    ids=["sampled", "sampled, random trace id"],
)
def test_a_child_of_a_sampled_parent_is_sampled_as_the_sampler_decides(
    sampler: Any, remote: bool, flags: int
) -> None:
    # configure()'s span path decides ALWAYS_ON's answer under ParentBased
    # itself; with any other delegate it asks the sampler, as the SDK would.
    provider = TracerProvider(sampler=sampler)
    processor = EncodingSpanProcessor(OtlpSpanExporter(endpoint="http://127.0.0.1:1"))
    spans = DirectSpans(provider, processor)
    parent = SpanContext(
        0x1234,
        0x5678,
        is_remote=remote,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState([("vendor", "v1")]),
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    try:
        span = spans.start("handle x", SpanKind.SERVER, context)
        asked = sampler.should_sample(context, parent.trace_id, "handle x", SpanKind.SERVER)
        assert span.is_recording() == (asked.decision is Decision.RECORD_AND_SAMPLE)
        found = span.get_span_context()
        assert found.trace_id == parent.trace_id
        assert found.trace_flags.sampled == span.is_recording()
        assert found.trace_state == asked.trace_state
        # The SDK's own span under the same provider: the same flags.
        sdk = provider.get_tracer("sdk").start_span("handle x", context, SpanKind.SERVER)
        assert found.trace_flags == sdk.get_span_context().trace_flags
        if span.is_recording():
            assert span.parent == parent  # type: ignore[attr-defined]
    finally:
        processor.shutdown()


@pytest.mark.parametrize(
    "sampler",
    [ParentBased(ALWAYS_ON), ALWAYS_ON, ParentBased(ALWAYS_OFF), ALWAYS_OFF],
    ids=["parentbased_always_on", "always_on", "parentbased_always_off", "always_off"],
)
def test_a_root_is_sampled_as_an_always_sampler_decides(sampler: Any) -> None:
    provider = TracerProvider(sampler=sampler)
    processor = EncodingSpanProcessor(OtlpSpanExporter(endpoint="http://127.0.0.1:1"))
    spans = DirectSpans(provider, processor)
    try:
        for span in (
            spans.root("send x", SpanKind.CLIENT),
            spans.start("y", SpanKind.CLIENT, None),
        ):
            found = span.get_span_context()
            asked = sampler.should_sample(None, found.trace_id, "send x", SpanKind.CLIENT)
            assert span.is_recording() == (asked.decision is Decision.RECORD_AND_SAMPLE)
            assert found.trace_flags.sampled == span.is_recording()
            assert not found.trace_state
            sdk = provider.get_tracer("sdk").start_span("send x", kind=SpanKind.CLIENT)
            assert found.trace_flags == sdk.get_span_context().trace_flags
            if span.is_recording():
                assert span.parent is None  # type: ignore[attr-defined]
    finally:
        processor.shutdown()
