"""What each node of the demo mesh hosts (`ravi node --setup ravi._demo.nodes:...`)."""

from __future__ import annotations

from pathlib import Path

from ravi._demo.agents import OrchestratorAgent, ReviewAgent, SearchAgent, WriterAgent
from ravi._home import docs as home_docs
from ravi.runtime import BaseRuntime


async def node_a(runtime: BaseRuntime, docs: str | None = None) -> None:
    """Node A: the orchestrator and the searcher (over a folder of Markdown files).

    `docs` defaults to the docs of the ravi checkout (`ravi._home`), whatever
    folder the node runs in.
    """
    corpus = Path(docs) if docs is not None else home_docs()
    await OrchestratorAgent.register(runtime, "orchestrator")
    await SearchAgent.register(runtime, "searcher", lambda: SearchAgent(corpus))


async def node_b(runtime: BaseRuntime) -> None:
    """Node B: the writer and the reviewer."""
    await writer(runtime)
    await ReviewAgent.register(runtime, "reviewer")


async def writer(runtime: BaseRuntime) -> None:
    """The writer alone, for a mesh whose reviewer is the Go one."""
    await WriterAgent.register(runtime, "writer")
