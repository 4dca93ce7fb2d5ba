"""RPC spans: a unary call's span parents the mesh's spans; a stream's calls have none."""

from __future__ import annotations

import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from ravi import AgentId
from ravi._mesh import codec
from ravi._serialization import registry
from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc
from ravi.telemetry import TracingInterceptor
from ravi.testing import ConformanceAgent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SEND = "/ravi.mesh.v1.AgentService/Send"


def provider(exporter: InMemorySpanExporter, ratio: float = 1.0) -> TracerProvider:
    made = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None
    (found,) = [s for s in spans if s.context.span_id == span.parent.span_id]
    return found


async def test_a_unary_send_is_one_tree_under_the_callers_own_span() -> None:
    exporter = InMemorySpanExporter()
    node = GrpcRuntime(
        port=0,
        options=GrpcRuntimeOptions(node_id="b"),
        interceptors=[TracingInterceptor("b", provider(exporter))],
    )
    await ConformanceAgent.register(node, "work")
    caller = provider(exporter)
    request = agent_service_pb2.SendRequest(
        recipient=codec.agent_id_to_wire(AgentId("work", "k")),
        envelope=codec.envelope(registry, conf.Echo(text="hi"), None, "m-1", None),
    )
    # A client instrumented the standard way, knowing nothing of ravi.
    interceptors = aio_client_interceptors(tracer_provider=caller)
    async with node, grpc.aio.insecure_channel(node.address, interceptors=interceptors) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        with caller.get_tracer("client").start_as_current_span("client task") as root:
            response = await stub.Send(request, timeout=10)
    assert codec.decode(registry, response.result).text == "hi"
    spans = list(exporter.get_finished_spans())
    assert {s.context.trace_id for s in spans} == {root.get_span_context().trace_id}
    (handle,) = [s for s in spans if s.name == "handle work"]
    rpc_server = parent_of(handle, spans)
    assert (rpc_server.name, rpc_server.kind) == (SEND, SpanKind.SERVER)
    rpc_client = parent_of(rpc_server, spans)
    assert (rpc_client.name, rpc_client.kind) == (SEND, SpanKind.CLIENT)
    assert parent_of(rpc_client, spans).name == "client task"


async def test_calls_on_the_multiplexed_stream_have_no_rpc_span_and_nest_by_message() -> None:
    exporter = InMemorySpanExporter()
    b = GrpcRuntime(
        port=0,
        options=GrpcRuntimeOptions(node_id="b"),
        interceptors=[TracingInterceptor("b", provider(exporter))],
    )
    await ConformanceAgent.register(b, "work")
    async with b:
        a = GrpcRuntime(
            remote_peers={"b": b.address},
            options=GrpcRuntimeOptions(node_id="a"),
            interceptors=[TracingInterceptor("a", provider(exporter))],
        )
        async with a:
            await a.wait_until_ready("work")
            exporter.clear()
            await a.send_message(conf.Echo(text="x"), AgentId("work", "k"))
    spans = list(exporter.get_finished_spans())
    assert not [s for s in spans if "Connect" in s.name]
    (handle,) = [s for s in spans if s.name == "handle work"]
    assert parent_of(handle, spans).name == "send work"


async def test_an_unsampled_call_makes_no_span_but_carries_its_context() -> None:
    exporter = InMemorySpanExporter()
    b = GrpcRuntime(
        port=0,
        options=GrpcRuntimeOptions(node_id="b"),
        interceptors=[TracingInterceptor("b", provider(exporter, 0.0))],
    )
    await ConformanceAgent.register(b, "work")
    async with b:
        a = GrpcRuntime(
            remote_peers={"b": b.address},
            options=GrpcRuntimeOptions(node_id="a"),
            interceptors=[TracingInterceptor("a", provider(exporter, 0.0))],
        )
        async with a:
            await a.wait_until_ready("work")
            exporter.clear()
            tracer = trace.NoOpTracer()
            with tracer.start_as_current_span("nothing"):
                echoed = await a.send_message(conf.Echo(text="x"), AgentId("work", "k"))
    assert exporter.get_finished_spans() == ()
    traceparent = echoed.metadata["traceparent"]
    assert traceparent.startswith("00-")
    assert traceparent[-2:] in {"00", "02"}
