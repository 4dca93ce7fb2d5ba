"""The `ravi` command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from ravi._version import __version__

app = typer.Typer(
    name="ravi",
    help="ravi: a polyglot agent runtime.",
    no_args_is_help=True,
    add_completion=False,
)


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


@app.command()
def demo(
    task: Annotated[
        str | None, typer.Option(help="The task to run (a question about ravi's docs).")
    ] = None,
    docs: Annotated[
        Path, typer.Option(help="The folder of Markdown files the searcher agent searches.")
    ] = Path("docs"),
) -> None:
    """Run the demo: an orchestrator asks a searcher, a writer and a reviewer."""
    # Imported here so that `ravi --version` and `--help` stay fast.
    from ravi._demo.run import DEFAULT_TASK, run_local  # noqa: PLC0415

    if not docs.is_dir():
        raise typer.BadParameter(f"{docs} is not a folder of Markdown files", param_hint="--docs")
    asyncio.run(run_local(task or DEFAULT_TASK, docs))


def main() -> None:
    """Run the `ravi` command line."""
    app()
