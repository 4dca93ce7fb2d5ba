"""`ravi restate`: a worker serving agents to a Restate server, and a local dev setup."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ravi._cli_errors import (
    Announce,
    CommandGroup,
    UsageError,
    fail,
    run_service,
    show_help_without_command,
)
from ravi._home import RESTATE_SERVER

if TYPE_CHECKING:
    from ravi.integrations.runtime.restate import RestateRuntime

app = typer.Typer(help="Run agents durably on Restate.", rich_markup_mode=None, cls=CommandGroup)


@app.callback(invoke_without_command=True)
def _group(context: typer.Context) -> None:
    """Run agents durably on Restate."""
    show_help_without_command(context)


logger = logging.getLogger("ravi.restate")

Ingress = Annotated[str, typer.Option(metavar="URL", help="Restate's ingress.")]
Admin = Annotated[str, typer.Option(metavar="URL", help="Restate's admin API.")]
Setup = Annotated[
    list[str] | None,
    typer.Option(
        metavar="MODULE:FUNCTION",
        help="Call this function with the runtime to register agents and workflows.",
    ),
]
SetupArg = Annotated[
    list[str] | None,
    typer.Option(metavar="NAME=VALUE", help="A keyword argument for the setup functions."),
]
AppDir = Annotated[str, typer.Option(metavar="DIR", help="Where to import setup functions from.")]
GracePeriod = Annotated[
    float,
    typer.Option(
        metavar="SECONDS",
        help="Seconds invocations in progress get on SIGTERM to reach a durable wait, where "
        "they suspend (Restate resumes them).",
    ),
]

DEMO_SETUP = ["ravi.server:demo_setup", "ravi.server:demo_workflow_setup"]
"""What a worker hosts without --setup: the demo assistant and its durable workflow."""


async def _run_worker(
    *,
    ingress: str,
    admin: str,
    listen: str,
    advertise: str | None,
    setup: list[str],
    setup_args: dict[str, str],
    force_register: bool,
    grace_period: float,
    name: str,
    announce: Callable[[str], None],
    stopping: asyncio.Event,
) -> None:
    from ravi._mesh_cli import NodeConfig, _setup  # noqa: PLC0415 - kept off `ravi --help`
    from ravi.integrations.runtime.restate import RestateRuntime  # noqa: PLC0415 - an extra

    runtime = RestateRuntime(
        ingress,
        admin,
        listen=listen,
        advertise=advertise,
        force_register=force_register,
        grace_period=grace_period,
    )
    await _setup(runtime, NodeConfig(setup=setup, setup_arg=setup_args))
    await _serve_threads(runtime, setup_args)
    async with runtime:
        if not stopping.is_set():
            uri = runtime.deployment_uri or listen
            announce(f"restate node {name} serving on {uri.removeprefix('http://')}")
            await stopping.wait()


async def _serve_threads(runtime: RestateRuntime, setup_args: dict[str, str]) -> None:
    """Serve the objects `ravi serve --runtime restate` keeps threads in, when ravi.server is here.

    Every worker serves them, so the web front needs no worker of its own.
    """
    try:
        from ravi.server._durable import THREAD, restate_setup  # noqa: PLC0415
    except ImportError:  # without the server extra no ravi serve runs against this worker
        return
    from ravi.errors import AlreadyExists  # noqa: PLC0415

    topic = {k: v for k, v in setup_args.items() if k == "events_topic"}
    try:
        await restate_setup(runtime, **topic)
    except AlreadyExists:  # a --setup served them already
        logger.debug("%s is served by a setup function already", THREAD)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: the command then drains, stops and exits 0."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    return stopping


@app.command()
def worker(
    ingress: Ingress = "http://127.0.0.1:8080",
    admin: Admin = "http://127.0.0.1:9070",
    listen: Annotated[
        str,
        typer.Option(
            metavar="HOST:PORT", help="Serve the deployment here (keep it across restarts)."
        ),
    ] = "127.0.0.1:9080",
    advertise: Annotated[
        str | None, typer.Option(metavar="URL", help="The URI Restate reaches this worker at.")
    ] = None,
    setup: Setup = None,
    setup_arg: SetupArg = None,
    force_register: Annotated[
        bool, typer.Option(help="Replace a deployment at the same URI (development only).")
    ] = False,
    name: Annotated[
        str, typer.Option(metavar="NAME", help="A name for this worker, for logs.")
    ] = "worker",
    grace_period: GracePeriod = 5.0,
    app_dir: AppDir = ".",
) -> None:
    """Serve agents (and the agent workflow) to a Restate server until SIGTERM."""
    from ravi._mesh_cli import NodeConfig, pairs, use_app_dir  # noqa: PLC0415

    try:
        setup_args = pairs(setup_arg or [], "--setup-arg")
    except UsageError as error:
        fail(str(error), 2)
    use_app_dir(NodeConfig(app_dir=app_dir))

    async def main(announce: Announce) -> None:
        await _run_worker(
            ingress=ingress,
            admin=admin,
            listen=listen,
            advertise=advertise,
            setup=setup or DEMO_SETUP,
            setup_args=setup_args,
            force_register=force_register,
            grace_period=grace_period,
            name=name,
            announce=announce,
            stopping=_stop_on_signals(),
        )

    run_service(main)


def find_restate_server(explicit: str | None) -> Path:
    """The restate-server binary: given, $RESTATE_SERVER_BIN, on PATH, or the checkout's.

    The checkout's is the one `make` installs from npm into tools/node_modules
    (`ravi._home`), found from any folder.
    """
    for candidate in (explicit, os.environ.get("RESTATE_SERVER_BIN")):
        if candidate:
            if not Path(candidate).is_file():
                raise UsageError(f"restate-server not found at {candidate}")
            return Path(candidate)
    on_path = shutil.which("restate-server")
    if on_path is not None:
        return Path(on_path)
    try:
        return RESTATE_SERVER.find()
    except UsageError as missing:
        raise UsageError(
            f"{missing}; or pass --server-bin FILE (npm install @restatedev/restate-server@1.7.12 "
            "ships one)"
        ) from None


@app.command()
def dev(
    server_bin: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="The restate-server binary [default: the checkout's]."),
    ] = None,
    data_dir: Annotated[
        str, typer.Option(metavar="DIR", help="Where Restate keeps its data.")
    ] = ".restate",
    ingress_port: Annotated[
        int, typer.Option(metavar="PORT", help="Restate's ingress port.")
    ] = 8080,
    admin_port: Annotated[
        int, typer.Option(metavar="PORT", help="Restate's admin API port.")
    ] = 9070,
    listen: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Where the worker serves.")
    ] = "127.0.0.1:9080",
    setup: Setup = None,
    setup_arg: SetupArg = None,
    grace_period: GracePeriod = 5.0,
    app_dir: AppDir = ".",
) -> None:
    """Start a local restate-server and a worker with your agents (the demo by default)."""
    from ravi._mesh_cli import NodeConfig, pairs, use_app_dir  # noqa: PLC0415
    from ravi.testing import RestateServer  # noqa: PLC0415

    try:
        binary, base_dir = find_restate_server(server_bin), Path(data_dir).resolve()
        setup_args = pairs(setup_arg or [], "--setup-arg")
    except UsageError as error:
        fail(str(error), 2)

    async def main(announce: Announce) -> None:
        stopping = _stop_on_signals()  # before restate-server starts: it must never be left behind
        server = RestateServer(
            binary,
            base_dir,
            ports={
                "RESTATE_INGRESS__BIND_PORT": ingress_port,
                "RESTATE_ADMIN__BIND_PORT": admin_port,
                "RESTATE_BIND_PORT": admin_port + 52,
            },
        )
        try:
            await server.start()
            typer.echo(f"restate-server: ingress {server.ingress_url}, admin {server.admin_url}")
            await _run_worker(
                ingress=server.ingress_url,
                admin=server.admin_url,
                listen=listen,
                advertise=None,
                setup=setup or DEMO_SETUP,
                setup_args=setup_args,
                force_register=True,
                grace_period=grace_period,
                name="dev",
                announce=announce,
                stopping=stopping,
            )
        finally:
            await server.stop()

    use_app_dir(NodeConfig(app_dir=app_dir))
    run_service(main)
