"""A node's metrics arrive over OTLP at a real OTLP/gRPC receiver run by the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc.aio
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2 as metrics_service,
)
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2_grpc as metrics_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2 as trace_service,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2_grpc as trace_grpc,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2

from ravi import AgentId
from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.errors import HandlerFailed
from ravi.integrations.runtime.grpc import GrpcRuntime
from ravi.testing import eventually, running_node
from tests.integration.conftest import node_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass
class Receiver(metrics_grpc.MetricsServiceServicer, trace_grpc.TraceServiceServicer):
    """Keeps the latest data point of every metric, by metric name and attributes."""

    points: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)

    async def Export(
        self,
        request: metrics_service.ExportMetricsServiceRequest
        | trace_service.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> metrics_service.ExportMetricsServiceResponse | trace_service.ExportTraceServiceResponse:
        if isinstance(request, trace_service.ExportTraceServiceRequest):
            return trace_service.ExportTraceServiceResponse()
        for resource in request.resource_metrics:
            self.services |= {
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "service.name"
            }
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self._record(metric)
        return metrics_service.ExportMetricsServiceResponse()

    def _record(self, metric: metrics_pb2.Metric) -> None:
        kind = metric.WhichOneof("data")
        points = getattr(metric, kind).data_points
        for point in points:
            labels = frozenset(
                (a.key, a.value.string_value or str(a.value.int_value)) for a in point.attributes
            )
            if kind == "histogram":
                value = float(point.count)
            else:
                value = float(point.as_int if point.HasField("as_int") else point.as_double)
            self.points[(metric.name, labels)] = value

    def value(self, name: str, **labels: str) -> float | None:
        """The latest value of the metric whose attributes include `labels`, summed."""
        wanted = set(labels.items())
        found = [v for (n, attrs), v in self.points.items() if n == name and wanted <= attrs]
        return sum(found) if found else None


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    server = grpc.aio.server()
    metrics_grpc.add_MetricsServiceServicer_to_server(receiver, server)
    trace_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_a_node_exports_its_metrics_over_otlp() -> None:
    env = {"OTEL_METRIC_EXPORT_INTERVAL": "200"}
    async with otlp_receiver() as (receiver, endpoint):
        metered = ["--otlp-endpoint", endpoint]
        async with (
            running_node(node_command("far", conformance="far")) as far,
            running_node(
                node_command("m", conformance="work", peers=[far.address], extra=metered),
                env=env,
            ) as node,
        ):
            runtime = GrpcRuntime(remote_peers={"m": node.address})
            async with runtime:
                await runtime.wait_until_ready("work")
                for i in range(3):
                    await runtime.send_message(conf.Echo(text=f"{i}"), AgentId("work", "k"))
                with pytest.raises(HandlerFailed):
                    await runtime.send_message(
                        conf.Fail(code=0, message="counted"), AgentId("work", "k")
                    )
                sleeping = asyncio.ensure_future(
                    runtime.send_message(conf.Sleep(millis=1500, tag="z"), AgentId("work", "z"))
                )

                async def exported_while_sleeping() -> None:
                    assert receiver.value("ravi.mailbox.depth", **{"ravi.agent.type": "work"}) == 1
                    assert receiver.value("ravi.peers.connected") == 1

                await eventually(exported_while_sleeping, timeout=5)
                await sleeping

            async def exported() -> None:
                work = {"ravi.agent.type": "work"}
                assert receiver.value("ravi.messages.handled", **work) == 5
                assert receiver.value("ravi.messages.failed", **work) == 1
                assert receiver.value("ravi.handler.duration", **work) == 5
                assert receiver.value("ravi.mailbox.depth", **work) == 0

            await eventually(exported, timeout=5)
            assert receiver.services == {"m"}
