"""A chat model client for OpenAI-compatible endpoints, on the `openai` SDK."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import openai
from openai.types.chat import ChatCompletionChunk

from ravi.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RaviError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from ravi.models._messages import ChatMessage, ToolCall, ToolSpec
from ravi.models._model import ChatModel

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIChatModel(ChatModel):
    """OpenAIChatModel talks to any endpoint that speaks OpenAI's chat completions.

    OpenAI itself, vLLM, Ollama and LM Studio all do: point `base_url` at them.

    Args:
        model: the model name the endpoint knows (for example "gpt-4o").
        base_url: the endpoint, ending in /v1 (OPENAI_BASE_URL, else OpenAI's).
        api_key: the key (OPENAI_API_KEY); local servers accept any string.
        timeout: seconds a reply may take at most, retries included.
        max_retries: retries of connection errors, 429 and 5xx answers.
        temperature: sampling temperature; the endpoint's default when None.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        temperature: float | None = None,
    ) -> None:
        self._model = model
        self._base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key:
            raise Unauthenticated(
                f"no API key for the model endpoint {self._base_url}: pass api_key or set "
                "OPENAI_API_KEY (local servers such as Ollama accept any non-empty key)"
            )
        self._timeout = timeout
        self._temperature = temperature
        self._client = openai.AsyncOpenAI(
            api_key=key, base_url=self._base_url, timeout=timeout, max_retries=max_retries
        )

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    async def aclose(self) -> None:
        await self._client.close()

    def _request(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self._model,
            "messages": [_wire_message(m) for m in messages],
        }
        if tools:
            request["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
        if self._temperature is not None:
            request["temperature"] = self._temperature
        return request

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        timeout: float | None = None,
    ) -> ChatMessage:
        limit = timeout or self._timeout
        with self._errors(limit):
            async with asyncio.timeout(limit):
                completion = await self._client.chat.completions.create(
                    **self._request(messages, tools), timeout=limit
                )
        if not completion.choices:
            raise self._malformed("it has no choices")
        message = completion.choices[0].message
        calls = []
        for call in message.tool_calls or ():
            function = getattr(call, "function", None)
            if call.type != "function" or function is None or not function.name:
                raise self._malformed(f"tool call {call.id!r} is not a function call with a name")
            calls.append(ToolCall(id=call.id, name=function.name, arguments=function.arguments))
        return ChatMessage.assistant(message.content or "", tuple(calls))

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[str | ChatMessage]:
        limit = timeout or self._timeout
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        with self._errors(limit):
            async with asyncio.timeout(limit):
                chunks = await self._client.chat.completions.create(
                    **self._request(messages, tools), stream=True, timeout=limit
                )
                async for chunk in chunks:
                    for piece in _absorb(chunk, calls):
                        text.append(piece)
                        yield piece
        for index, call in sorted(calls.items()):
            if not call["name"]:
                raise self._malformed(f"streamed tool call {index} has no function name")
        yield ChatMessage.assistant(
            "".join(text),
            tuple(
                ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"])
                for _, c in sorted(calls.items())
            ),
        )

    def _malformed(self, why: str) -> InvalidArgument:
        return InvalidArgument(
            f"the reply of model {self._model!r} at {self._base_url} is not a usable chat "
            f"completion: {why}",
            metadata={"model": self._model, "base_url": self._base_url},
        )

    @contextmanager
    def _errors(self, timeout: float) -> Iterator[None]:
        """Turn the SDK's errors (and a timeout) into ravi errors that say what to do."""
        where = f"model {self._model!r} at {self._base_url}"
        metadata = {"model": self._model, "base_url": self._base_url}
        try:
            yield
        except (TimeoutError, openai.APITimeoutError):
            raise DeadlineExceeded(
                f"{where} did not answer within {timeout:g} s", metadata=metadata
            ) from None
        except openai.APIStatusError as error:
            metadata["status"] = str(error.status_code)
            raise _status_error(error, where, metadata) from None
        except openai.APIConnectionError as error:
            raise Unavailable(f"cannot reach {where}: {error}", metadata=metadata) from None
        except openai.APIResponseValidationError as error:
            raise self._malformed(str(error)) from None


def _status_error(error: openai.APIStatusError, where: str, metadata: dict[str, str]) -> RaviError:
    detail = f"{where} answered {error.status_code}: {error.message}"
    if isinstance(error, openai.AuthenticationError):
        return Unauthenticated(
            f"{detail} (check the API key: api_key or OPENAI_API_KEY)", metadata=metadata
        )
    if isinstance(error, openai.PermissionDeniedError):
        return PermissionDenied(detail, metadata=metadata)
    if isinstance(error, openai.NotFoundError):
        return NotFound(f"{detail} (is the model name right?)", metadata=metadata)
    if isinstance(error, openai.RateLimitError):
        return ResourceExhausted(detail, metadata=metadata)
    if error.status_code >= 500:
        return Unavailable(detail, metadata=metadata)
    return InvalidArgument(detail, metadata=metadata)


def _wire_message(message: ChatMessage) -> dict[str, Any]:
    """A ChatMessage as the chat completions API takes it."""
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["content"] = message.content or None
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    return wire


def _absorb(chunk: ChatCompletionChunk, calls: dict[int, dict[str, str]]) -> Iterator[str]:
    """Add a streamed chunk's tool call pieces to `calls`; yield its text."""
    for choice in chunk.choices[:1]:
        delta = choice.delta
        for piece in delta.tool_calls or ():
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = piece.id or call["id"]
            if piece.function is not None:
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
        if delta.content:
            yield delta.content
