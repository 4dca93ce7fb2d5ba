"""`ravi serve`: the server on uvicorn, over a LocalRuntime, a mesh, or Restate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from ravi._cli_errors import UsageError
from ravi._mesh_cli import NodeConfig, _setup
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.models import ChatModel
from ravi.runtime import BaseRuntime, LocalRuntime
from ravi.server._app import ASGIApp, RaviServer
from ravi.server._demo import demo_setup
from ravi.server._service import ThreadService
from ravi.server._store import ThreadStore
from ravi.server._threads import RuntimeThreads

logger = logging.getLogger("ravi.server")

DEFAULT_RUN_TIMEOUT = 3600.0
"""Seconds a run may take on the runtimes that are not durable (no limit on Restate)."""


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
    run_timeout: float | None = None
    log_level: str = "warning"
    restate_ingress: str = "http://127.0.0.1:8080"
    restate_admin: str = "http://127.0.0.1:9070"
    demo: bool | None = None
    data_dir: str = ".ravi"
    store: str | None = None
    grace_period: float = 5.0
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


async def _threads(config: ServeConfig) -> ThreadService:
    if config.runtime == "restate":
        return _restate_threads(config)
    demo = config.demo if config.demo is not None else not config.setup
    if config.runtime == "local":
        timeout = config.run_timeout or DEFAULT_RUN_TIMEOUT
        runtime: BaseRuntime = LocalRuntime(default_timeout=timeout)
    elif config.runtime == "grpc":
        if not config.peers:
            raise UsageError("--runtime grpc needs at least one --peer NAME=HOST:PORT")
        if config.demo:
            raise UsageError("--runtime grpc runs the agents of the mesh: drop --demo")
        demo = False
        runtime = GrpcRuntime(
            remote_peers=config.peers,
            options=GrpcRuntimeOptions(
                node_id=f"ravi-server-{secrets.token_hex(3)}",
                peer_token=config.peer_token,
                default_timeout=config.run_timeout or DEFAULT_RUN_TIMEOUT,
            ),
        )
    else:
        raise UsageError(f"--runtime must be local, grpc or restate, got {config.runtime!r}")
    if config.store not in (None, "sqlite", "memory"):
        raise UsageError(f"--store must be sqlite or memory, got {config.store!r}")
    if demo:
        await demo_setup(runtime, config.agent_type, _model(config))
    await _setup(runtime, NodeConfig(setup=config.setup, setup_arg=config.setup_args))
    store = (
        ThreadStore.memory()
        if config.store == "memory"
        else ThreadStore.open(Path(config.data_dir))
    )
    return RuntimeThreads(
        runtime,
        store=store,
        agent_type=config.agent_type,
        run_timeout=config.run_timeout or DEFAULT_RUN_TIMEOUT,
    )


def _restate_threads(config: ServeConfig) -> ThreadService:
    """The server over Restate keeps nothing and hosts nothing: the workers run the agents."""
    if config.demo or config.setup:
        raise UsageError(
            "--runtime restate runs the agents in Restate workers, not here: drop --demo and "
            "--setup, and start `ravi restate worker` (it hosts the demo assistant by default, "
            "or your agents with --setup)"
        )
    if config.store is not None:
        raise UsageError("--runtime restate keeps threads in Restate: drop --store")
    from ravi.integrations.runtime.restate import RestateSettings  # noqa: PLC0415 - an extra
    from ravi.server._restate import RestateThreads  # noqa: PLC0415 - needs the restate extra

    return RestateThreads(
        RestateSettings(config.restate_ingress, config.restate_admin),
        agent_type=config.agent_type,
        run_timeout=config.run_timeout,
    )


def _a2a_app(
    server: RaviServer,
    config: ServeConfig,
    address: str,
    ready: Callable[[], None],
    announce: Callable[[str], None],
) -> ASGIApp:
    """`--a2a`: the A2A gateway in front of the server's app."""
    try:
        from ravi.integrations.a2a._serve import gateway_app  # noqa: PLC0415 - an extra
    except ImportError as error:
        raise UsageError(str(error)) from None
    runtime = None
    if config.runtime == "restate":
        from ravi.integrations.runtime.restate import RestateRuntime  # noqa: PLC0415 - an extra

        # A client only, for the request/reply agents: the workers host them.
        runtime = RestateRuntime(config.restate_ingress, config.restate_admin, listen=None)
    return gateway_app(
        server,
        agent_type=config.agent_type,
        demo=_demo_card(config),
        agents=config.a2a_agents,
        url=config.a2a_url,
        grpc_listen=config.a2a_grpc,
        runtime=runtime,
        address=address,
        ready=ready,
        announce=announce,
    )


