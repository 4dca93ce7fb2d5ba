"""How the `ravi` commands fail: one line on stderr and a documented exit code.

The exit codes, the same in `ravi`, `ravi-go` and `ravi-node`:

    0  done (a long-running command stopped by SIGTERM or SIGINT too)
    1  a service error: the node answered with an error or could not be reached,
       or a long-running command failed after it started serving
    2  the command cannot run as asked: bad flags, arguments or config file, or
       a long-running command (node, serve, restate worker, restate dev) that
       could not start (its port is taken, a file is unreadable, a peer or
       Restate is unreachable, a --setup function failed)

Every failure is one line, `ravi COMMAND: what happened`; no traceback, except
for a bug in ravi itself.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from typer.core import TyperGroup

from ravi.errors import RaviError

T = TypeVar("T")

USAGE = 2
SERVICE = 1


class UsageError(Exception):
    """A command that cannot run as asked: printed as one line, exit 2."""


_running = ["ravi"]


def name_command(path: str) -> None:
    """Record the command running (`ravi send`, `ravi restate worker`), for its error lines."""
    _running[0] = path


def command_name() -> str:
    """The command running, as typed: `ravi send`, `ravi restate worker`."""
    return _running[0]


class CommandGroup(TyperGroup):
    """A command group whose help lists each command with its whole first sentence.

    Click cuts a command's summary to fit one line ("Run the demo: an
    orchestrator asks a searcher, a writer and..."); here it wraps instead, so
    the help never truncates a word at any width.
    """

    # The context and formatter are those of the click typer vendors: no public names.
    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.short_help or _first_sentence(command.help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _first_sentence(text: str) -> str:
    paragraph = " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]


def show_help_without_command(context: typer.Context) -> None:
    """A group run without a command: its help, exit 2; else name the command for errors."""
    if context.invoked_subcommand is None:
        if not context.resilient_parsing:
            typer.echo(context.get_help())
        raise typer.Exit(USAGE)
    name_command(f"{context.command_path} {context.invoked_subcommand}")


def fail(message: str, code: int) -> NoReturn:
    """Print `message` as the command's one line on stderr and exit with `code`."""
    typer.echo(f"{command_name()}: {message}", err=True)
    raise typer.Exit(code)


def describe_error(error: RaviError) -> str:
    """A ravi error as the client commands print it: code, reason, message."""
    reason = f" ({error.reason})" if error.reason else ""
    return f"{error.code.name}{reason}: {error.message}"


def run_command(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a client command: a usage error exits 2, a service error 1."""
    try:
        return asyncio.run(coroutine)
    except UsageError as error:
        fail(str(error), USAGE)
    except RaviError as error:
        fail(describe_error(error), SERVICE)


Announce = Callable[[str], None]


def run_service(main: Callable[[Announce], Coroutine[Any, Any, None]]) -> None:
    """Run a long-running command until it stops.

    `main` calls its `announce` argument once it serves (the first line it
    prints). Whatever stops it before that is a failure to start: one line,
    exit 2. After that, a failure exits 1.
    """
    started = False

    def announce(line: str) -> None:
        nonlocal started
        started = True
        typer.echo(line)

    try:
        asyncio.run(main(announce))
    except UsageError as error:
        fail(str(error), USAGE)
    except (RaviError, OSError) as error:
        fail(startup_reason(error), SERVICE if started else USAGE)


def startup_reason(error: RaviError | OSError) -> str:
    """What went wrong, in the words a user can act on."""
    if isinstance(error, RaviError):
        return error.message
    if error.filename is not None and error.strerror:
        return f"{Path(error.filename)}: {error.strerror.lower()}"
    return str(error) or type(error).__name__


def user_code_failed(what: str, error: BaseException) -> UsageError:
    """A --setup function or an agent's constructor raised: where, what, in one line."""
    ours = Path(__file__).parent
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not Path(frame.filename).is_relative_to(ours)
    ]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return UsageError(f"{what} raised {type(error).__name__}: {error}{where}")
