"""The floor of the A2A workload: the echo agent served by a bare a2a-sdk server.

An AgentExecutor answers each message with a completed task whose artifact
echoes the data part, on the SDK's JSON-RPC (Starlette on uvicorn) and gRPC
applications: what the A2A gateway does, without ravi.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio
import uvicorn
from _a2a import run
from a2a.helpers import get_data_parts, new_data_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
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


class Echo(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None
        assert context.context_id is not None
        assert context.message is not None
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await event_queue.enqueue_event(
            Task(
                id=context.task_id,
                context_id=context.context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_WORKING),
                history=[context.message],
            )
        )
        (data,) = get_data_parts(context.message.parts)
        await updater.add_artifact([new_data_part(data)], name="reply")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError("the echo finishes at once")


def serve(ready: Any) -> None:
    async def main() -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        grpc_server = grpc.aio.server()
        grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
        card = AgentCard(
            name="echo",
            description="Echoes a data part.",
            version="1",
            supported_interfaces=[
                AgentInterface(url=base, protocol_binding="JSONRPC", protocol_version="1.0"),
                AgentInterface(
                    url=f"127.0.0.1:{grpc_port}", protocol_binding="GRPC", protocol_version="1.0"
                ),
            ],
            capabilities=AgentCapabilities(streaming=True),
            default_input_modes=["application/json"],
            default_output_modes=["application/json"],
            skills=[AgentSkill(id="echo", name="echo", description="Echo.", tags=["echo"])],
        )
        handler = DefaultRequestHandler(
            agent_executor=Echo(), task_store=InMemoryTaskStore(), agent_card=card
        )
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(GrpcHandler(handler), grpc_server)  # type: ignore[no-untyped-call]
        await grpc_server.start()

        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            ready.put(base)
            yield

        routes = [*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/")]
        app = Starlette(routes=routes, lifespan=lifespan)
        web = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        await web.serve(sockets=[listener])

    asyncio.run(main())


if __name__ == "__main__":
    run("floor_a2a", serve)