def _demo_card(config: ServeConfig) -> bool:
    """Whether the server's agent type is the demo assistant, whose tools its Agent Card shows."""
    if config.runtime == "grpc":
        return False  # the mesh's nodes run the agents: name them with --a2a-agent
    if config.runtime == "restate":
        return config.demo is not False  # what `ravi restate worker` hosts by default
    return config.demo if config.demo is not None else not config.setup


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, stopped by SIGTERM or SIGINT with an exit status of 0.

    uvicorn re-raises the signal it handled once it has drained, so a stopped
    server would end "killed by SIGTERM"; a container platform reads that as
    a failure. Here the signal only starts the drain: event streams end at
    once, requests in progress get `timeout_graceful_shutdown` seconds.
    """

    def __init__(self, config: uvicorn.Config, server: RaviServer) -> None:
        super().__init__(config)
        self._ravi = server

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop, signum)
        try:
            yield
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def _stop(self, signum: int) -> None:
        if self.should_exit and signum == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: do not wait for the connections
        elif not self.should_exit:
            logger.info(
                "%s: stopping; requests in progress get %s s",
                signal.Signals(signum).name,
                self.config.timeout_graceful_shutdown,
            )
        self.handle_exit(signum, None)  # also tells sse-starlette's streams
        self._ravi.shutting_down()


def open_line(address: str, token: str, *, given: bool) -> str:
    """The address to open the page at, with its token when the server made it up.

    A token the server made up is printed in full: the console is the only
    place to learn it. A given one (`--token`, `RAVI_SERVER_TOKEN`) usually
    comes from a secret store and ends in collected logs here, so it is
    masked: whoever gave it knows it, and the page asks for it.
    """
    shown = "***" if given else token
    line = f"open http://{address}/?token={shown}"
    if given:
        line += "  (the token of --token or RAVI_SERVER_TOKEN, not printed)"
    return line


def _console_logging() -> None:
    """Requests, runs and warnings to stderr, unless the "ravi" logger is configured already."""
    ravi = logging.getLogger("ravi")
    if ravi.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    ravi.addHandler(handler)
    ravi.setLevel(logging.INFO)


async def run_server(config: ServeConfig, *, announce: Callable[[str], None]) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop the thread service (exit status 0)."""
    _console_logging()
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
        listener.close()
        reason = (error.strerror or str(error)).lower()
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {reason}") from None
    # Listening now queues early connections until uvicorn accepts them, so the
    # address can be announced as soon as the service has started.
    listener.listen(128)
    host, port = listener.getsockname()[:2]
    address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"

    def ready() -> None:
        announce(f"ravi server {config.agent_type} serving on {address}")
        announce(open_line(address, token, given=bool(config.token)))

    a2a = config.a2a or bool(config.a2a_agents)
    server = RaviServer(
        await _threads(config),
        token=token,
        agent_type=config.agent_type,
        on_ready=None if a2a else ready,
    )
    app = _a2a_app(server, config, address, ready, announce) if a2a else server.app
    web = _Uvicorn(
        uvicorn.Config(
            app,
            log_level=config.log_level,
            lifespan="on",
            access_log=False,  # our own request log masks the token
            timeout_graceful_shutdown=int(config.grace_period) or 1,
        ),
        server,
    )
    try:
        await web.serve(sockets=[listener])
    except SystemExit:  # how uvicorn reports a failed startup
        if server.startup_error is not None:
            raise server.startup_error from None
        raise
    announce(f"ravi server {config.agent_type} stopped")
