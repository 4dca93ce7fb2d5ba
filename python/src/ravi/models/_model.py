"""The chat model interface, and a model that replays a script."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Self

from ravi.errors import FailedPrecondition
from ravi.models._messages import ChatMessage, ToolCall, ToolSpec

ScriptStep = ChatMessage | Callable[[Sequence[ChatMessage]], ChatMessage]


class ChatModel(ABC):
    """ChatModel turns a conversation and the tools on offer into the assistant's next message.

    Implementations: `OpenAIChatModel` (any OpenAI-compatible endpoint) and
    `ScriptedModel` (a fixed script, for tests and demos).
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """What this model is, for events and the UI (a scripted model says so)."""

    @abstractmethod
    async def complete(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        timeout: float | None = None,
    ) -> ChatMessage:
        """The assistant's reply to `messages`, with text, tool calls or both.

        Args:
            messages: the conversation so far, system message first.
            tools: the tools the model may call.
            timeout: seconds to wait for the reply at most (the model's own
                default when None).

        Raises:
            DeadlineExceeded: the model did not answer in time.
            Unauthenticated: the endpoint refused the credentials.
            InvalidArgument: the endpoint refused the request or sent a reply
                that is not a chat completion.
            Unavailable: the endpoint could not be reached.
        """

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[str | ChatMessage]:
        """The reply as it is generated: text chunks, then the whole reply as a ChatMessage.

        Models that cannot stream yield their text in one chunk.
        """
        reply = await self.complete(messages, tools, timeout=timeout)
        if reply.content:
            yield reply.content
        yield reply

    async def aclose(self) -> None:  # noqa: B027 - most models hold nothing to release
        """Release connections (nothing to release by default)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


class ScriptedModel(ChatModel):
    """ScriptedModel replays a fixed script of assistant replies: a model for tests and demos.

    The step it plays is the number of assistant messages since the last user
    message, so it needs no state of its own: concurrent conversations and
    replayed runs get the same replies. A step is a ChatMessage or a function
    of the conversation that returns one (to quote the task, say).

    Args:
        script: the replies, in order.
        name: names the script in events ("scripted:{name}"); the server's page shows
            "ScriptedModel (deterministic {name} script)".
    """

    def __init__(self, script: Sequence[ScriptStep], *, name: str = "script") -> None:
        self._script = list(script)
        self._name = name
        self.requests: list[tuple[list[ChatMessage], list[ToolSpec]]] = []

    @property
    def name(self) -> str:
        return f"scripted:{self._name}"

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        timeout: float | None = None,
    ) -> ChatMessage:
        self.requests.append((list(messages), list(tools)))
        step = 0
        for message in reversed(messages):
            if message.role == "user":
                break
            step += message.role == "assistant"
        if step >= len(self._script):
            raise FailedPrecondition(
                f"ScriptedModel {self._name!r} has {len(self._script)} steps; "
                f"the conversation asks for step {step + 1}"
            )
        entry = self._script[step]
        reply = entry if isinstance(entry, ChatMessage) else entry(messages)
        # A real model gives every call an id; a script may leave them out.
        calls = tuple(
            call if call.id else call.model_copy(update={"id": f"call-{step + 1}-{index + 1}"})
            for index, call in enumerate(reply.tool_calls)
        )
        return reply.model_copy(update={"tool_calls": calls})


def say(content: str) -> ChatMessage:
    """A scripted reply with text only: a final answer."""
    return ChatMessage.assistant(content)


def call(name: str, content: str = "", /, **arguments: object) -> ChatMessage:
    """A scripted reply that calls the tool `name` with `arguments`."""
    return ChatMessage.assistant(content, (ToolCall.of(name, dict(arguments)),))
