"""`ravi demo`: run the demo task on a runtime and print the conversation."""

from __future__ import annotations

import asyncio
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


async def run_mesh(task_text: str, corpus: Path) -> TaskResult:
    """Run the demo on a mesh: two `ravi node` processes and this process as a client.

    `corpus` must be an absolute path: the nodes run it from their own directory.
    """
    print("ravi demo on a mesh: two ravi node processes on loopback, this process a client\n")
    command = [*ravi_command(), "node", "--listen", "127.0.0.1:0", "--wait-for-peers", "10"]
    node_b = [*command, "--node-id", "node-b", "--setup", "ravi._demo.nodes:node_b"]
    async with running_node(node_b) as b:
        node_a = [*command, "--node-id", "node-a", "--peer", f"node-b={b.address}"]
        node_a += ["--setup", "ravi._demo.nodes:node_a", "--setup-arg", f"docs={corpus}"]
        async with running_node(node_a) as a:
            print(f"  node-a {a.address}: orchestrator, searcher (python)")
            print(f"  node-b {b.address}: writer, reviewer (python)\n")
            print(f"task: {task_text}\n")
            client = GrpcRuntime(
                node_id="demo-client", remote_peers={"a": a.address, "b": b.address}
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
        print(f"\n  stopped node-a (exit {await a.stop()})")
    print(f"  stopped node-b (exit {await b.stop()})")
    report = _report(result, elapsed)
    hops = [e for e in ProgressPrinter.events if e.handled_by]
    print("\nper-hop latency, as the orchestrator on node-a measured each call:\n")
    print(f"  {'step':<8} {'handled by':<44} {'ms':>8}")
    for event in hops:
        print(f"  {event.stage:<8} {event.handled_by:<44} {event.millis:>8.2f}")
    return report


async def _progress_done() -> None:
    # The last progress event travels on a stream and may land just after the reply.
    await asyncio.wait_for(ProgressPrinter.finished.wait(), 5)
