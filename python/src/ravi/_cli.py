"""The `ravi` command line."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ravi._restate_cli import app as restate_app
from ravi._version import __version__

app = typer.Typer(
    name="ravi",
    help="ravi: a polyglot agent runtime.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(restate_app, name="restate")
T = TypeVar("T")

Address = Annotated[str, typer.Option("--addr", help="The node to talk to, HOST:PORT.")]
Token = Annotated[
    str | None,
    typer.Option(help="Bearer token for the node (or RAVI_TOKEN).", envvar="RAVI_TOKEN"),
]
Timeout = Annotated[float, typer.Option(help="Seconds before the call's deadline.")]
CaFile = Annotated[str | None, typer.Option("--tls-ca", help="Dial with TLS, trusting this CA.")]
TypeName = Annotated[
    str, typer.Option("--type", help="The message type's full name, e.g. ravi.examples.v1.Task.")
]
JsonBody = Annotated[str, typer.Option("--json", help="The message as JSON.")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ravi {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """ravi: a polyglot agent runtime."""


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    # Imported here so that `ravi --version` and `--help` stay fast.
    from ravi._mesh_cli import run_command  # noqa: PLC0415

    return run_command(coroutine)


@app.command()
def demo(
    task: Annotated[
        str | None, typer.Option(help="The task to run (a question about ravi's docs).")
    ] = None,
    docs: Annotated[
        Path, typer.Option(help="The folder of Markdown files the searcher agent searches.")
    ] = Path("docs"),
    mesh: Annotated[
        bool, typer.Option(help="Run the agents on ravi node processes instead of in-process.")
    ] = False,
    trace: Annotated[
        bool, typer.Option(help="With --mesh: trace into a Jaeger started here, print the trace.")
    ] = False,
) -> None:
    """Run the demo: an orchestrator asks a searcher, a writer and a reviewer."""
    from ravi._demo.run import (  # noqa: PLC0415
        DEFAULT_TASK,
        polyglot_available,
        run_local,
        run_mesh,
        run_traced,
    )

    if not docs.is_dir():
        raise typer.BadParameter(f"{docs} is not a folder of Markdown files", param_hint="--docs")
    question, corpus = task or DEFAULT_TASK, docs.resolve()
    if trace:
        asyncio.run(run_traced(question, corpus, polyglot=polyglot_available()))
    elif mesh:
        asyncio.run(run_mesh(question, corpus, polyglot=polyglot_available()))
    else:
        asyncio.run(run_local(question, corpus))


def node(config: Path | None = None, **given: Any) -> None:
    """Run a node of the mesh hosting the given agents, until SIGTERM or SIGINT."""
    from ravi._mesh_cli import NodeConfig, UsageError, run_node, use_app_dir  # noqa: PLC0415

    try:
        settings = NodeConfig.load(config, given)
    except UsageError as error:
        typer.echo(f"ravi: {error}", err=True)
        raise typer.Exit(2) from None
    use_app_dir(settings)
    _run(run_node(settings, announce=typer.echo))


def _node_command() -> None:
    """Register `ravi node`: its flags are the fields of NodeConfig and GrpcRuntimeOptions.

    Imported here rather than at the top so that `ravi --version` stays fast;
    typer reads the command's parameters from its signature, built from the
    options dataclasses (`ravi._options`), so a new option is a new field only.
    """
    from ravi._mesh_cli import NodeConfig  # noqa: PLC0415
    from ravi._options import parameters  # noqa: PLC0415
    from ravi.integrations.runtime.grpc import GrpcRuntimeOptions  # noqa: PLC0415

    config = inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Path | None, typer.Option(help="A TOML file with these settings.")],
    )

    def command(**given: Any) -> None:
        node(given.pop("config"), **given)

    command.__doc__ = node.__doc__
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [config, *parameters(NodeConfig, GrpcRuntimeOptions)]
    )
    app.command("node")(command)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            help="The bearer token clients must send (or RAVI_SERVER_TOKEN); "
            "a random one is made and printed when absent.",
            envvar="RAVI_SERVER_TOKEN",
        ),
    ] = None,
    runtime: Annotated[
        str,
        typer.Option(
            help="local: host the agents here; grpc: join a mesh as a client; "
            "restate: run them durably on a Restate server."
        ),
    ] = "local",
    restate_ingress: Annotated[
        str,
        typer.Option(help="Restate's ingress (--runtime restate).", envvar="RAVI_RESTATE_INGRESS"),
    ] = "http://127.0.0.1:8080",
    restate_admin: Annotated[
        str,
        typer.Option(help="Restate's admin API (--runtime restate).", envvar="RAVI_RESTATE_ADMIN"),
    ] = "http://127.0.0.1:9070",
    demo: Annotated[
        bool | None,
        typer.Option(
            help="Host the demo assistant here (local only; the default without --setup)."
        ),
    ] = None,
    data_dir: Annotated[
        str,
        typer.Option(
            help="Where the thread history is kept (local and grpc): DIR/threads.db, SQLite.",
            envvar="RAVI_DATA_DIR",
        ),
    ] = ".ravi",
    store: Annotated[
        str | None,
        typer.Option(help="sqlite (default: in --data-dir) or memory: forgotten on restart."),
    ] = None,
    peer: Annotated[
        list[str] | None, typer.Option(help="A mesh node, NAME=HOST:PORT (--runtime grpc).")
    ] = None,
    peer_token: Annotated[
        str | None, typer.Option(help="Bearer token for the mesh nodes.", envvar="RAVI_TOKEN")
    ] = None,
    agent_type: Annotated[str, typer.Option(help="The ReAct agent type to run tasks on.")] = (
        "assistant"
    ),
    setup: Annotated[
        list[str] | None,
        typer.Option(help="Call module:function(runtime) to register agents (not the demo)."),
    ] = None,
    setup_arg: Annotated[
        list[str] | None, typer.Option(help="A keyword argument for the setup functions, K=V.")
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="The demo assistant's model: demo (a ScriptedModel) or openai:MODEL_NAME "
            "(OPENAI_API_KEY, OPENAI_BASE_URL)."
        ),
    ] = "demo",
    base_url: Annotated[
        str | None, typer.Option(help="The OpenAI-compatible endpoint, ending in /v1.")
    ] = None,
    run_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a run may take, waiting for approvals included "
            "(default: 3600; no limit with restate)."
        ),
    ] = None,
    grace_period: Annotated[
        float, typer.Option(help="Seconds requests in progress get to finish on SIGTERM.")
    ] = 5.0,
    app_dir: Annotated[str, typer.Option(help="Where to import setup functions from.")] = ".",
    a2a: Annotated[
        bool,
        typer.Option(
            help="Also serve the agent type (and every --a2a-agent) as A2A agents: Agent "
            "Cards, JSON-RPC and gRPC (needs the a2a extra; docs/a2a.md)."
        ),
    ] = False,
    a2a_agent: Annotated[
        list[str] | None,
        typer.Option(
            help="Serve one more agent type over A2A: TYPE, TYPE=module:Class, or "
            "module:name of an ExposedAgent."
        ),
    ] = None,
    a2a_grpc: Annotated[
        str,
        typer.Option(help="HOST:PORT of the A2A gRPC binding (port 0: any free port; off: none)."),
    ] = "127.0.0.1:0",
    a2a_url: Annotated[
        str | None,
        typer.Option(
            help="The base URL clients reach this server at, for the Agent Cards "
            "(default: the URL each card request came to)."
        ),
    ] = None,
) -> None:
    """Serve ReAct agents over HTTP: a web page, Server-Sent Events, and approvals."""
    from ravi._mesh_cli import UsageError, pairs, use_app_dir  # noqa: PLC0415
    from ravi.server._serve import ServeConfig, run_server  # noqa: PLC0415

    try:
        config = ServeConfig(
            host=host,
            port=port,
            token=token,
            runtime=runtime,
            peers=pairs(peer or [], "--peer"),
            peer_token=peer_token,
            agent_type=agent_type,
            setup=setup or [],
            setup_args=pairs(setup_arg or [], "--setup-arg"),
            model=model,
            base_url=base_url,
            run_timeout=run_timeout,
            restate_ingress=restate_ingress,
            restate_admin=restate_admin,
            demo=demo,
            data_dir=data_dir,
            store=store,
            grace_period=grace_period,
            a2a=a2a,
            a2a_agents=a2a_agent or [],
            a2a_grpc=None if a2a_grpc == "off" else a2a_grpc,
            a2a_url=a2a_url,
        )
    except UsageError as error:
        typer.echo(f"ravi: {error}", err=True)
        raise typer.Exit(2) from None
    use_app_dir(app_dir)
    _run(run_server(config, announce=typer.echo))


@app.command()
def send(
    addr: Address,
    to: Annotated[str, typer.Option(help="The recipient, TYPE/KEY.")],
    type_name: TypeName,
    json_body: JsonBody,
    token: Token = None,
    timeout: Timeout = 10.0,
    tls_ca: CaFile = None,
) -> None:
    """Send a message to an agent through a node and print the reply."""
    from ravi._mesh_cli import print_json, send  # noqa: PLC0415

    print_json(_run(send(addr, to, type_name, json_body, token=token, timeout=timeout, ca=tls_ca)))


@app.command()
def publish(
    addr: Address,
    topic: Annotated[str, typer.Option(help="The topic, TYPE/SOURCE.")],
    type_name: TypeName,
    json_body: JsonBody,
    token: Token = None,
    timeout: Timeout = 10.0,
    tls_ca: CaFile = None,
) -> None:
    """Publish a message on a topic through a node."""
    from ravi._mesh_cli import print_json, publish  # noqa: PLC0415

    print_json(
        _run(publish(addr, topic, type_name, json_body, token=token, timeout=timeout, ca=tls_ca))
    )


@app.command()
def subscribe(
    addr: Address,
    topic_type: Annotated[
        list[str] | None, typer.Option(help="Receive topics of this type.")
    ] = None,
    prefix: Annotated[
        list[str] | None, typer.Option(help="Receive topic types with this prefix.")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    token: Token = None,
    timeout: Timeout = 60.0,
    tls_ca: CaFile = None,
) -> None:
    """Print a node's description, then the events published on it, as JSON lines."""
    from ravi._mesh_cli import print_json, subscribe  # noqa: PLC0415
    from ravi.mesh.v1 import types_pb2  # noqa: PLC0415

    filters = [types_pb2.TopicFilter(topic_type=t) for t in topic_type or []]
    filters += [types_pb2.TopicFilter(topic_type_prefix=p) for p in prefix or []]
    _run(
        subscribe(
            addr, filters, count=count, token=token, timeout=timeout, ca=tls_ca, emit=print_json
        )
    )


@app.command()
def describe(
    addr: Address,
    token: Token = None,
    timeout: Timeout = 10.0,
    tls_ca: CaFile = None,
) -> None:
    """Print a node's description: id, contract version, agent types, subscriptions.

    Each agent type comes with the number of its instances active on the node.
    """
    from ravi._mesh_cli import describe, print_json  # noqa: PLC0415

    print_json(_run(describe(addr, token=token, timeout=timeout, ca=tls_ca)))


def main() -> None:
    """Run the `ravi` command line."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    _node_command()
    app()
