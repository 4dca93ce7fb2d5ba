"""`ravi demo`: run the demo task on a runtime and print the conversation."""

from __future__ import annotations

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
from ravi.runtime import LocalRuntime

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
    assert isinstance(result, TaskResult)
    print(f"\nanswer ({result.steps} hops, {elapsed * 1000:.1f} ms):\n")
    print("\n".join(f"  {line}" for line in result.content.splitlines()))
    return result
