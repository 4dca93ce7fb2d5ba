"""`ravi demo`: run the demo task on a runtime and print the conversation."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from ravi import AgentId, TypeSubscription
from ravi._demo.agents import (
    PROGRESS,
    OrchestratorAgent,
    ProgressPrinter,
    ReviewAgent,
    SearchAgent,
    WriterAgent,
)
from ravi.examples.v1.examples_pb2 import Task, TaskResult
from ravi.integrations.runtime.grpc import GrpcRuntime
from ravi.runtime import LocalRuntime
from ravi.testing import ravi_command, running_node

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


GO_NODE = Path(".tools/bin/ravi-go")
NODE_CLI = Path("interop/node/dist/src/cli.js")


def polyglot_available() -> bool:
    """Whether the Go and Node nodes are built here (`make build`)."""
    return GO_NODE.exists() and NODE_CLI.exists()


async def run_mesh(task_text: str, corpus: Path, *, polyglot: bool) -> TaskResult:
    """Run the demo on a mesh of node processes, this process a client.

    Python nodes host the orchestrator and searcher (node-a) and the writer
    (node-b); with `polyglot`, the Go node built from interop/go reviews and asks
    the Node node built from interop/node to format; without, a Python reviewer
    stands in and nothing is formatted.
    `corpus` must be an absolute path: the nodes run it from their own directory.
    """
    print("ravi demo on a mesh: node processes on loopback, this process a client\n")
    python = [*ravi_command(), "node", "--listen", "127.0.0.1:0", "--wait-for-peers", "10"]
    async with contextlib.AsyncExitStack() as stack:
        node_b = [*python, "--node-id", "node-b", "--setup", "ravi._demo.nodes:writer"]
        if not polyglot:
            node_b[-1] = "ravi._demo.nodes:node_b"
        b = await stack.enter_async_context(running_node(node_b))
        nodes = {"node-b": (b, "writer" if polyglot else "writer, reviewer", "python")}
        peers = [f"node-b={b.address}"]
        if polyglot:
            formatter = await stack.enter_async_context(
                running_node(
                    [
                        "node",
                        str(NODE_CLI),
                        "node",
                        "--listen",
                        "127.0.0.1:0",
                        "--node-id",
                        "node-js",
                        *_peer_flags(peers),
                    ]
                )
            )
            nodes["node-js"] = (formatter, "formatter", "node")
            peers.append(f"node-js={formatter.address}")
            reviewer = await stack.enter_async_context(
                running_node(
                    [
                        str(GO_NODE),
                        "node",
                        "--listen",
                        "127.0.0.1:0",
                        "--node-id",
                        "node-go",
                        "--format-with",
                        "formatter",
                        *_peer_flags(peers),
                    ]
                )
            )
            nodes["node-go"] = (reviewer, "reviewer", "go")
            peers.append(f"node-go={reviewer.address}")
        node_a = [*python, "--node-id", "node-a", *_peer_flags(peers)]
        node_a += ["--setup", "ravi._demo.nodes:node_a", "--setup-arg", f"docs={corpus}"]
        a = await stack.enter_async_context(running_node(node_a))
        nodes = {"node-a": (a, "orchestrator, searcher", "python"), **nodes}
        for name, (node, hosts, language) in nodes.items():
            print(f"  {name:<8} {node.address:<16} {language:<7} {hosts}")
        if not polyglot:
            print("  (run `make build` to add the Go reviewer and the Node formatter)")
        print(f"\ntask: {task_text}\n")
        client = GrpcRuntime(
            node_id="demo-client", remote_peers={n: p.address for n, (p, _, _) in nodes.items()}
        )
        await ProgressPrinter.register(client, "progress_printer")
        await client.add_subscription(TypeSubscription(PROGRESS, "progress_printer"))
        async with client:
            await client.wait_for_peers(timeout=10)
            started = time.perf_counter()
            result = await client.send_message(
                Task(thread_id="demo-1", content=task_text),
                AgentId("orchestrator", "demo-1"),
                timeout=30,
            )
            elapsed = time.perf_counter() - started
            await _progress_done()
        print()
        for name, (node, _, _) in reversed(nodes.items()):
            print(f"  stopped {name} (exit {await node.stop()})")
    report = _report(result, elapsed)
    hops = [e for e in ProgressPrinter.events if e.handled_by]
    print("\nper-hop latency, as the orchestrator on node-a measured each call:\n")
    print(f"  {'step':<8} {'handled by':<44} {'ms':>8}")
    for event in hops:
        print(f"  {event.stage:<8} {event.handled_by:<44} {event.millis:>8.2f}")
    return report


def _peer_flags(peers: list[str]) -> list[str]:
    return [flag for peer in peers for flag in ("--peer", peer)]


async def _progress_done() -> None:
    # The last progress event travels on a stream and may land just after the reply.
    await asyncio.wait_for(ProgressPrinter.finished.wait(), 5)
