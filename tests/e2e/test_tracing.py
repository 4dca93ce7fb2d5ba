"""One task through Python, Go and Node nodes: ONE trace in Jaeger.

The spans come from every service, with correct parent/child links, a publish
delivered over a Subscribe stream, and an error span; and a client that knows
nothing of ravi, instrumented with otelgrpc, roots the whole trace.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
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

    def mesh_parent(span: dict[str, Any]) -> dict[str, Any]:
        """The nearest ancestor made by a node's mesh: above the RPC spans of a unary call."""
        above = parent(span)
        while above["operationName"].lstrip("/").startswith("ravi.mesh.v1.AgentService/"):
            above = parent(above)
        return above

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
    assert {mesh_parent(f)["operationName"] for f in formats} == {"send formatter"}
    assert {services[mesh_parent(f)["processID"]] for f in formats} == {"node-go", "node-a"}
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


async def client_request(jaeger: Jaeger, address: str) -> str:
    """Run the otelgrpc-instrumented Go client once the node reaches the demo's agents."""
    command = [
        str(TOOLS_BIN / "otelgrpc-client"),
        f"--addr={address}",
        "--agent=orchestrator/otel",
        f"--otlp-endpoint={jaeger.otlp_endpoint}",
    ]

    async def answered() -> str:
        done = await asyncio.wait_for(
            asyncio.to_thread(
                subprocess.run, command, capture_output=True, text=True, timeout=60, check=False
            ),
            70,
        )
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert reply["reply_type"] == "ravi.examples.v1.TaskResult"
        return str(reply["trace_id"])

    # A node answers NOT_FOUND until it has described its peers.
    return await eventually(answered, timeout=60, interval=1)


async def test_a_go_client_instrumented_with_otelgrpc_roots_the_meshs_trace() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}
    nodes: list[NodeProcess] = []
    async with running_jaeger(TOOLS_BIN / "jaeger", REPO_ROOT / "tools" / "jaeger.yaml") as jaeger:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = jaeger.otlp_endpoint
        try:
            go = await start_node(COMMANDS["go"]("node-go"), env=env)
            nodes.append(go)
            js = await start_node(COMMANDS["node"]("node-js", go.address), env=env)
            nodes.append(js)
            py = await start_node(COMMANDS["python"]("node-py", go.address, js.address), env=env)
            nodes.append(py)
            trace_id = await client_request(jaeger, py.address)
        finally:
            for node in reversed(nodes):
                await node.stop()  # SIGTERM: each node flushes its spans

        async def complete() -> dict[str, Any]:
            trace = await jaeger.trace(trace_id)
            assert trace is not None
            services = {p["serviceName"] for p in trace["processes"].values()}
            assert {"otelgrpc-client", "node-py", "node-go", "node-js"} <= services
            return trace

        trace = await eventually(complete, timeout=20, interval=0.5)

    spans, services = spans_by(trace)

    def named(operation: str, service: str) -> list[dict[str, Any]]:
        # Python's grpc instrumentation names RPC spans with a leading slash.
        return [
            s
            for s in spans.values()
            if s["operationName"].lstrip("/") == operation and services[s["processID"]] == service
        ]

    def parent(span: dict[str, Any]) -> dict[str, Any] | None:
        references = [r for r in span["references"] if r["refType"] == "CHILD_OF"]
        return spans[references[0]["spanID"]] if references else None

    # One root: the client's own span; every other span descends from it.
    (root,) = [s for s in spans.values() if parent(s) is None]
    assert (root["operationName"], services[root["processID"]]) == (
        "client request",
        "otelgrpc-client",
    )
    for span in spans.values():
        ancestor, hops = span, 0
        while (above := parent(ancestor)) is not None and hops < 100:
            ancestor, hops = above, hops + 1
        assert ancestor is root, span["operationName"]

    # client span -> otelgrpc's client RPC span -> the Python node's RPC span -> handle.
    send_rpc = "ravi.mesh.v1.AgentService/Send"
    (client_rpc,) = named(send_rpc, "otelgrpc-client")
    assert parent(client_rpc) is root
    server_rpcs = [s for s in named(send_rpc, "node-py") if parent(s) is client_rpc]
    assert len(server_rpcs) == 1
    (handle,) = named("handle orchestrator", "node-py")
    assert parent(handle) is server_rpcs[0]
    # ... and the Python agent's calls reach the Go and the Node agent.
    assert named("handle reviewer", "node-go")
    assert named("handle formatter", "node-js")
    assert all(tags(s)["ravi.language"] == "go" for s in named("handle reviewer", "node-go"))
