"""One span of ravi's, made and encoded for OTLP: the SDK's path against ravi's direct path.

The SDK's path is what a TracerProvider with the stock batch processor and
OTLP exporter does for a span: its span object (attribute validation, a lock,
a readable copy when it ends) and its OTLP encoder. The direct path is what
`ravi.telemetry.configure()` installs: `RaviSpan`, encoded as it ends, its
shared attributes encoded once. Both make the attributes of a `handle` span.
Nothing is sent: the figure is the CPU a span costs the process.

    .venv/bin/python bench/tracing_spans.py [--n SPANS]
"""

from __future__ import annotations

import argparse
import json
import logging
import timeit
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from ravi.telemetry._otlp import EncodingSpanProcessor, OtlpSpanExporter
from ravi.telemetry._spans import DirectSpans

SHARED = {
    "messaging.system": "ravi",
    "ravi.node.id": "a",
    "ravi.language": "python",
    "messaging.operation.type": "process",
    "ravi.agent.type": "echo",
    "ravi.message.type": "bench.Ping",
}
OWN = {"ravi.agent.key": "k", "messaging.message.id": "m-1"}
BATCH = 512


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def sdk_us(n: int) -> tuple[float, float]:
    provider = TracerProvider()
    kept = Keep()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("ravi")

    def span() -> None:
        made = tracer.start_span("handle echo", kind=SpanKind.SERVER)
        made.set_attributes({**SHARED, **OWN})
        made.end()

    make = timeit.timeit(span, number=n) / n * 1e6
    batch = kept.spans[:BATCH]
    encode = timeit.timeit(lambda: encode_spans(batch).SerializeToString(), number=10)
    return make, encode / 10 / BATCH * 1e6


def direct_us(n: int) -> float:
    # Not shut down at exit: its spans would be exported to nowhere, with retries.
    provider = TracerProvider(shutdown_on_exit=False)
    # An endpoint nothing listens on: spans are encoded as they end (a batch
    # at a time) and then wait in the queue; nothing reaches the network
    # during the measurement.
    processor = EncodingSpanProcessor(
        OtlpSpanExporter(endpoint="http://127.0.0.1:9", insecure=True), max_queue_size=1 << 22
    )
    provider.add_span_processor(processor)
    spans = DirectSpans(provider, processor)

    def span() -> None:
        made = spans.start("handle echo", SpanKind.SERVER, None)
        spans.describe(made, SHARED, dict(OWN))
        made.end()

    return timeit.timeit(span, number=n) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000, help="spans made by each path")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the exporter's failed retries, after the measurement
    make, encode = sdk_us(args.n)
    direct = direct_us(args.n)
    print(
        json.dumps(
            {
                "bench": "tracing_spans",
                "sdk_span_us": round(make, 1),
                "sdk_encode_us": round(encode, 1),
                "sdk_total_us": round(make + encode, 1),
                "ravi_span_encoded_us": round(direct, 1),
                "sdk_over_ravi": round((make + encode) / direct, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
