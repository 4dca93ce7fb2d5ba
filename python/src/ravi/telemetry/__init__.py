"""Tracing and metrics with OpenTelemetry, exported over OTLP (docs/operations.md).

Needs the `telemetry` extra: `pip install "ravi[telemetry]"`.
"""

try:
    from ravi.telemetry._setup import Telemetry, configure
    from ravi.telemetry._tracing import MetricsInterceptor, TracingInterceptor
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"ravi.telemetry needs OpenTelemetry ({missing.name} is missing): "
        'install the extra with `pip install "ravi[telemetry]"`'
    ) from missing

__all__ = ["MetricsInterceptor", "Telemetry", "TracingInterceptor", "configure"]
