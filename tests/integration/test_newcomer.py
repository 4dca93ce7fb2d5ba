"""A newcomer's first hour, as a script: what issue 19 asked a new user to be able to do.

1. A fresh clone of this commit runs the README's commands: `make demo` for real
   (it bootstraps what the demo needs, from the caches the Makefile shares, and a
   second run installs nothing), `make test` as a dry run (its real run is CI's,
   on a clean clone, and would run this test again).
2. Every block of README.md and docs/ runs from a folder of its own: the python
   blocks in tests/unit/test_docs.py, the sh blocks and the python blocks that
   need a server in tests/integration/test_doc_blocks.py (one runner,
   tests/doc_blocks.py); they run in the same suite, not again here.
3. Every command's `--help`, in `ravi`, `ravi-go` and `ravi-node`, fits 80
   columns and cuts no word short.
4. The failures the issue names are one line each, no traceback, with the exit
   code `ravi._cli_errors` documents (1: a service error, 2: cannot run as
   asked, a server that cannot start included). tests/integration/test_cli.py
   checks the client failures and a node that cannot start in all three
   languages.

Every command runs from a folder outside the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ravi.testing import ravi_command
from tests.integration.test_cli import built, client, free_port
from tests.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

HELP_WIDTH = 80
# A word cut short: "and..." or "and…"; never "[ARGS]..." or "{"type": ...}".
CUT_WORD = re.compile(r"\w(\.\.\.|…)")
# A command in a command list: two spaces, the name, two or more spaces, its summary.
LISTED_COMMAND = re.compile(r"^  ([a-z][a-z-]*) {2,}\S", re.MULTILINE)
# A node's log line: `ravi NODE-ID LEVEL: message`.
LOG_LINE = re.compile(r"^ravi \S+ (debug|info|warning): ")


def run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_fresh_clone_runs_the_readme_commands(tmp_path: Path) -> None:
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.fail("git and make are needed: the README's commands are make targets")
    clone = tmp_path / "ravi"
    cloned = run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], tmp_path)
    assert cloned.returncode == 0, cloned.stderr
    # The demo's own bootstrap, not this suite's virtualenv.
    env = {"VIRTUAL_ENV": "", "PATH": os.environ["PATH"].replace(f"{REPO_ROOT}/", "/nowhere/")}

    started = time.monotonic()
    demo = run(["make", "demo"], clone, env, timeout=420)
    first = time.monotonic() - started
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    for hop in ("(python)", "(go)", "(node)"):
        assert hop in demo.stdout, demo.stdout
    assert "Traceback" not in demo.stderr

    started = time.monotonic()
    again = run(["make", "demo"], clone, env, timeout=120)
    second = time.monotonic() - started
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for install in ("pip install", "npm ci", "go build", "-m venv"):
        assert install not in again.stdout, f"a second `make demo` ran {install}: {again.stdout}"
    print(f"make demo on a fresh clone: {first:.0f} s, then {second:.0f} s")

    planned = run(["make", "--dry-run", "test"], clone, env)
    assert planned.returncode == 0, planned.stderr


def helps(program: list[str], folder: Path) -> Iterator[tuple[str, str]]:
    """Each command's `--help` at 80 columns, as (command line, output), groups first."""
    pending: list[list[str]] = [[]]
    seen = 0
    while pending and seen < 50:
        words = pending.pop(0)
        seen += 1
        result = run([*program, *words, "--help"], folder, {"COLUMNS": str(HELP_WIDTH)})
        line = " ".join([Path(program[-1]).name, *words, "--help"])
        assert result.returncode == 0, f"{line}: {result.stderr}"
        yield line, result.stdout
        # A group's help lists its commands; the top level of ravi-go and ravi-node too.
        if not words or re.search(r"^commands:$", result.stdout, re.I | re.M):
            pending += [[*words, name] for name in LISTED_COMMAND.findall(result.stdout)]


def node_commands() -> set[str]:
    return {"node", "send", "publish", "subscribe", "describe"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("python", node_commands() | {"demo", "serve", "restate", "restate worker", "restate dev"}),
        ("go", node_commands()),
        ("node", node_commands()),
    ],
)
def test_every_help_fits_80_columns_uncut(name: str, expected: set[str], tmp_path: Path) -> None:
    program = ravi_command() if name == "python" else client(built(name))
    shown = dict(helps(program, tmp_path))
    commands = {" ".join(line.split()[1:-1]) for line in shown}
    assert expected <= commands, f"commands not found in the help: {expected - commands}"
    for line, text in shown.items():
        for row in text.splitlines():
            assert len(row) <= HELP_WIDTH, f"{line}: a line of {len(row)} columns: {row!r}"
            assert not CUT_WORD.search(row), f"{line}: a word cut short: {row!r}"


