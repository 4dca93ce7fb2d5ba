"""`ravi demo`: run the demo task on a runtime and print the conversation."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ravi import AgentId, TypeSubscription
from ravi._demo.agents import (
    PROGRESS,
    OrchestratorAgent,
    ProgressPrinter,
    ReviewAgent,
    SearchAgent,
    WriterAgent,
)
from ravi._home import GO_NODE, JAEGER, JAEGER_CONFIG, NODE_NODE, node_program
from ravi.examples.v1.examples_pb2 import Task, TaskResult
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.runtime import LocalRuntime
from ravi.testing import Jaeger, NodeProcess, ravi_command, running_jaeger, running_node

if TYPE_CHECKING:
    from ravi.telemetry import Telemetry

DEFAULT_TASK = (
    "How does ravi keep the messages of one agent in order, and what happens on a deadline?"
)


async def run_local(task_text: str, corpus: Path) -> TaskResult:
    """Run the demo on LocalRuntime: every agent in this process."""
    runtime = LocalRuntime()
    await OrchestratorAgent.register(runtime, "orchestrator")
    await SearchAgent.register(runtime, "searcher", lambda: SearchAgent(corpus))
    await WriterAgent.register(runtime, "writer")
    await ReviewAgent.register(runtime, "reviewer")
    await ProgressPrinter.register(runtime, "progress_printer")
    await runtime.add_subscription(TypeSubscription(PROGRESS, "progress_printer"))
    print("ravi demo on LocalRuntime: every agent in this process\n")
    print(f"task: {task_text}\n")
    async with runtime:
        started = time.perf_counter()
        result = await runtime.send_message(
            Task(thread_id="demo-1", content=task_text), AgentId("orchestrator", "demo-1")
        )
        elapsed = time.perf_counter() - started
        await runtime.stop_when_idle(timeout=10)
    return _report(result, elapsed)


def _report(result: object, elapsed: float) -> TaskResult:
    assert isinstance(result, TaskResult)
    print(f"\nanswer ({result.steps} hops, {elapsed * 1000:.1f} ms):\n")
    print("\n".join(f"  {line}" for line in result.content.splitlines()))
    return result


def polyglot_missing() -> list[str]:
    """Why the Go reviewer or the Node formatter cannot join the mesh here (none: both can)."""
    return [reason for reason in (GO_NODE.missing(), node_program()) if reason is not None]


async def run_mesh(
    task_text: str, corpus: Path, *, jaeger: Jaeger | None = None
) -> tuple[TaskResult, str | None]:
    """Run the demo on a mesh of node processes, this process a client.

    Python nodes host the orchestrator and searcher (node-a) and the writer
    (node-b); when the checkout has them built, the Go node built from
    interop/go reviews and asks the Node node built from interop/node to
    format; else a Python reviewer stands in, nothing is formatted, and the
    demo says what is missing. With `jaeger`, every node and this client trace
    into it, and the task's trace is printed as a tree.
    `corpus` must be an absolute path: the nodes run it from their own directory.

    Returns:
        The result, and the trace id when tracing.
    """
    missing = polyglot_missing()
    polyglot = not missing
    print("ravi demo on a mesh: node processes on loopback, this process a client\n")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint} if jaeger else {}
    listen = ["--listen", "127.0.0.1:0"]
    python = [*ravi_command(), "node", *listen, "--wait-for-peers", "10"]
    async with contextlib.AsyncExitStack() as stack:

        async def start(name: str, command: list[str], hosts: str, language: str) -> str:
            node = await stack.enter_async_context(running_node(command, env=env))
            nodes[name] = (node, hosts, language)
            return f"{name}={node.address}"

        nodes: dict[str, tuple[NodeProcess, str, str]] = {}
        if polyglot:
            peers = [
                await start(
                    "node-b",
                    [*python, "--node-id", "node-b", "--setup", "ravi._demo.nodes:writer"],
                    "writer",
                    "python",
                )
            ]
            peers.append(
                await start(
                    "node-js",
                    [
                        "node",
                        str(NODE_NODE.find()),
                        "node",
                        *listen,
                        "--node-id",
                        "node-js",
                        *_peer_flags(peers),
                    ],
                    "formatter",
                    "node",
                )
            )
            peers.append(
                await start(
                    "node-go",
                    [
                        str(GO_NODE.find()),
                        "node",
                        *listen,
                        "--node-id",
                        "node-go",
                        "--format-with",
                        "formatter",
                        *_peer_flags(peers),
                    ],
                    "reviewer",
                    "go",
                )
            )
        else:
            peers = [
                await start(
                    "node-b",
                    [*python, "--node-id", "node-b", "--setup", "ravi._demo.nodes:node_b"],
                    "writer, reviewer",
                    "python",
                )
            ]
        await start(
            "node-a",
            [
                *python,
                "--node-id",
                "node-a",
                *_peer_flags(peers),
                "--setup",
                "ravi._demo.nodes:node_a",
                "--setup-arg",
                f"docs={corpus}",
            ],
            "orchestrator, searcher",
            "python",
        )
        for name, (node, hosts, language) in sorted(nodes.items()):
            print(f"  {name:<8} {node.address:<16} {language:<7} {hosts}")
        if missing:
            print("\n  a Python reviewer stands in for the Go and Node nodes, because")
            for reason in missing:
                print(f"    {reason}")
        print(f"\ntask: {task_text}\n")
        telemetry = _telemetry(jaeger)
        client = GrpcRuntime(
            remote_peers={n: p.address for n, (p, _, _) in nodes.items()},
            options=GrpcRuntimeOptions(node_id="demo-client"),
            interceptors=telemetry.interceptors if telemetry else (),
        )
        await ProgressPrinter.register(client, "progress_printer")
        await client.add_subscription(TypeSubscription(PROGRESS, "progress_printer"))
        async with client:
            await client.wait_for_peers(timeout=10)
            with _root_span(telemetry) as trace_id:
                started = time.perf_counter()
                result = await client.send_message(
                    Task(thread_id="demo-1", content=task_text),
                    AgentId("orchestrator", "demo-1"),
                    timeout=30,
                )
                elapsed = time.perf_counter() - started
                await _progress_done()
        print()
        for name, (node, _, _) in sorted(nodes.items(), reverse=True):
            print(f"  stopped {name} (exit {await node.stop()})")
    if telemetry is not None:
        telemetry.shutdown()
    report = _report(result, elapsed)
    hops = [e for e in ProgressPrinter.events if e.handled_by]
    print("\nper-hop latency, as the orchestrator on node-a measured each call:\n")
    print(f"  {'step':<8} {'handled by':<44} {'ms':>8}")
    for event in hops:
        print(f"  {event.stage:<8} {event.handled_by:<44} {event.millis:>8.2f}")
    if jaeger is None:
        return report, None
    services = {"demo-client", *nodes}
    spans = await _fetch_trace(jaeger, trace_id[0], services)
    print(f"\nthe trace in Jaeger ({len(spans['spans'])} spans from {len(services)} services):\n")
    print("\n".join(trace_tree(spans)))
    return report, trace_id[0]


def _telemetry(jaeger: Jaeger | None) -> Telemetry | None:
    if jaeger is None:
        return None
    from ravi.telemetry import configure  # noqa: PLC0415 - tracing is an optional extra

    return configure("demo-client", endpoint=jaeger.otlp_endpoint)


@contextlib.contextmanager
def _root_span(telemetry: Telemetry | None) -> Iterator[list[str]]:
    """The span the demo task runs under, when tracing: it names the trace."""
    trace_id: list[str] = []
    if telemetry is None:
        yield trace_id
        return
    tracer = telemetry.tracer_provider.get_tracer("ravi.demo")
    with tracer.start_as_current_span("demo task") as root:
        trace_id.append(f"{root.get_span_context().trace_id:032x}")
        yield trace_id


async def _fetch_trace(jaeger: Jaeger, trace_id: str, services: set[str]) -> dict[str, Any]:
    # Spans reach Jaeger in batches: wait until every service's have arrived.
    async with asyncio.timeout(20):
        while True:
            found = await jaeger.trace(trace_id)
            if found is not None:
                seen = {p["serviceName"] for p in found["processes"].values()}
                if services <= seen:
                    return found
            await asyncio.sleep(0.3)


def trace_tree(found: Mapping[str, Any]) -> list[str]:
    """A Jaeger trace as indented lines: operation, service, language, duration."""
    spans = {span["spanID"]: span for span in found["spans"]}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans.values():
        # Jaeger shows a parent that is also linked (a deliver span's publish)
        # as FOLLOWS_FROM rather than CHILD_OF.
        parents = [r["spanID"] for r in span.get("references", [])]
        parent = parents[0] if parents and parents[0] in spans else None
        children.setdefault(parent, []).append(span)
    processes = found["processes"]
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["startTime"]):
            tags = {t["key"]: t["value"] for t in span.get("tags", [])}
            service = processes[span["processID"]]["serviceName"]
            language = tags.get("ravi.language", "")
            where = f"{service} ({language})" if language else service
            error = "  ERROR" if tags.get("otel.status_code") == "ERROR" else ""
            label = f"{'  ' * depth}{span['operationName']}"
            lines.append(f"  {label:<44} {where:<22} {span['duration'] / 1000:>8.2f} ms{error}")
            walk(span["spanID"], depth + 1)

    walk(None, 0)
    return lines


async def run_traced(task_text: str, corpus: Path, *, keep: bool) -> TaskResult:
    """The mesh demo traced into a Jaeger of its own (`make jaeger` builds it), on free ports.

    The Jaeger built here is the all-in-one binary without its web UI: what it
    offers is the query API (JSON), which the demo reads to print the trace. It
    stops with the demo, unless `keep`: then it serves the query API until
    SIGINT or SIGTERM, and the demo says how to query it.
    """
    async with running_jaeger(JAEGER.find(), JAEGER_CONFIG.find()) as jaeger:
        print(f"Jaeger's query API on {jaeger.query_url} (OTLP on {jaeger.otlp_endpoint})\n")
        result, trace_id = await run_mesh(task_text, corpus, jaeger=jaeger)
        api = jaeger.query_url
        print(f'\n  trace id {trace_id} (the id of the demo task\'s root span, "demo task")')
        if not keep:
            print("  Jaeger stops with the demo: run with --keep to query it afterwards")
            return result
        print(
            "\nJaeger keeps running until Ctrl-C. It has no web UI (this build serves only its "
            "query API); ask it with curl:\n"
            "  this trace, as JSON:\n"
            f"    curl {api}/api/traces/{trace_id}\n"
            "  the services that sent spans:\n"
            f"    curl {api}/api/services\n"
            "  the latest traces of node-a (their ids are data[].traceID):\n"
            f"    curl '{api}/api/traces?service=node-a&limit=5'"
        )
        await _until_signal()
        return result


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _peer_flags(peers: list[str]) -> list[str]:
    return [flag for peer in peers for flag in ("--peer", peer)]


async def _progress_done() -> None:
    # The last progress event travels on a stream and may land just after the reply.
    await asyncio.wait_for(ProgressPrinter.finished.wait(), 5)
