"""A weather agent built with a2a-sdk alone (no ravi), for A2AAgent's tests and the benchmark.

It serves JSON-RPC, HTTP+JSON and gRPC (with an Agent Card), and prints what a test
waits for: its addresses, "working TASK" when a slow task starts, "canceled
TASK" when one is canceled, and "traceparent VALUE" for each message.

    python tests/a2a/sample_agent.py [--token T]

Messages (text): "slow ..." works until canceled; "ask ..." asks which city
(input-required) and answers the follow-up; "fail ..." fails; anything else is
a city, answered "Sunny in CITY".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator

import grpc.aio
import uvicorn
from a2a.helpers import get_message_text, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.routes import (
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Task,
    TaskState,
    TaskStatus,
    a2a_pb2_grpc,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class WeatherAgent(AgentExecutor):
    """Answers with the weather in a city; slow, asking and failing on request."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None
        assert context.context_id is not None
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        text = get_message_text(context.message) if context.message else ""
        _say(f"traceparent {_traceparent(context)}")
        if context.current_task is None:
            await event_queue.enqueue_event(
                Task(
                    id=context.task_id,
                    context_id=context.context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                    history=[context.message] if context.message else [],
                )
            )
        elif context.current_task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED:
            await updater.add_artifact([new_text_part(f"Sunny in {text}")], name="forecast")
            await updater.complete()
            return
        if text.startswith("slow"):
            await updater.start_work()
            _say(f"working {context.task_id}")
            await asyncio.sleep(300)
        elif text.startswith("ask"):
            question = updater.new_agent_message([new_text_part("Which city?")])
            await updater.requires_input(question)
        elif text.startswith("fail"):
            await updater.failed(updater.new_agent_message([new_text_part("no forecast today")]))
        else:
            await updater.add_artifact([new_text_part(f"Sunny in {text}")], name="forecast")
            await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None
        assert context.context_id is not None
        _say(f"canceled {context.task_id}")
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def _traceparent(context: RequestContext) -> str:
    headers = context.call_context.state.get("headers") or {}
    if "traceparent" in headers:
        return str(headers["traceparent"])
    grpc_context = context.call_context.state.get("grpc_context")
    if grpc_context is not None:
        for key, value in grpc_context.invocation_metadata() or ():
            if key == "traceparent":
                return str(value)
    return "-"


def _say(line: str) -> None:
    print(line, flush=True)


def card(http_url: str, grpc_address: str) -> AgentCard:
    return AgentCard(
        name="weather",
        description="Tells the weather in a city.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=http_url, protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(
                url=f"{http_url}/rest", protocol_binding="HTTP+JSON", protocol_version="1.0"
            ),
            AgentInterface(url=grpc_address, protocol_binding="GRPC", protocol_version="1.0"),
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="weather", name="weather", description="The weather in a city.", tags=["weather"]
            )
        ],
    )


class _Token:
    """Refuses HTTP calls without the bearer token (the card stays public)."""

    def __init__(self, app: Starlette, token: str | None) -> None:
        self._app, self._token = app, token

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        public = scope.get("path") == "/.well-known/agent-card.json"
        if self._token and scope["type"] == "http" and not public:
            request = Request(scope)
            if request.headers.get("authorization") != f"Bearer {self._token}":
                response: Response = JSONResponse({"error": "unauthorized"}, status_code=401)
                await response(scope, receive, send)  # type: ignore[arg-type]
                return
        await self._app(scope, receive, send)  # type: ignore[arg-type]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    token = parser.parse_args().token
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    http_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    grpc_server = grpc.aio.server()
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    agent_card = card(http_url, f"127.0.0.1:{grpc_port}")
    handler = DefaultRequestHandler(
        agent_executor=WeatherAgent(), task_store=InMemoryTaskStore(), agent_card=agent_card
    )
    a2a_pb2_grpc.add_A2AServiceServicer_to_server(GrpcHandler(handler), grpc_server)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await grpc_server.start()
        _say(f"A2A server sample serving on {http_url.removeprefix('http://')} grpc {grpc_port}")
        try:
            yield
        finally:
            await grpc_server.stop(grace=1)
            await handler.aclose()

    routes = [*create_agent_card_routes(agent_card), *create_jsonrpc_routes(handler, "/")]
    routes += create_rest_routes(handler, path_prefix="/rest")
    app = _Token(Starlette(routes=routes, lifespan=lifespan), token)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    await server.serve(sockets=[listener])


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
