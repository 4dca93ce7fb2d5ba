"""The messages a chat model reads and writes, and the tool specs it is offered."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ravi.errors import InvalidToolCall


class ToolCall(BaseModel):
    """ToolCall is a model's request to run one tool.

    `arguments` is the JSON text the model wrote, kept as written: a model can
    write JSON that does not parse, and the agent tells it so instead of failing.
    """

    model_config = ConfigDict(frozen=True)

    id: str = ""
    name: str
    arguments: str = "{}"

    @classmethod
    def of(cls, name: str, arguments: dict[str, Any] | None = None, *, id: str = "") -> ToolCall:
        """A call of `name` with `arguments` (a dict, written as JSON)."""
        return cls(id=id, name=name, arguments=json.dumps(arguments or {}))

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict.

        Raises:
            InvalidToolCall: they are not a JSON object.
        """
        try:
            value = json.loads(self.arguments or "{}")
        except json.JSONDecodeError as error:
            raise InvalidToolCall(
                f"the arguments of tool call {self.id!r} to {self.name!r} are not valid JSON "
                f"({error.msg} at character {error.pos}): {self.arguments!r}"
            ) from None
        if not isinstance(value, dict):
            raise InvalidToolCall(
                f"the arguments of tool call {self.id!r} to {self.name!r} must be a JSON object, "
                f"got {self.arguments!r}"
            )
        return value


Role = Literal["system", "user", "assistant", "tool"]


class ChatMessage(BaseModel):
    """ChatMessage is one message of a conversation with a chat model.

    An assistant message may carry tool calls; a tool message answers one of
    them by `tool_call_id`.
    """

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @classmethod
    def system(cls, content: str) -> ChatMessage:
        """A system message (the instructions)."""
        return cls(role="system", content=content)

    @classmethod
    def user(cls, content: str) -> ChatMessage:
        """A user message."""
        return cls(role="user", content=content)

    @classmethod
    def assistant(cls, content: str = "", tool_calls: tuple[ToolCall, ...] = ()) -> ChatMessage:
        """An assistant message: text, tool calls or both."""
        return cls(role="assistant", content=content, tool_calls=tool_calls)

    @classmethod
    def tool(cls, tool_call_id: str, content: str) -> ChatMessage:
        """The result of the tool call `tool_call_id`, as the model reads it."""
        return cls(role="tool", content=content, tool_call_id=tool_call_id)


class ToolSpec(BaseModel):
    """ToolSpec offers a tool to a model: its name, what it does, and its JSON schema."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
