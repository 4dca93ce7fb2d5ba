"""Handler durations counted in the process report what the SDK's histogram reports."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
)

from ravi.telemetry import configure
from ravi.telemetry._durations import (
    DESCRIPTION,
    NAME,
    UNIT,
    Durations,
    DurationsReader,
    counts_durations,
)

# Bounds themselves (0, 5, 10), values inside buckets, past the last bound, negative.
FIRST = [("a", 0.0), ("a", 0.000_2), ("b", 5.0), ("a", 5.000_1), ("b", 7.5), ("a", 20_000.0)]
SECOND = [("a", 10.0), ("a", -1.0), ("a", 0.3)]


def _sdk_points(
    temporality: AggregationTemporality,
) -> list[list[HistogramDataPoint]]:
    reader = InMemoryMetricReader(preferred_temporality={HistogramInstrument: temporality})
    histogram = MeterProvider(metric_readers=[reader]).get_meter("ravi").create_histogram(NAME)
    collected = []
    for values in (FIRST, SECOND, []):
        for agent_type, seconds in values:
            histogram.record(seconds, {"ravi.agent.type": agent_type})
        data = reader.get_metrics_data()
        collected.append(
            [
                point
                for resource in (data.resource_metrics if data else [])
                for scope in resource.scope_metrics
                for metric in scope.metrics
                for point in metric.data.data_points
                if isinstance(point, HistogramDataPoint)
            ]
        )
    return collected


def _comparable(points: Sequence[HistogramDataPoint]) -> list[tuple[object, ...]]:
    """The fields that do not depend on when the series started."""
    return sorted(
        (
            tuple(sorted(p.attributes.items())),
            p.count,
            p.sum,
            p.bucket_counts,
            p.explicit_bounds,
            p.min,
            p.max,
        )
        for p in points
    )


@pytest.mark.parametrize("temporality", list(AggregationTemporality)[1:], ids=lambda t: t.name)
def test_durations_report_what_the_sdk_histogram_reports(
    temporality: AggregationTemporality,
) -> None:
    expected = _sdk_points(temporality)
    durations = Durations()
    for values, sdk in zip((FIRST, SECOND, []), expected, strict=True):
        for agent_type, seconds in values:
            durations.record(agent_type, seconds)
        now = time.time_ns()
        points = durations.collect(temporality, now)
        assert _comparable(points) == _comparable(sdk)
        assert all(p.time_unix_nano == now and p.start_time_unix_nano <= now for p in points)
    # Sanity of the comparison itself: something was reported in both intervals.
    assert expected[0]
    assert expected[1]


class _Kept(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exported: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object
    ) -> MetricExportResult:
        self.exported.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        return None


def test_the_reader_exports_the_durations_under_ravis_scope_next_to_the_sdks_metrics() -> None:
    exporter, durations = _Kept(), Durations()
    provider = MeterProvider(metric_readers=[DurationsReader(exporter, durations, "ravi")])
    provider.get_meter("ravi").create_counter("ravi.agents.activated").add(1)
    durations.record("echo", 0.25)
    provider.force_flush()
    provider.shutdown()
    metrics = {
        metric.name: (scope.scope.name, metric)
        for data in exporter.exported
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    scope, histogram = metrics[NAME]
    assert scope == "ravi"
    assert (histogram.unit, histogram.description) == (UNIT, DESCRIPTION)
    assert histogram.data.aggregation_temporality is AggregationTemporality.CUMULATIVE
    [point] = histogram.data.data_points
    assert (point.count, point.sum, dict(point.attributes)) == (
        1,
        0.25,
        {"ravi.agent.type": "echo"},
    )
    assert "ravi.agents.activated" in metrics


def test_exemplars_or_another_aggregation_keep_the_sdks_histogram(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert counts_durations(_Kept())
    assert counts_durations(OTLPMetricExporter(endpoint="http://127.0.0.1:1", insecure=True))
    custom = _Kept()
    custom._preferred_aggregation = {
        HistogramInstrument: ExplicitBucketHistogramAggregation([0.001, 0.01])
    }
    assert not counts_durations(custom)
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
        "base2_exponential_bucket_histogram",
    )
    assert not counts_durations(OTLPMetricExporter(endpoint="http://127.0.0.1:1", insecure=True))
    exponential = _Kept()
    exponential._preferred_aggregation = {
        HistogramInstrument: ExponentialBucketHistogramAggregation()
    }
    assert not counts_durations(exponential)
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "trace_based")
    assert not counts_durations(_Kept())


def test_configure_counts_the_durations_in_the_process() -> None:
    telemetry = configure("n", endpoint="http://127.0.0.1:1")
    assert telemetry is not None
    try:
        [tracing] = telemetry.interceptors
        assert isinstance(tracing._metrics._durations, Durations)  # type: ignore[attr-defined]
    finally:
        telemetry.shutdown()
