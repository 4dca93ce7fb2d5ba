"""Installing OpenTelemetry for a node from the standard OTEL_* settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry import metrics
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from ravi._interceptors import Interceptor
from ravi.telemetry._durations import Durations, DurationsReader, counts_durations
from ravi.telemetry._otlp import EncodingSpanProcessor, OtlpSpanExporter
from ravi.telemetry._spans import SCOPE, DirectSpans
from ravi.telemetry._tracing import (
    LANGUAGE,
    MetricsInterceptor,
    TracingInterceptor,
    _count_durations,
)

MAX_QUEUE_SIZE = 16_384
"""Spans a node buffers for export, unless OTEL_BSP_MAX_QUEUE_SIZE says otherwise."""

_ENDPOINTS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


@dataclass
class Telemetry:
    """Telemetry is what `configure` installed: interceptors for the runtime, and providers.

    Pass `interceptors` to the runtime, call `observe(runtime)` once it exists
    for its gauges, and `shutdown()` when it stopped, which flushes what is
    still buffered.
    """

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    interceptors: list[Interceptor] = field(default_factory=list)

    def observe(
        self,
        depths: Callable[[], Mapping[str, int]],
        peers: Callable[[], int] | None = None,
        active: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        """Report mailbox depths, active agents per type and connected peers as gauges.

        Args:
            depths: returns the messages queued or running per agent type
                (`runtime.mailbox_depths`).
            peers: returns the number of connected peers, for a GrpcRuntime.
            active: returns the active (not passivated) instances per agent type
                (`runtime.active_agents`).
        """
        meter = self.meter_provider.get_meter("ravi")

        def depth(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, {"ravi.agent.type": t}) for t, n in depths().items()]

        meter.create_observable_gauge("ravi.mailbox.depth", [depth])
        if active is not None:
            instances = active

            def activated(_options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(n, {"ravi.agent.type": t}) for t, n in instances().items()]

            meter.create_observable_gauge(
                "ravi.agents.active", [activated], description="active agent instances"
            )
        if peers is not None:
            count = peers

            def connected(_options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(count())]

            meter.create_observable_gauge("ravi.peers.connected", [connected])

    def shutdown(self) -> None:
        """Flush and stop the exporters."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def configure(node_id: str, *, endpoint: str | None = None) -> Telemetry | None:
    """Install tracing and metrics exported over OTLP/gRPC, if an endpoint is configured.

    The endpoint comes from `endpoint` or from the standard variables
    (`OTEL_EXPORTER_OTLP_ENDPOINT` and the per-signal ones); the exporters read
    the other OTEL_* settings themselves. `service.name` is `node_id` unless
    `OTEL_SERVICE_NAME` is set.

    Returns:
        The installed telemetry, or None when no endpoint is configured: then
        nothing is installed and tracing costs nothing.
    """
    if endpoint is None and not any(os.environ.get(name) for name in _ENDPOINTS):
        return None
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or node_id,
            "ravi.node.id": node_id,
            "ravi.language": LANGUAGE,
        }
    )
    insecure = endpoint.startswith("http://") if endpoint else None
    tracer_provider = TracerProvider(resource=resource)
    processor = EncodingSpanProcessor(
        OtlpSpanExporter(endpoint=endpoint, insecure=insecure),
        # The SDK's 2,048 spans last a tenth of a second on a busy node, less
        # than the export thread may wait for the GIL: spans were dropped.
        max_queue_size=None if os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE") else MAX_QUEUE_SIZE,
    )
    tracer_provider.add_span_processor(processor)
    metric_exporter = OTLPMetricExporter(endpoint=endpoint, insecure=insecure)
    counted = Durations() if counts_durations(metric_exporter) else None
    meter_provider = MeterProvider(
        resource=resource,
        # Exemplars cost a tenth of a traced message's time in the SDK (profiled);
        # they stay available through the standard variable.
        exemplar_filter=None
        if os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER")
        else AlwaysOffExemplarFilter(),
        metric_readers=[
            PeriodicExportingMetricReader(metric_exporter)
            if counted is None
            else DurationsReader(metric_exporter, counted, SCOPE)
        ],
    )
    metrics.set_meter_provider(meter_provider)
    tracing = TracingInterceptor(node_id, tracer_provider)
    tracing._direct(DirectSpans(tracer_provider, processor))
    # One interceptor does both: a hook per message instead of two (measured
    # in docs/performance.md, "Where the time goes").
    if counted is not None:
        _count_durations(meter_provider, counted)
    tracing._count(MetricsInterceptor(meter_provider))
    return Telemetry(tracer_provider, meter_provider, [tracing])
