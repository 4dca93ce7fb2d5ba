"""One task through two Python nodes, the Go agent and the Node agent: ONE trace in Jaeger.

The spans come from all four services, with correct parent/child links, a
publish delivered over a Subscribe stream, and an error span.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ravi import AgentId, TypeSubscription
from ravi._demo.agents import ProgressPrinter
from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.errors import HandlerFailed
from ravi.examples.v1.examples_pb2 import Task
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.telemetry import configure
from ravi.testing import (
    Jaeger,
    NodeProcess,
    eventually,
    ravi_command,
    running_jaeger,
    start_node,
)
from tests.interop.conftest import COMMANDS
from tests.paths import REPO_ROOT, TOOLS_BIN

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SERVICES = {"node-a", "node-b", "node-go", "node-js"}


def python_node(node_id: str, setup: list[str], *peers: str) -> list[str]:
    command = [*ravi_command(), "node", "--node-id", node_id, "--listen", "127.0.0.1:0"]
    for function in setup:
        command += ["--setup", function]
    command += ["--setup-arg", f"docs={REPO_ROOT / 'docs'}"]
    return command + [f"--peer=p{i}={address}" for i, address in enumerate(peers)]


async def traced_task(jaeger: Jaeger) -> str:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint}
    nodes: list[NodeProcess] = []
    try:
        b = await start_node(python_node("node-b", ["ravi._demo.nodes:writer"]), env=env)
        nodes.append(b)
        js = await start_node(COMMANDS["node"]("node-js", b.address), env=env)
        nodes.append(js)
        go = await start_node(COMMANDS["go"]("node-go", b.address, js.address), env=env)
        nodes.append(go)
        a = await start_node(
            python_node("node-a", ["ravi._demo.nodes:node_a"], b.address, js.address, go.address),
            env=env,
        )
        nodes.append(a)
        telemetry = configure("e2e-client", endpoint=jaeger.otlp_endpoint)
        assert telemetry is not None
        ProgressPrinter.events.clear()
        ProgressPrinter.finished.clear()
        client = GrpcRuntime(
            remote_peers={n.node_id: n.address for n in nodes},
            options=GrpcRuntimeOptions(node_id="e2e-client"),
            interceptors=telemetry.interceptors,
        )
        await ProgressPrinter.register(client, "progress_printer")
        await client.add_subscription(TypeSubscription("progress", "progress_printer"))
        tracer = telemetry.tracer_provider.get_tracer("e2e")
        async with client:
            await client.wait_for_peers(timeout=10)
            with tracer.start_as_current_span("e2e task") as root:
                await client.send_message(
                    Task(thread_id="e2e", content="How are deadlines propagated?"),
                    AgentId("orchestrator", "e2e"),
                    timeout=30,
                )
                await asyncio.wait_for(ProgressPrinter.finished.wait(), 5)
                with pytest.raises(HandlerFailed):
                    await client.send_message(
                        conf.Fail(code=0, message="traced failure"),
                        AgentId("conformance-go", "e2e"),
                    )
        trace_id = f"{root.get_span_context().trace_id:032x}"
    finally:
        for node in reversed(nodes):
            await node.stop()  # SIGTERM: each node flushes its spans
    telemetry.shutdown()
    return trace_id


def spans_by(trace: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    return {s["spanID"]: s for s in trace["spans"]}, services


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


async def test_one_task_is_one_trace_across_four_services() -> None:
    async with running_jaeger(TOOLS_BIN / "jaeger", REPO_ROOT / "tools" / "jaeger.yaml") as jaeger:
        trace_id = await traced_task(jaeger)

        async def complete() -> dict[str, Any]:
            trace = await jaeger.trace(trace_id)
            assert trace is not None
            services = {p["serviceName"] for p in trace["processes"].values()}
            assert SERVICES | {"e2e-client"} <= services
            return trace

        trace = await eventually(complete, timeout=20, interval=0.5)

    spans, services = spans_by(trace)
    assert {s["traceID"] for s in spans.values()} == {trace_id}

    def find(operation: str, service: str) -> list[dict[str, Any]]:
        return [
            s
            for s in spans.values()
            if s["operationName"] == operation and services[s["processID"]] == service
        ]

    def parent(span: dict[str, Any]) -> dict[str, Any]:
        (reference,) = span["references"]
        return spans[reference["spanID"]]

    # The request path, hop by hop and language by language.
    (handle_orchestrator,) = find("handle orchestrator", "node-a")
    assert parent(handle_orchestrator)["operationName"] == "send orchestrator"
    assert services[parent(handle_orchestrator)["processID"]] == "e2e-client"
    for handle_writer in find("handle writer", "node-b"):
        assert services[parent(handle_writer)["processID"]] == "node-a"
    reviews = find("handle reviewer", "node-go")
    assert len(reviews) == 2
    assert all(tags(r)["ravi.language"] == "go" for r in reviews)
    (go_send_formatter,) = find("send formatter", "node-go")
    assert parent(go_send_formatter) in reviews
    formats = find("handle formatter", "node-js")
    assert {parent(f)["operationName"] for f in formats} == {"send formatter"}
    assert {services[parent(f)["processID"]] for f in formats} == {"node-go", "node-a"}
    assert all(tags(f)["ravi.language"] == "node" for f in formats)

    # Progress published on node-a, delivered to the client over its stream.
    delivers = find("deliver progress_printer", "e2e-client")
    assert delivers
    for deliver in delivers:
        publish = parent(deliver)
        assert (publish["operationName"], services[publish["processID"]]) == (
            "publish progress",
            "node-a",
        )
        assert tags(deliver)["ravi.topic.type"] == "progress"

    # The failure in the Go handler is an error span, with its code and reason.
    (failed,) = find("handle conformance-go", "node-go")
    failure = tags(failed)
    assert failure["otel.status_code"] == "ERROR"
    assert failure["ravi.error.code"] == "UNKNOWN"
    assert failure["ravi.error.reason"] == "HANDLER_FAILED"
    (failed_send,) = find("send conformance-go", "e2e-client")
    assert tags(failed_send)["otel.status_code"] == "ERROR"
    assert parent(failed)["spanID"] == failed_send["spanID"]
