"""Handler durations counted in the process, and the metric reader that reports them.

The SDK's `Histogram.record` passes each value through a measurement object,
the exemplar filter, every reader's storage, the view matches and a hash of the
attributes before it reaches the buckets: about 5 µs per message on a 2-core
machine, the largest single cost of a traced message on the node that handles
it (docs/performance.md, "The cost of tracing"). `configure()` owns its metric
reader, so it counts `ravi.handler.duration` itself, per agent type, into the
buckets the SDK's default aggregation uses, and its reader adds the histogram
to each collection as the SDK's explicit-bucket aggregation reports it: the
same buckets, count, sum, min and max, start times and temporality (the
exporter's preference). What it cannot give, exemplars and another histogram
aggregation chosen by setting, makes `configure()` keep the SDK's instrument
(`counts_durations`).
"""

from __future__ import annotations

import math
import os
import threading
import time
from bisect import bisect_left
from typing import Any

from opentelemetry.sdk.environment_variables import OTEL_METRICS_EXEMPLAR_FILTER
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics._internal.aggregation import (
    _DEFAULT_EXPLICIT_BUCKET_HISTOGRAM_AGGREGATION_BOUNDARIES as BOUNDS,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import DefaultAggregation, ExplicitBucketHistogramAggregation
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

NAME = "ravi.handler.duration"
UNIT = "s"
DESCRIPTION = "how long handlers ran"


class _Series:
    """One agent type's durations: this interval's, and the sums of those reported before."""

    __slots__ = ("attributes", "counts", "max", "min", "reported", "start", "sum")

    def __init__(self, agent_type: str, start: int) -> None:
        self.attributes = {"ravi.agent.type": agent_type}
        self.start = start
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.reported: tuple[list[int], float, float, float] | None = None
        """Cumulative counts, sum, min and max of the intervals reported so far."""


class Durations:
    """Durations counts handler durations per agent type, in the SDK's default buckets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._last_collection = time.time_ns()

    def record(self, agent_type: str, seconds: float) -> None:
        """Count one handler's duration (any thread)."""
        if seconds < 0:
            return  # the SDK's histogram drops them too
        series = self._series.get(agent_type)
        if series is None:
            series = self._series.setdefault(agent_type, _Series(agent_type, time.time_ns()))
        with self._lock:
            # OTLP's bucket i holds (bounds[i-1], bounds[i]]: what bisect_left finds.
            series.counts[bisect_left(BOUNDS, seconds)] += 1
            series.sum += seconds
            series.min = min(series.min, seconds)
            series.max = max(series.max, seconds)

    def collect(self, temporality: AggregationTemporality, now: int) -> list[HistogramDataPoint]:
        """The data points at `now`, as the SDK reports a synchronous histogram.

        Delta: what was counted since the last collection, and only the agent
        types that had some. Cumulative: everything since the type's first
        duration.
        """
        points = []
        with self._lock:
            previous, self._last_collection = self._last_collection, now
            for series in list(self._series.values()):
                counts, total = series.counts, series.sum
                low, high = series.min, series.max
                series.counts = [0] * (len(BOUNDS) + 1)
                series.sum, series.min, series.max = 0.0, math.inf, -math.inf
                if temporality is AggregationTemporality.DELTA:
                    if any(counts):
                        start = max(previous, series.start)
                        points.append(_point(series, start, now, counts, total, low, high))
                    continue
                if series.reported is not None:
                    before, before_sum, before_min, before_max = series.reported
                    counts = [a + b for a, b in zip(counts, before, strict=True)]
                    total += before_sum
                    low, high = min(low, before_min), max(high, before_max)
                series.reported = (counts, total, low, high)
                points.append(_point(series, series.start, now, counts, total, low, high))
        return points


def _point(  # noqa: PLR0917 - the fields of one data point
    series: _Series, start: int, now: int, counts: list[int], total: float, low: float, high: float
) -> HistogramDataPoint:
    return HistogramDataPoint(
        attributes=series.attributes,
        start_time_unix_nano=start,
        time_unix_nano=now,
        count=sum(counts),
        sum=total,
        bucket_counts=tuple(counts),
        explicit_bounds=BOUNDS,
        min=low,
        max=high,
        exemplars=[],
    )


def counts_durations(exporter: MetricExporter) -> bool:
    """Whether `Durations` reports for this exporter what the SDK's histogram would.

    Not when exemplars are on (they come from each recording's trace context)
    nor when the exporter asks for another histogram aggregation
    (OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION).
    """
    if os.environ.get(OTEL_METRICS_EXEMPLAR_FILTER, "").strip():
        return False
    aggregation = (exporter._preferred_aggregation or {}).get(HistogramInstrument)
    if aggregation is None or type(aggregation) is DefaultAggregation:
        return True
    # What the OTLP exporter asks for unless told otherwise: the default buckets.
    return (
        type(aggregation) is ExplicitBucketHistogramAggregation
        and aggregation._boundaries in (None, BOUNDS)
        and aggregation._record_min_max
    )


class DurationsReader(PeriodicExportingMetricReader):
    """DurationsReader is the SDK's periodic OTLP reader, with `durations` in every collection.

    The histogram goes under the "ravi" scope, as the SDK's instrument would.
    """

    def __init__(self, exporter: MetricExporter, durations: Durations, scope: str) -> None:
        super().__init__(exporter)
        self._durations = durations
        self._scope = scope
        preferred = exporter._preferred_temporality or {}
        self._temporality = preferred.get(HistogramInstrument, AggregationTemporality.CUMULATIVE)

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        points = self._durations.collect(self._temporality, time.time_ns())
        if points:
            metric = Metric(NAME, DESCRIPTION, UNIT, Histogram(points, self._temporality))
            metrics_data = _with_metric(metrics_data, self._scope, metric)
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)


def _with_metric(data: MetricsData, scope: str, metric: Metric) -> MetricsData:
    """`data` with `metric` added to the first resource, under the scope named `scope`."""
    if not data.resource_metrics:
        return data
    first, *rest = data.resource_metrics
    scopes = list(first.scope_metrics)
    for i, scoped in enumerate(scopes):
        if scoped.scope.name == scope:
            scopes[i] = ScopeMetrics(scoped.scope, [*scoped.metrics, metric], scoped.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(InstrumentationScope(scope), [metric], ""))
    resource = ResourceMetrics(first.resource, scopes, first.schema_url)
    return MetricsData([resource, *rest])
