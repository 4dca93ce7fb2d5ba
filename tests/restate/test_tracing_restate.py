"""RestateRuntime with interceptors: the spans of docs/operations.md on a real restate-server."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ravi import AgentId
from ravi.integrations.runtime.restate import RestateRuntime
from ravi.telemetry import TracingInterceptor
from ravi.testing import running_restate
from tests.paths import RESTATE_SERVER
from tests.unit.test_telemetry import Ask, Back, Front

pytestmark = [pytest.mark.restate, pytest.mark.timeout(120)]


async def test_a_send_through_restate_is_one_trace_from_caller_to_nested_handler(
    tmp_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_restate(RESTATE_SERVER, tmp_path / "restate") as server:
        runtime = RestateRuntime(
            server.ingress_url,
            server.admin_url,
            listen="127.0.0.1:0",
            default_timeout=30,
            interceptors=[TracingInterceptor("restate-worker", provider)],
        )
        await Front.register(runtime, "front")
        await Back.register(runtime, "back")
        async with runtime:
            reply = await runtime.send_message(Ask("durably"), AgentId("front", "f"))
    assert reply == "back saw durably"
    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    assert {"send front", "handle front", "send back", "handle back"} <= set(by_name)
    assert {span.context.trace_id for span in spans} == {by_name["send front"].context.trace_id}
    # The handler's span takes its parent from the envelope's metadata, which
    # Restate journaled: the caller's span, across the ingress.
    handle_front = by_name["handle front"]
    assert handle_front.parent is not None
    assert handle_front.parent.span_id == by_name["send front"].context.span_id
    assert handle_front.kind is SpanKind.SERVER
    sends_back = {s.context.span_id for s in spans if s.name == "send back"}
    handles_back = [s for s in spans if s.name == "handle back"]
    assert all(s.parent is not None and s.parent.span_id in sends_back for s in handles_back)
