"""`ravi restate`: a worker serving agents to a Restate server, and a local dev setup."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Run agents durably on Restate.", no_args_is_help=True)

Ingress = Annotated[str, typer.Option(help="Restate's ingress URL.")]
Admin = Annotated[str, typer.Option(help="Restate's admin API URL.")]
Setup = Annotated[
    list[str] | None,
    typer.Option(help="Call module:function(runtime) to register agents and workflows."),
]
SetupArg = Annotated[
    list[str] | None, typer.Option(help="A keyword argument for the setup functions, K=V.")
]
AppDir = Annotated[str, typer.Option(help="Where to import setup functions from.")]

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
    name: str,
    announce: Callable[[str], None],
) -> None:
    from ravi._mesh_cli import NodeConfig, _setup  # noqa: PLC0415 - kept off `ravi --help`
    from ravi.integrations.runtime.restate import RestateRuntime  # noqa: PLC0415 - an extra

    runtime = RestateRuntime(
        ingress, admin, listen=listen, advertise=advertise, force_register=force_register
    )
    await _setup(runtime, NodeConfig(setup=setup, setup_arg=setup_args))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with runtime:
        uri = runtime.deployment_uri or listen
        announce(f"restate node {name} serving on {uri.removeprefix('http://')}")
        await stopping.wait()


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    from ravi._mesh_cli import run_command  # noqa: PLC0415

    run_command(coroutine)


@app.command()
def worker(
    ingress: Ingress = "http://127.0.0.1:8080",
    admin: Admin = "http://127.0.0.1:9070",
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve the deployment on (keep it across restarts).")
    ] = "127.0.0.1:9080",
    advertise: Annotated[
        str | None, typer.Option(help="The URI Restate reaches this worker at.")
    ] = None,
    setup: Setup = None,
    setup_arg: SetupArg = None,
    force_register: Annotated[
        bool, typer.Option(help="Replace a deployment at the same URI (development only).")
    ] = False,
    name: Annotated[str, typer.Option(help="A name for this worker, for logs.")] = "worker",
    app_dir: AppDir = ".",
) -> None:
    """Serve agents (and the agent workflow) to a Restate server until SIGTERM."""
    from ravi._mesh_cli import NodeConfig, UsageError, pairs, use_app_dir  # noqa: PLC0415

    try:
        setup_args = pairs(setup_arg or [], "--setup-arg")
    except UsageError as error:
        typer.echo(f"ravi: {error}", err=True)
        raise typer.Exit(2) from None
    use_app_dir(NodeConfig(app_dir=app_dir))
    _run(
        _run_worker(
            ingress=ingress,
            admin=admin,
            listen=listen,
            advertise=advertise,
            setup=setup or DEMO_SETUP,
            setup_args=setup_args,
            force_register=force_register,
            name=name,
            announce=typer.echo,
        )
    )


def find_restate_server(explicit: str | None) -> Path:
    """The restate-server binary: given, $RESTATE_SERVER_BIN, on PATH, or from npm here."""
    from ravi._mesh_cli import UsageError  # noqa: PLC0415

    candidates = [
        explicit,
        os.environ.get("RESTATE_SERVER_BIN"),
        shutil.which("restate-server"),
        "tools/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server",
        "node_modules/@restatedev/restate-server-linux-x64/bin/restate-server",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise UsageError(
        "restate-server not found: install it (npm install @restatedev/restate-server@1.7.12) "
        "and pass --server-bin or set RESTATE_SERVER_BIN"
    )


@app.command()
def dev(
    server_bin: Annotated[str | None, typer.Option(help="The restate-server binary.")] = None,
    data_dir: Annotated[str, typer.Option(help="Where Restate keeps its data.")] = ".restate",
    ingress_port: Annotated[int, typer.Option(help="Restate's ingress port.")] = 8080,
    admin_port: Annotated[int, typer.Option(help="Restate's admin API port.")] = 9070,
    listen: Annotated[str, typer.Option(help="HOST:PORT of the worker.")] = "127.0.0.1:9080",
    setup: Setup = None,
    setup_arg: SetupArg = None,
    app_dir: AppDir = ".",
) -> None:
    """Start a local restate-server and a worker with your agents (the demo by default)."""
    from ravi._mesh_cli import NodeConfig, UsageError, pairs, use_app_dir  # noqa: PLC0415
    from ravi.testing import RestateServer  # noqa: PLC0415

    try:
        binary, base_dir = find_restate_server(server_bin), Path(data_dir).resolve()
    except UsageError as error:
        typer.echo(f"ravi: {error}", err=True)
        raise typer.Exit(2) from None

    async def main() -> None:
        server = RestateServer(
            binary,
            base_dir,
            ports={
                "RESTATE_INGRESS__BIND_PORT": ingress_port,
                "RESTATE_ADMIN__BIND_PORT": admin_port,
                "RESTATE_BIND_PORT": admin_port + 52,
            },
        )
        await server.start()
        typer.echo(f"restate-server: ingress {server.ingress_url}, admin {server.admin_url}")
        try:
            await _run_worker(
                ingress=server.ingress_url,
                admin=server.admin_url,
                listen=listen,
                advertise=None,
                setup=setup or DEMO_SETUP,
                setup_args=pairs(setup_arg or [], "--setup-arg"),
                force_register=True,
                name="dev",
                announce=typer.echo,
            )
        finally:
            await server.stop()

    use_app_dir(NodeConfig(app_dir=app_dir))
    _run(main())
