"""`ravi serve`: the server on uvicorn, over a LocalRuntime or as a client node of a mesh."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn

from ravi._mesh_cli import NodeConfig, UsageError, _setup
from ravi.integrations.runtime.grpc import GrpcRuntime
from ravi.models import ChatModel
from ravi.runtime import BaseRuntime, LocalRuntime
from ravi.server._app import RaviServer
from ravi.server._demo import demo_setup


@dataclass
class ServeConfig:
    """What `ravi serve` needs."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    runtime: str = "local"
    peers: dict[str, str] = field(default_factory=dict)
    peer_token: str | None = None
    agent_type: str = "assistant"
    setup: list[str] = field(default_factory=list)
    setup_args: dict[str, str] = field(default_factory=dict)
    model: str = "demo"
    base_url: str | None = None
    run_timeout: float = 3600.0
    log_level: str = "warning"
    restate_ingress: str = "http://127.0.0.1:8080"
    restate_admin: str = "http://127.0.0.1:9070"
    restate_listen: str = "127.0.0.1:9081"
    demo: bool | None = None
    a2a: bool = False
    a2a_agents: list[str] = field(default_factory=list)
    a2a_grpc: str | None = "127.0.0.1:0"
    a2a_url: str | None = None


def _model(config: ServeConfig) -> ChatModel | None:
    if config.model == "demo":
        return None
    provider, _, name = config.model.partition(":")
    if provider != "openai" or not name:
        raise UsageError(f"--model must be demo or openai:MODEL_NAME, got {config.model!r}")
    from ravi.models import OpenAIChatModel  # noqa: PLC0415 - needs the openai extra

    return OpenAIChatModel(name, base_url=config.base_url)


def hosts_demo(config: ServeConfig) -> bool:
    """Whether the server hosts the demo assistant (never as a client of a mesh)."""
    demo = config.demo if config.demo is not None else not config.setup
    return demo and config.runtime != "grpc"


async def _runtime(config: ServeConfig) -> BaseRuntime:
    demo = hosts_demo(config)
    if config.runtime == "local":
        runtime: BaseRuntime = LocalRuntime(default_timeout=config.run_timeout)
    elif config.runtime == "grpc":
        if not config.peers:
            raise UsageError("--runtime grpc needs at least one --peer NAME=HOST:PORT")
        if config.demo:
            raise UsageError("--runtime grpc runs the agents of the mesh: drop --demo")
        runtime = GrpcRuntime(
            remote_peers=config.peers,
            node_id=f"ravi-server-{secrets.token_hex(3)}",
            peer_token=config.peer_token,
            default_timeout=config.run_timeout,
        )
    elif config.runtime == "restate":
        from ravi.integrations.runtime.restate import RestateRuntime  # noqa: PLC0415 - an extra

        runtime = RestateRuntime(
            config.restate_ingress,
            config.restate_admin,
            listen=config.restate_listen,
            default_timeout=config.run_timeout,
        )
    else:
        raise UsageError(f"--runtime must be local, grpc or restate, got {config.runtime!r}")
    if demo:
        await demo_setup(runtime, config.agent_type, _model(config))
    await _setup(runtime, NodeConfig(setup=config.setup, setup_args=config.setup_args))
    return runtime


async def run_server(config: ServeConfig, *, announce: Callable[[str], None]) -> None:
    """Serve until SIGTERM or SIGINT (uvicorn's handlers), then stop the runtime."""
    token = config.token or secrets.token_urlsafe(24)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle off only on sockets
    # that say they are TCP, and with Nagle on every response waits ~40 ms for
    # the client's delayed ACK.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((config.host, config.port))
    except OSError as error:
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {error}") from None
    # Listening now queues early connections until uvicorn accepts them, so the
    # address can be announced as soon as the runtime has started.
    listener.listen(128)
    host, port = listener.getsockname()[:2]
    address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"

    def ready() -> None:
        announce(f"ravi server {config.agent_type} serving on {address}")
        if not config.token:
            announce(f"open http://{address}/?token={token}")

    a2a = config.a2a or bool(config.a2a_agents)
    server = RaviServer(
        await _runtime(config),
        token=token,
        agent_type=config.agent_type,
        run_timeout=config.run_timeout,
        on_ready=None if a2a else ready,
    )
    app = server.app
    if a2a:
        try:
            from ravi.integrations.a2a._serve import gateway_app  # noqa: PLC0415 - an extra
        except ImportError as error:
            raise UsageError(str(error)) from None
        app = gateway_app(server, config, address=address, ready=ready, announce=announce)
    web = uvicorn.Server(
        uvicorn.Config(app, log_level=config.log_level, lifespan="on", timeout_graceful_shutdown=5)
    )
    try:
        await web.serve(sockets=[listener])
    except SystemExit:  # how uvicorn reports a failed startup
        if server.startup_error is not None:
            raise server.startup_error from None
        raise
