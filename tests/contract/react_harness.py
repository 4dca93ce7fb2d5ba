"""ReAct agents for the ReAct contract tests: one agent type per scenario, scripted models.

`setup` registers them on any runtime: the test's LocalRuntime, or a `ravi node`
process (`--setup tests.contract.react_harness:setup`) for GrpcRuntime.
"""

from __future__ import annotations

from collections.abc import Sequence

from ravi.agents import ReActAgent
from ravi.models import ChatMessage, ScriptedModel, ScriptStep, ToolCall, call, say
from ravi.runtime import BaseRuntime
from ravi.tools import ToolContext, tool


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first.
        b: the second.
    """
    return a + b


@tool
async def explode(message: str) -> str:
    """A tool that always raises.

    Args:
        message: what it raises with.
    """
    raise RuntimeError(message)


@tool(requires_approval=True)
def transfer(to: str, amount: int, ctx: ToolContext) -> str:
    """Transfer money (needs a human's approval).

    Args:
        to: who receives it.
        amount: how much, in cents.
        ctx: the call's context.
    """
    return f"sent {amount} to {to} (key {ctx.idempotency_key})"


def _last_tool_output(messages: Sequence[ChatMessage]) -> ChatMessage:
    return say(next(m.content for m in reversed(messages) if m.role == "tool"))


def _turn(messages: Sequence[ChatMessage]) -> ChatMessage:
    users = [m.content for m in messages if m.role == "user"]
    return say(f"turn {len(users)}: {' / '.join(users)}")


def _add_again(messages: Sequence[ChatMessage]) -> ChatMessage:
    return ChatMessage.assistant("still adding", (ToolCall.of("add", {"a": 1, "b": 1}),))


SCENARIOS: dict[str, list[ScriptStep]] = {
    "react-tools": [call("add", "adding", a=2, b=3), _last_tool_output],
    "react-approval": [call("transfer", to="alice", amount=1000), _last_tool_output],
    "react-raises": [call("explode", message="boom"), _last_tool_output],
    "react-invalid": [
        call("add", a="two", b=3),
        call("subtract", a=1, b=2),
        ChatMessage.assistant("", (ToolCall(id="c1", name="add", arguments="{not json"),)),
        say("gave up"),
    ],
    "react-loop": [_add_again] * 20,
    "react-exhausted": [call("add", a=1, b=1)],
    "react-memory": [_turn],
}
MAX_ITERATIONS = 5


async def setup(runtime: BaseRuntime) -> None:
    for agent_type, script in SCENARIOS.items():
        model = ScriptedModel(script, name=agent_type)

        def make(model: ScriptedModel = model) -> ReActAgent:
            return ReActAgent(model, [add, explode, transfer], max_iterations=MAX_ITERATIONS)

        await ReActAgent.register(runtime, agent_type, make)
