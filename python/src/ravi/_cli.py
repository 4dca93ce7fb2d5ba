"""The `ravi` command line."""

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
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """ravi: a polyglot agent runtime."""


def main() -> None:
    """Run the `ravi` command line."""
    app()