@pytest.fixture
def taken() -> Iterator[str]:
    """A loopback address something listens on."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield f"127.0.0.1:{held.getsockname()[1]}"


def test_the_issues_failures_are_one_line_and_their_exit_code(taken: str, tmp_path: Path) -> None:
    ravi = ravi_command()
    closed = f"127.0.0.1:{free_port()}"
    port = taken.rpartition(":")[2]
    not_a_checkout = tmp_path / "not-ravi"
    not_a_checkout.mkdir()
    (tmp_path / "good.toml").write_text(
        f'node-id = "a"\nlisten = "{taken}"\nagent = ["writer=ravi._demo.agents:WriterAgent"]\n'
        f'wait-for-peers = 1\n[peer]\nb = "{closed}"\n'
    )
    (tmp_path / "bad.toml").write_text('node-id = "a"\nnodeid = "b"\n')
    cases: list[tuple[list[str], dict[str, str], int, str]] = [
        # Servers that cannot start: exit 2.
        (["node", "--listen", taken], {}, 2, f"cannot listen on {taken}: address already in use"),
        (["serve", "--port", port], {}, 2, f"cannot listen on {taken}: address already in use"),
        (
            ["restate", "worker", "--listen", taken],
            {},
            2,
            f"cannot listen on {taken}: address already in use",
        ),
        (
            ["node", "--wait-for-peers", "1", "--peer", f"b={closed}"],
            {},
            2,
            f"peers not connected after 1 s: b at {closed}",
        ),
        # The keys the docs promise are read (the failure is the port), a wrong one is named.
        (["node", "--config", "good.toml"], {}, 2, f"cannot listen on {taken}: address"),
        (
            ["node", "--config", "bad.toml"],
            {},
            2,
            'bad.toml: unknown key "nodeid" (did you mean "node-id"?); the keys are: advertise, ',
        ),
        # Clients: a node that is not there is a service error, a malformed address a usage error.
        (["describe", "--addr", closed], {}, 1, f"UNAVAILABLE: cannot reach a node at {closed}"),
        (["describe", "--addr", "localhost"], {}, 2, "--addr localhost has no port"),
        (["describe", "--addr", f"http://{closed}"], {}, 2, "--addr takes HOST:PORT, not a URL"),
        # Bundled tools and data: found from any folder, or named exactly when missing.
        (["demo", "--docs", "nowhere"], {}, 2, "--docs nowhere: not a folder of Markdown files"),
        (["demo", "--keep"], {}, 2, "--keep keeps the Jaeger of --trace running: add --trace"),
        (
            ["demo", "--mesh"],
            {"RAVI_HOME": str(not_a_checkout)},
            2,
            f"RAVI_HOME={not_a_checkout} is not a ravi checkout",
        ),
        (
            ["restate", "dev"],
            {"RAVI_HOME": str(not_a_checkout)},
            2,
            f"RAVI_HOME={not_a_checkout} is not a ravi checkout",
        ),
    ]
    for arguments, env, code, says in cases:
        result = run([*ravi, *arguments], tmp_path, env)
        assert "Traceback" not in result.stderr, result.stderr
        # A node may have logged what it saw before it gave up (`ravi ID info: ...`).
        lines = [line for line in result.stderr.splitlines() if not LOG_LINE.match(line)]
        assert len(lines) == 1, f"{arguments}: {result.stderr}"
        command = " ".join(["ravi", *arguments[: 2 if arguments[0] == "restate" else 1]])
        assert lines[0].startswith(f"{command}: {says}"), (arguments, lines[0])
        assert result.returncode == code, (arguments, result.returncode, lines[0])


def test_subscribe_without_a_filter_says_it_matches_nothing(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    result = run([*ravi_command(), "subscribe", "--addr", closed], tmp_path)
    assert result.stderr.splitlines() == [
        "warning: no --topic-type or --prefix: no event matches, only the node's description "
        "and its changes are printed",
        f"ravi subscribe: UNAVAILABLE: cannot reach a node at {closed}: connection refused",
    ]
    assert result.returncode == 1
