"""The `ravi` command line.

Help is plain text wrapped to the terminal (80 columns at most), every failure
is one line and a documented exit code (`ravi._cli_errors`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ravi._cli_errors import (
    CommandGroup,
    UsageError,
    command_name,
    fail,
    run_command,
    run_service,
    show_help_without_command,
)
from ravi._restate_cli import app as restate_app
from ravi._version import __version__

app = typer.Typer(
    name="ravi",
    cls=CommandGroup,
    help="ravi: a polyglot agent runtime.",
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"max_content_width": 80},
)
app.add_typer(restate_app, name="restate")

Address = Annotated[str, typer.Option("--addr", metavar="HOST:PORT", help="The node to talk to.")]
Token = Annotated[
    str | None,
    typer.Option(metavar="TOKEN", help="Bearer token for the node.", envvar="RAVI_TOKEN"),
]
Timeout = Annotated[
    float, typer.Option(metavar="SECONDS", help="Seconds before the call's deadline.")
]
CaFile = Annotated[
    str | None, typer.Option("--tls-ca", metavar="FILE", help="Dial with TLS, trusting this CA.")
]
TypeName = Annotated[
    str,
    typer.Option(
        "--type", metavar="NAME", help="The message type's full name (ravi.examples.v1.Task)."
    ),
]
JsonBody = Annotated[str, typer.Option("--json", metavar="JSON", help="The message as JSON.")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ravi {__version__}")
        raise typer.Exit


@app.callback(invoke_without_command=True)
def _root(
    context: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """ravi: a polyglot agent runtime."""
    show_help_without_command(context)


@app.command()
def demo(
    task: Annotated[
        str | None,
        typer.Option(metavar="TEXT", help="The task to run (a question about ravi's docs)."),
    ] = None,
    docs: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="The Markdown files the searcher searches [default: the docs of the ravi "
            "checkout, $RAVI_HOME or where ravi is installed from].",
        ),
    ] = None,
    mesh: Annotated[
        bool, typer.Option(help="Run the agents on node processes in three languages.")
    ] = False,
    trace: Annotated[
        bool,
        typer.Option(help="Run on the mesh, traced into a Jaeger started here; print the trace."),
    ] = False,
    keep: Annotated[
        bool, typer.Option(help="With --trace: keep Jaeger running to query it, until Ctrl-C.")
    ] = False,
) -> None:
    """Run the demo: an orchestrator asks a searcher, a writer and a reviewer."""
    from ravi._demo.run import DEFAULT_TASK, run_local, run_mesh, run_traced  # noqa: PLC0415
    from ravi._home import docs as home_docs  # noqa: PLC0415

    try:
        corpus = docs if docs is not None else home_docs()
        if not corpus.is_dir():
            raise UsageError(f"--docs {docs}: not a folder of Markdown files")
    except UsageError as error:
        fail(str(error), 2)
    if keep and not trace:
        fail("--keep keeps the Jaeger of --trace running: add --trace", 2)
    question, corpus = task or DEFAULT_TASK, corpus.resolve()
    if trace:
        run_command(run_traced(question, corpus, keep=keep))
    elif mesh:
        run_command(run_mesh(question, corpus))
    else:
        asyncio.run(run_local(question, corpus))


def node(config: Path | None = None, **given: Any) -> None:
    """Run a node of the mesh hosting the given agents, until SIGTERM or SIGINT."""
    from ravi._mesh_cli import NodeConfig, run_node, use_app_dir  # noqa: PLC0415

    try:
        settings = NodeConfig.load(config, given)
    except UsageError as error:
        fail(str(error), 2)
    use_app_dir(settings)
    run_service(lambda announce: run_node(settings, announce=announce))


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
        annotation=Annotated[
            Path | None,
            typer.Option(
                metavar="FILE",
                help="A TOML file with these settings, keyed by their names (node-id = "
                '"a", [peer] b = "HOST:PORT"); flags win.',
            ),
        ],
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
    host: Annotated[
        str, typer.Option(metavar="HOST", help="Interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(metavar="PORT", help="Port to listen on (0: any free port).")
    ] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            metavar="TOKEN",
            help="The bearer token clients must send (or RAVI_SERVER_TOKEN); "
            "a random one is made and printed when absent.",
            envvar="RAVI_SERVER_TOKEN",
        ),
    ] = None,
    runtime: Annotated[
        str,
        typer.Option(
            metavar="local|grpc|restate",
            help="local: host the agents here; grpc: join a mesh as a client; "
            "restate: run them durably on a Restate server.",
        ),
    ] = "local",
    restate_ingress: Annotated[
        str,
        typer.Option(
            metavar="URL",
            help="Restate's ingress (--runtime restate).",
            envvar="RAVI_RESTATE_INGRESS",
        ),
    ] = "http://127.0.0.1:8080",
    restate_admin: Annotated[
        str,
        typer.Option(
            metavar="URL",
            help="Restate's admin API (--runtime restate).",
            envvar="RAVI_RESTATE_ADMIN",
        ),
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
            metavar="DIR",
            help="Where the thread history is kept (local and grpc): DIR/threads.db, SQLite.",
            envvar="RAVI_DATA_DIR",
        ),
    ] = ".ravi",
    store: Annotated[
        str | None,
        typer.Option(
            metavar="sqlite|memory",
            help="sqlite (default: in --data-dir) or memory: forgotten on restart.",
        ),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME=HOST:PORT", help="A mesh node (--runtime grpc)."),
    ] = None,
    peer_token: Annotated[
        str | None,
        typer.Option(metavar="TOKEN", help="Bearer token for the mesh nodes.", envvar="RAVI_TOKEN"),
    ] = None,
    agent_type: Annotated[
        str, typer.Option(metavar="TYPE", help="The ReAct agent type to run tasks on.")
    ] = ("assistant"),
    setup: Annotated[
        list[str] | None,
        typer.Option(
            metavar="MODULE:FUNCTION",
            help="Call this function with the runtime to register agents (not the demo).",
        ),
    ] = None,
    setup_arg: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME=VALUE", help="A keyword argument for the setup functions."),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            metavar="demo|openai:MODEL",
            help="The demo assistant's model: demo (a ScriptedModel) or openai:MODEL_NAME "
            "(OPENAI_API_KEY, OPENAI_BASE_URL).",
        ),
    ] = "demo",
    base_url: Annotated[
        str | None,
        typer.Option(metavar="URL", help="The OpenAI-compatible endpoint, ending in /v1."),
    ] = None,
    run_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Seconds a run may take, waiting for approvals included "
            "(default: 3600; no limit with restate).",
        ),
    ] = None,
    grace_period: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", help="Seconds requests in progress get to finish on SIGTERM."
        ),
    ] = 5.0,
    app_dir: Annotated[
        str, typer.Option(metavar="DIR", help="Where to import setup functions from.")
    ] = ".",
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
    from ravi._mesh_cli import pairs, use_app_dir  # noqa: PLC0415
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
        fail(str(error), 2)
    use_app_dir(app_dir)
    run_service(lambda announce: run_server(config, announce=announce))


@app.command()
def send(
    addr: Address,
    to: Annotated[str, typer.Option(metavar="TYPE/KEY", help="The recipient.")],
    type_name: TypeName,
    json_body: JsonBody,
    token: Token = None,
    timeout: Timeout = 10.0,
    tls_ca: CaFile = None,
) -> None:
    """Send a message to an agent through a node and print the reply.

    Prints the node's SendResponse as JSON: {"nodeId": ..., "result": {"type":
    ..., "value": ...}}. A failure is one line on stderr: the gRPC code, the
    reason and the message; exit 1.
    """
    from ravi._mesh_cli import print_json, send  # noqa: PLC0415

    print_json(
        run_command(send(addr, to, type_name, json_body, token=token, timeout=timeout, ca=tls_ca))
    )


@app.command()
def publish(
    addr: Address,
    topic: Annotated[str, typer.Option(metavar="TYPE/SOURCE", help="The topic.")],
    type_name: TypeName,
    json_body: JsonBody,
    token: Token = None,
    timeout: Timeout = 10.0,
    tls_ca: CaFile = None,
) -> None:
    """Publish a message on a topic through a node.

    Prints the node's PublishResponse as JSON: {"localDeliveries": N,
    "streamDeliveries": N}.
    """
    from ravi._mesh_cli import print_json, publish  # noqa: PLC0415

    print_json(
        run_command(
            publish(addr, topic, type_name, json_body, token=token, timeout=timeout, ca=tls_ca)
        )
    )


@app.command()
def subscribe(
    addr: Address,
    topic_type: Annotated[
        list[str] | None,
        typer.Option(metavar="TYPE", help="Receive the events of this topic type. Repeatable."),
    ] = None,
    prefix: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PREFIX", help="Receive the topic types with this prefix. Repeatable."
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(metavar="N", help="Stop after this many events (fewer is an error)."),
    ] = None,
    token: Token = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Stop after this long.")] = 60.0,
    tls_ca: CaFile = None,
) -> None:
    """Print a node's description, then the events published through it, as JSON lines.

    A node streams what is published through it: by its own agents and by
    clients publishing to it. Events published through its peers reach the
    node's agents but not this stream: subscribe to each node to follow a mesh.
    Lines are {"node": NodeInfo} and {"event": Event}, as protobuf JSON.
    """
    from ravi._mesh_cli import print_json, subscribe  # noqa: PLC0415
    from ravi.mesh.v1 import types_pb2  # noqa: PLC0415

    filters = [types_pb2.TopicFilter(topic_type=t) for t in topic_type or []]
    filters += [types_pb2.TopicFilter(topic_type_prefix=p) for p in prefix or []]
    run_command(
        subscribe(
            addr,
            filters,
            count=count,
            token=token,
            timeout=timeout,
            ca=tls_ca,
            emit=print_json,
            say=lambda line: typer.echo(line, err=True),
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

    Prints its NodeInfo as protobuf JSON (camelCase, as grpcurl does); each agent
    type comes with the number of its instances active on the node.
    """
    from ravi._mesh_cli import describe, print_json  # noqa: PLC0415

    print_json(run_command(describe(addr, token=token, timeout=timeout, ca=tls_ca)))


def main() -> None:
    """Run the `ravi` command line: a usage error is one line and exit 2."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    _node_command()
    try:
        code = typer.main.get_command(app).main(prog_name="ravi", standalone_mode=False)
    except typer.TyperException as error:  # typer's parsing errors: a usage error
        context = getattr(error, "ctx", None)
        where = context.command_path if context is not None else command_name()
        message = error.format_message().rstrip(".")
        typer.echo(f"{where}: {message} (see {where} --help)", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("", err=True)
        sys.exit(130)
    except ImportError as missing:  # an optional extra not installed: it says which
        typer.echo(f"{command_name()}: {missing}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
