"""OpenAIChatModel against a local endpoint that speaks the chat completions wire format.

The endpoint is a real HTTP server on loopback that records each request and
answers what the test scripted, so the requests are asserted exactly as sent.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ravi import AgentId
from ravi.agents import ReActAgent, Task
from ravi.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from ravi.models import ChatMessage, OpenAIChatModel, ToolCall, ToolSpec
from ravi.runtime import LocalRuntime
from ravi.tools import tool

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Reply = Callable[[dict[str, Any]], Any]


@dataclass
class Endpoint:
    """An OpenAI-compatible endpoint: answers with the scripted replies, records requests."""

    url: str = ""
    replies: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    models: list[OpenAIChatModel] = field(default_factory=list)

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        reply = self.replies.pop(0)(body)
        if asyncio.iscoroutine(reply):
            reply = await reply
        assert isinstance(reply, Response)
        return reply


def completion(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return lambda _body: JSONResponse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_790_000_000,
            "model": "test-model",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    )


def function_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def error(status: int, message: str) -> Reply:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return lambda _body: JSONResponse(body, status_code=status)


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    served = Endpoint()
    app = Starlette(routes=[Route("/v1/chat/completions", served.completions, methods=["POST"])])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    served.url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield served
    finally:
        for model in served.models:
            await model.aclose()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
    assert served.replies == [], "every scripted reply should have been asked for"


def model_for(endpoint: Endpoint, **options: Any) -> OpenAIChatModel:
    model = OpenAIChatModel("test-model", base_url=endpoint.url, api_key="sk-test", **options)
    endpoint.models.append(model)
    return model


WEATHER = ToolSpec(
    name="weather",
    description="The weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


async def test_the_request_and_the_tool_calls_are_exactly_the_wire_format(
    endpoint: Endpoint,
) -> None:
    endpoint.replies.append(
        completion(None, [function_call("call_9", "weather", '{"city": "Oslo"}')])
    )
    conversation = [
        ChatMessage.system("Be brief."),
        ChatMessage.user("Weather in Paris and Oslo?"),
        ChatMessage.assistant("Checking.", (ToolCall.of("weather", {"city": "Paris"}, id="c1"),)),
        ChatMessage.tool("c1", "Sunny"),
    ]
    reply = await model_for(endpoint, temperature=0.0).complete(conversation, [WEATHER])
    assert reply == ChatMessage.assistant(
        "", (ToolCall(id="call_9", name="weather", arguments='{"city": "Oslo"}'),)
    )
    assert endpoint.requests == [
        {
            "model": "test-model",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "description": "The weather in a city.",
                        "parameters": WEATHER.parameters,
                    },
                }
            ],
            "temperature": 0.0,
        }
    ]
    assert endpoint.headers[0]["authorization"] == "Bearer sk-test"
    assert endpoint.headers[0]["content-type"] == "application/json"


async def test_a_streamed_reply_yields_text_then_the_whole_message(endpoint: Endpoint) -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        payload = {
            "id": "chatcmpl-2",
            "object": "chat.completion.chunk",
            "created": 1_790_000_000,
            "model": "test-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload)}\n\n"

    async def stream(_body: dict[str, Any]) -> Response:
        pieces = [
            chunk({"role": "assistant", "content": "Let me "}),
            chunk({"content": "check."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"ci'},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Rome"}'}}]}),
            chunk({}, "tool_calls"),
            "data: [DONE]\n\n",
        ]
        return StreamingResponse(iter(pieces), media_type="text/event-stream")

    endpoint.replies.append(stream)
    received = [
        piece async for piece in model_for(endpoint).stream([ChatMessage.user("Rome?")], [WEATHER])
    ]
    assert received == [
        "Let me ",
        "check.",
        ChatMessage.assistant(
            "Let me check.", (ToolCall(id="call_1", name="weather", arguments='{"city": "Rome"}'),)
        ),
    ]
    assert endpoint.requests[0]["stream"] is True


async def test_a_wrong_key_is_unauthenticated_and_says_what_to_check(endpoint: Endpoint) -> None:
    endpoint.replies.append(error(401, "Incorrect API key provided"))
    with pytest.raises(Unauthenticated, match=r"answered 401: .*Incorrect API key.*OPENAI_API_KEY"):
        await model_for(endpoint).complete([ChatMessage.user("hi")])


async def test_no_key_at_all_is_refused_before_any_request(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(Unauthenticated, match="no API key"):
        OpenAIChatModel("test-model", base_url=endpoint.url)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(429, ResourceExhausted), (500, Unavailable), (404, NotFound), (400, InvalidArgument)],
)
async def test_http_errors_map_to_ravi_errors(
    endpoint: Endpoint, status: int, expected: type[Exception]
) -> None:
    endpoint.replies.append(error(status, "no"))
    with pytest.raises(expected, match=f"answered {status}"):
        await model_for(endpoint, max_retries=0).complete([ChatMessage.user("hi")])


async def test_a_slow_endpoint_fails_within_the_timeout(endpoint: Endpoint) -> None:
    async def slow(_body: dict[str, Any]) -> Response:
        await asyncio.sleep(3)
        return JSONResponse({})

    endpoint.replies.append(slow)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"did not answer within 0\.3 s"):
        await model_for(endpoint, timeout=0.3, max_retries=0).complete([ChatMessage.user("hi")])
    assert time.monotonic() - started < 2


async def test_a_reply_that_is_not_a_usable_completion_is_a_clear_error(
    endpoint: Endpoint,
) -> None:
    nameless = {"id": "x", "type": "function", "function": {"name": "", "arguments": ""}}
    endpoint.replies.append(completion(None, [nameless]))
    with pytest.raises(InvalidArgument, match="is not a function call with a name"):
        await model_for(endpoint).complete([ChatMessage.user("hi")])
    endpoint.replies.append(lambda _body: JSONResponse({"id": "c", "choices": []}))
    with pytest.raises(InvalidArgument, match="it has no choices"):
        await model_for(endpoint).complete([ChatMessage.user("hi")])


async def test_an_unreachable_endpoint_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = f"http://127.0.0.1:{port}/v1"
    async with OpenAIChatModel("m", base_url=unreachable, api_key="k", max_retries=0) as model:
        with pytest.raises(Unavailable, match="cannot reach model 'm'"):
            await model.complete([ChatMessage.user("hi")])


@tool
def weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: the city.
    """
    return f"Sunny in {city}"


async def test_a_react_agent_runs_on_the_openai_client(endpoint: Endpoint) -> None:
    endpoint.replies += [
        completion("", [function_call("call_1", "weather", '{"city": "Oslo"}')]),
        completion("Sunny in Oslo."),
    ]
    runtime = LocalRuntime()
    model = model_for(endpoint)
    await ReActAgent.register(
        runtime, "assistant", lambda: ReActAgent(model, [weather], system_prompt="Be brief.")
    )
    async with runtime:
        result = await runtime.send_message(Task(content="Oslo?"), AgentId("assistant", "t"))
    assert result.content == "Sunny in Oslo."
    first, second = endpoint.requests
    assert first["tools"][0]["function"]["name"] == "weather"
    assert first["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert second["messages"][2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny in Oslo"},
    ]
