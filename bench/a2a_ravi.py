"""The A2A workload through ravi: an echo agent on a LocalRuntime behind the A2A gateway.

The same round trips as bench/a2a_bare.py, answered by a ravi agent that
handles the workload's Ping: the gateway decodes the data part, sends it to
the agent, and returns the reply as the task's artifact.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from _a2a import PING_TYPE, TOKEN, run
from _workload import Ping

from ravi import BaseAgent, MessageContext, message_handler, registry
from ravi.integrations.a2a import A2AGateway, ExposedAgent
from ravi.runtime import LocalRuntime
from ravi.server import RaviServer, RuntimeThreads, ThreadStore

registry.register(Ping, PING_TYPE)


class Echo(BaseAgent):
    """Echoes a Ping."""

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> Ping:
        return message


def serve(ready: Any) -> None:
    async def main() -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        runtime = LocalRuntime()
        await Echo.register(runtime, "echo")
        threads = RuntimeThreads(runtime, store=ThreadStore.memory(), agent_type="echo")
        gateway = A2AGateway(
            RaviServer(threads, token=TOKEN, agent_type="echo"),
            [ExposedAgent("echo", Echo)],
            on_ready=lambda _: ready.put(f"{base}/a2a/echo"),
        )
        web = uvicorn.Server(uvicorn.Config(gateway.app, log_level="warning", access_log=False))
        await web.serve(sockets=[listener])

    asyncio.run(main())


if __name__ == "__main__":
    run("ravi_a2a", serve)
