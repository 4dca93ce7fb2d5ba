"""The demo assistant `ravi serve` hosts by default: two tools, one of them risky."""

from __future__ import annotations

from collections.abc import Sequence

from ravi.agents import ReActAgent
from ravi.models import ChatMessage, ChatModel, ScriptedModel, ToolCall
from ravi.runtime import BaseRuntime
from ravi.tools import ToolContext, tool

_NOTES = {
    "local": "LocalRuntime runs every agent in one process on asyncio queues: no infrastructure.",
    "grpc": "GrpcRuntime puts agents on many machines and in several languages over gRPC.",
    "restate": "RestateRuntime journals every step, so approvals and tools survive restarts.",
    "approval": "A tool marked requires_approval waits for a human before it runs.",
}


@tool
def look_up(topic: str) -> str:
    """Look up ravi's notes on a topic.

    Args:
        topic: what to look up, in a few words.
    """
    words = topic.lower().split()
    found = [note for key, note in _NOTES.items() if any(key in w for w in words)]
    return " ".join(found) or "No notes on that; ravi's notes cover local, grpc, restate, approval."


@tool(requires_approval=True)
def send_report(to: str, summary: str, ctx: ToolContext) -> str:
    """E-mail a report to someone (demo: nothing is sent).

    Args:
        to: the recipient's e-mail address.
        summary: the report's text.
        ctx: the call's context (not an argument of the model's).
    """
    return (
        f"Report sent to {to} ({len(summary)} characters, idempotency key {ctx.idempotency_key})."
    )


def _task(messages: Sequence[ChatMessage]) -> str:
    return next(m.content for m in reversed(messages) if m.role == "user")


def _last_tool_output(messages: Sequence[ChatMessage]) -> str:
    return next(m.content for m in reversed(messages) if m.role == "tool")


def _look_up(messages: Sequence[ChatMessage]) -> ChatMessage:
    return ChatMessage.assistant(
        "Let me look that up.", (ToolCall.of("look_up", {"topic": _task(messages)}),)
    )


def _report(messages: Sequence[ChatMessage]) -> ChatMessage:
    notes = _last_tool_output(messages)
    arguments = {"to": "team@example.com", "summary": f"{_task(messages)}: {notes}"}
    return ChatMessage.assistant(
        "I will e-mail the team a report.", (ToolCall.of("send_report", arguments),)
    )


def _answer(messages: Sequence[ChatMessage]) -> ChatMessage:
    outcome = _last_tool_output(messages)
    if outcome.startswith("Report sent"):
        return ChatMessage.assistant(f"Done. {outcome}")
    return ChatMessage.assistant(f"I did not send the report. {outcome}")


def demo_model() -> ScriptedModel:
    """The scripted model of the demo: look up, ask to send a report, answer."""
    return ScriptedModel([_look_up, _report, _answer], name="demo")


def demo_workflow_setup(runtime: BaseRuntime) -> None:
    """Serve the durable agent workflow with the demo's model ("demo") and tools.

    For a RestateRuntime worker (`ravi restate worker`); other runtimes have no
    workflows.
    """
    from ravi.integrations.runtime.restate import AgentWorkflow, RestateRuntime  # noqa: PLC0415

    if not isinstance(runtime, RestateRuntime):
        raise TypeError("the agent workflow runs on a RestateRuntime")
    AgentWorkflow(models={"demo": demo_model()}, tools=[look_up, send_report]).register(runtime)


async def demo_setup(
    runtime: BaseRuntime, agent_type: str = "assistant", model: ChatModel | None = None
) -> None:
    """Register the demo assistant (the scripted demo model unless `model` is given)."""
    chosen = model or demo_model()
    await ReActAgent.register(
        runtime, agent_type, lambda: ReActAgent(chosen, [look_up, send_report], max_iterations=6)
    )
