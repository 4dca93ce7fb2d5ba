"""Tools, chat messages and the scripted model, without a runtime."""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated

import pytest
from pydantic import BaseModel, Field

from ravi.agents import ApprovalAnswer, ReActAgent, approval_answer
from ravi.errors import FailedPrecondition, InvalidToolCall
from ravi.models import ChatMessage, ScriptedModel, ToolCall, call, say
from ravi.react.v1 import react_pb2 as pb
from ravi.tools import Tool, ToolContext, render, tool

CONTEXT = ToolContext(idempotency_key="run-1/tool-1-1", call_id="c1", thread_id="t")


@tool(requires_approval=True)
async def book(city: str, nights: int, ctx: ToolContext, breakfast: bool = False) -> str:
    """Book a hotel room.

    More details that the model does not need.

    Args:
        city: where to book,
            as the guest wrote it.
        nights: how many nights.
        ctx: the call's context.
        breakfast: whether breakfast is included.
    """
    return f"{city} x{nights} breakfast={breakfast} key={ctx.idempotency_key}"


def test_the_schema_comes_from_the_signature_and_the_docstring() -> None:
    assert (book.name, book.requires_approval) == ("book", True)
    assert book.description == "Book a hotel room."
    assert book.spec.parameters == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "city": {
                "type": "string",
                "title": "City",
                "description": "where to book, as the guest wrote it.",
            },
            "nights": {"type": "integer", "title": "Nights", "description": "how many nights."},
            "breakfast": {
                "type": "boolean",
                "title": "Breakfast",
                "default": False,
                "description": "whether breakfast is included.",
            },
        },
        "required": ["city", "nights"],
    }


def test_annotated_descriptions_and_explicit_names_work_too() -> None:
    def rate(score: Annotated[int, Field(ge=1, le=5, description="1 to 5")]) -> int:
        return score

    rated = tool(rate, name="rate-it", description="Rate.")
    assert (rated.name, rated.description) == ("rate-it", "Rate.")
    assert rated.spec.parameters["properties"]["score"]["maximum"] == 5
    with pytest.raises(InvalidToolCall, match="score: Input should be less than or equal to 5"):
        rated.validate({"score": 9})


async def test_arguments_validate_before_the_tool_runs() -> None:
    assert await book.run({"city": "Rome", "nights": "2"}, CONTEXT) == (
        "Rome x2 breakfast=False key=run-1/tool-1-1"
    )
    with pytest.raises(InvalidToolCall) as refused:
        await book.run({"city": "Rome", "nights": "two", "pets": 1}, CONTEXT)
    assert str(refused.value) == (
        "invalid arguments for tool 'book': nights: Input should be a valid integer, unable to "
        "parse string as an integer; pets: Extra inputs are not permitted"
    )


async def test_a_sync_tool_runs_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()

    @tool
    def where() -> int:
        """Which thread runs it."""
        return threading.get_ident()

    assert await where.run({}, CONTEXT) != loop_thread


def test_tools_that_cannot_have_a_schema_are_refused() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def star(*args: int) -> None:
        pass

    with pytest.raises(TypeError, match="parameter 'x' has no type"):
        Tool(untyped)
    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs have no schema"):
        Tool(star)
    with pytest.raises(ValueError, match="must be 1 to 64 letters"):
        tool(star, name="has space")


def test_results_are_rendered_for_the_model() -> None:
    class Room(BaseModel):
        number: int

    assert render("text") == "text"
    assert render(Room(number=7)) == '{"number":7}'
    assert render({"a": [1, 2]}) == '{"a":[1,2]}'
    assert render(object).startswith("\"<class 'object'>")


def test_tool_call_arguments_must_be_a_json_object() -> None:
    assert ToolCall.of("f", {"a": 1}).parsed_arguments() == {"a": 1}
    with pytest.raises(InvalidToolCall, match=r"are not valid JSON \(Expecting"):
        ToolCall(id="1", name="f", arguments="{a:").parsed_arguments()
    with pytest.raises(InvalidToolCall, match="must be a JSON object, got '\\[1\\]'"):
        ToolCall(id="1", name="f", arguments="[1]").parsed_arguments()


async def test_the_scripted_model_plays_the_step_the_conversation_is_at() -> None:
    model = ScriptedModel([call("f", x=1), say("done")], name="demo")
    assert model.name == "scripted:demo"
    first = await model.complete([ChatMessage.system("s"), ChatMessage.user("go")])
    assert first.tool_calls == (ToolCall(id="call-1-1", name="f", arguments='{"x": 1}'),)
    conversation = [ChatMessage.user("go"), first, ChatMessage.tool("call-1-1", "1")]
    replies = await asyncio.gather(*(model.complete(conversation) for _ in range(3)))
    assert {r.content for r in replies} == {"done"}
    with pytest.raises(FailedPrecondition, match="has 2 steps; the conversation asks for step 3"):
        await model.complete([*conversation, replies[0]])
    assert (await model.complete([*conversation, replies[0], ChatMessage.user("again")])) == first
    assert len(model.requests) == 6


async def test_a_model_that_cannot_stream_yields_its_text_in_one_chunk() -> None:
    model = ScriptedModel([say("hello")])
    assert [piece async for piece in model.stream([ChatMessage.user("hi")])] == [
        "hello",
        ChatMessage.assistant("hello"),
    ]


def test_approval_answers_come_as_messages_or_mappings() -> None:
    edit = approval_answer({"action": "Edit", "arguments": {"to": "bob"}, "answered_by": "ann"})
    assert (edit.action, edit.arguments_json, edit.answered_by) == (
        pb.APPROVAL_ACTION_EDIT,
        '{"to": "bob"}',
        "ann",
    )
    reject = approval_answer({"action": "reject", "reason": "no"})
    assert (reject.action, reject.reason) == (pb.APPROVAL_ACTION_REJECT, "no")
    answer = ApprovalAnswer(action=pb.APPROVAL_ACTION_APPROVE)
    assert approval_answer(answer) is answer
    for nonsense in ["yes", {"action": "maybe"}, ApprovalAnswer()]:
        refused = approval_answer(nonsense)
        assert refused.action == pb.APPROVAL_ACTION_REJECT
        assert "is not approve, reject or edit" in refused.reason


def test_a_react_agent_checks_its_settings() -> None:
    model = ScriptedModel([say("x")])
    with pytest.raises(ValueError, match="max_iterations must be at least 1"):
        ReActAgent(model, max_iterations=0)
    with pytest.raises(ValueError, match="two tools have the same name"):
        ReActAgent(model, [book, book])
