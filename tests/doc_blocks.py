"""The code blocks of README.md and docs/, and how the tests run each one.

Every fenced block has a language. `python` blocks of a page run in order as
one program; `sh` blocks of a page run in order as one shell session; `go` and
`ts` blocks must be code the tests build; `text` blocks are not code. Both run
from a fresh folder, never from the repository root, as a reader's own
project would. An HTML comment right above a block tells the tests more:

    <!-- doc-test: file myapp/agents.py -->     the block is that file of the
                                                reader's project: written into
                                                the folder, not run
    <!-- doc-test: from the repository root --> an sh block that runs where the
                                                repository's paths resolve
    <!-- doc-test: each line serves -->         each line starts a server: it
                                                must serve, then exit 0 on SIGTERM
    <!-- doc-test: needs restate-server -->     a restate-server on the ports
                                                the page uses (8080, 9070)
    <!-- doc-test: needs assistant-node 127.0.0.1:50051 -->
                                                a `ravi node` hosting the demo
                                                assistant at that address
    <!-- doc-test: not run: REASON -->          not run by these tests, for the
                                                reason given (reviewed: see
                                                NOT_RUN in tests/unit/test_docs.py)

Clauses combine with ";". Loopback addresses (`127.0.0.1:PORT`,
`localhost:PORT`) in a page's runnable blocks are replaced by free ports, the
same one for the same address throughout the page, so that tests running at
once never collide; a non-loopback address in a runnable block is an error.
A line ending in `&` starts a background process, as in a terminal: the
session waits until it serves, and stops it at the end. A server that would
take a fixed default port gets the page's port for it instead: `ravi serve`
the one for 8000, `ravi restate dev` those for 8080, 9070 and its worker's
9080 (and `RAVI_RESTATE_INGRESS`/`RAVI_RESTATE_ADMIN` point there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.paths import REPO_ROOT, RESTATE_SERVER, TOOLS_BIN

PAGES = [
    "README.md",
    *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md")),
]
LANGUAGES = {"python", "sh", "go", "ts", "text"}

_FENCE = re.compile(r"^```(\S*)(.*)$")
_MARKER = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->$")
_ADDRESS = re.compile(r"\b(127\.0\.0\.1|localhost):(\d{2,5})\b")
_FOREIGN = re.compile(r"\b(0\.0\.0\.0|\d{1,3}(?:\.\d{1,3}){3}|[a-z][\w-]*-svc):\d{2,5}\b")
_SERVING = re.compile(r"serving on (\S+)")
_BACKGROUND = re.compile(r"\s&\s*(#[^'\"]*)?$")
RESTATE_PORTS = {"ingress": 8080, "admin": 9070}


@dataclass
class Block:
    """One fenced block of a page, with what its doc-test comment says."""

    page: str
    line: int
    language: str
    text: str
    clauses: list[str] = field(default_factory=list)

    def clause(self, name: str) -> str | None:
        """The rest of the clause that starts with `name`, if the block has one."""
        for clause in self.clauses:
            if clause == name or clause.startswith(f"{name} ") or clause.startswith(f"{name}:"):
                return clause[len(name) :].lstrip(" :")
        return None

    @property
    def not_run(self) -> str | None:
        return self.clause("not run")

    @property
    def file(self) -> str | None:
        return self.clause("file")

    @property
    def needs(self) -> list[str]:
        return [c.removeprefix("needs ").strip() for c in self.clauses if c.startswith("needs ")]

    @property
    def first_line(self) -> str:
        return next((line for line in self.text.splitlines() if line.strip()), "")

    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced blocks of a page (a path relative to the repository)."""
    found: list[Block] = []
    lines = (REPO_ROOT / page).read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        start = index
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
        marker = _MARKER.match(lines[start - 1]) if start > 0 else None
        clauses = _clauses(marker.group(1)) if marker else []
        text = "\n".join(lines[start + 1 : end]) + "\n"
        language = fence.group(1)
        if fence.group(2).strip():  # an info string beyond the language: `python restate`
            clauses.append(f"info {fence.group(2).strip()}")
        found.append(Block(page, start + 1, language, text, clauses))
        index = end + 1
    return found


def _clauses(marker: str) -> list[str]:
    """The clauses of a doc-test comment; a `not run` reason is the rest of the comment."""
    clauses: list[str] = []
    for index, clause in enumerate(marker.split(";")):
        if clause.strip().startswith("not run"):
            return [*clauses, ";".join(marker.split(";")[index:]).strip()]
        clauses.append(clause.strip())
    return clauses


def all_blocks() -> Iterator[Block]:
    for page in PAGES:
        yield from blocks(page)


def python_program(page: str) -> str:
    """The page's python blocks that run, in order, as one program."""
    return "\n\n".join(
        b.text for b in blocks(page) if b.language == "python" and b.not_run is None and not b.file
    )


def write_files(page: str, folder: Path) -> None:
    """Write the page's `file` blocks into the reader's project folder."""
    for block in blocks(page):
        if block.file:
            path = folder / block.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_port_pair(offset: int) -> int:
    """A free port P with P + offset free too."""
    for _ in range(50):
        port = free_port()
        if port + offset > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free pair of loopback ports {offset} apart")


class Ports:
    """The page's loopback addresses, each given a free port."""

    def __init__(self) -> None:
        self._ports: dict[int, int] = {}

    def port(self, documented: int, *, spare: int = 0) -> int:
        """The free port for a documented one; with `spare`, port + spare is free too."""
        if documented not in self._ports:
            self._ports[documented] = free_port_pair(spare) if spare else free_port()
        return self._ports[documented]

    def address(self, documented: str) -> str:
        host, _, port = documented.rpartition(":")
        return f"{host}:{self.port(int(port))}"

    def apply(self, text: str) -> str:
        return _ADDRESS.sub(lambda m: f"{m.group(1)}:{self.port(int(m.group(2)))}", text)


def on_the_page_ports(command: str, ports: Ports) -> str:
    """A server command on the page's ports where it would take fixed defaults.

    A trailing comment, which would swallow the flags, is left out.
    """
    command = command[: _comment_start(command)].rstrip()
    if command.startswith("ravi serve") and "--port" not in command:
        command += f" --port {ports.port(8000)}"
    elif command.startswith("ravi restate dev") and "-port" not in command:
        ingress, admin = ports.port(RESTATE_PORTS["ingress"]), restate_admin_port(ports)
        worker = ports.address("127.0.0.1:9080")
        command += f" --ingress-port {ingress} --admin-port {admin} --listen {worker}"
    return command


def _comment_start(command: str) -> int:
    """Where the shell comment of a command line starts (its length if it has none)."""
    quote = ""
    for index, char in enumerate(command):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or command[index - 1].isspace()):
            return index
    return len(command)


def restate_admin_port(ports: Ports) -> int:
    """`ravi restate dev` binds restate-server's node port at admin + 52: free too."""
    return ports.port(RESTATE_PORTS["admin"], spare=52)


def restate_env(ports: Ports) -> dict[str, str]:
    """Where `ravi serve --runtime restate` and the examples find the page's restate-server,
    and where `ravi restate dev` finds the one `make setup` installed, as a reader's install."""
    return {
        "RESTATE_SERVER_BIN": str(RESTATE_SERVER),
        "RAVI_RESTATE_INGRESS": f"http://127.0.0.1:{ports.port(RESTATE_PORTS['ingress'])}",
        "RAVI_RESTATE_ADMIN": f"http://127.0.0.1:{restate_admin_port(ports)}",
    }


def foreign_addresses(text: str) -> list[str]:
    """Addresses a runnable block must not dial from a test: not loopback."""
    return [m.group(0) for m in _FOREIGN.finditer(text) if not m.group(0).startswith("127.")]


def commands(text: str) -> list[str]:
    """The command lines of an sh block: continuations and open quotes joined, comments left out."""
    joined: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if _balanced(current):
            joined.append(current)
            current = ""
        else:
            current += "\n"
    assert not current, f"an unfinished command: {current!r}"
    return joined


def _balanced(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:  # a quote still open: the command goes on on the next line
        return False
    return True


def background(command: str) -> str | None:
    """The command without its trailing `&` (and comment), if it runs in the background."""
    found = _BACKGROUND.search(command)
    return command[: found.start()] if found else None


def shell_env(folder: Path, extra: dict[str, str]) -> dict[str, str]:
    """A reader's environment: the virtualenv's and the tools' programs on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), str(TOOLS_BIN), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "PWD": str(folder), **extra}
    env.pop("VIRTUAL_ENV", None)
    return env


@dataclass
class Process:
    command: str
    process: asyncio.subprocess.Process
    output: list[str]
    reader: asyncio.Task[None]
    server: bool = False

    def text(self) -> str:
        return "".join(self.output)


class Session:
    """A terminal: commands run one after the other in one folder; `&` ones keep running."""

    def __init__(self, folder: Path, env: dict[str, str], ports: Ports) -> None:
        self.folder = folder
        self.env = env
        self.ports = ports
        self.background: list[Process] = []

    async def _spawn(self, command: str) -> Process:
        # bash runs a lone command in its own place (no shell left around it), so
        # a signal to the process group reaches the program and its exit code.
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            cwd=self.folder,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        output: list[str] = []

        async def read() -> None:
            assert process.stdout is not None
            async for line in process.stdout:
                output.append(line.decode(errors="replace"))  # noqa: PERF401 - as it comes

        return Process(command, process, output, asyncio.create_task(read()))

    async def run(self, command: str, *, timeout: float = 180.0) -> str:
        """Run a command to its end; it must exit 0. Returns its output."""
        started = await self._spawn(command)
        try:
            async with asyncio.timeout(timeout):
                await started.process.wait()
                await started.reader
        except TimeoutError:
            await self._stop(started, kill=True)
            raise AssertionError(
                f"`{command}` did not finish within {timeout} s:\n{started.text()}"
            ) from None
        assert started.process.returncode == 0, (
            f"`{command}` exited with {started.process.returncode}:\n{started.text()}"
        )
        return started.text()

    async def start(self, command: str, *, timeout: float = 60.0) -> Process:
        """Start a background command and wait until it is ready.

        A node or server is ready once it says it serves; Jaeger once its
        ports answer; anything else once it printed its first line.
        """
        started = await self._spawn(command)
        self.background.append(started)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if started.process.returncode is not None:
                        await started.reader
                        raise AssertionError(
                            f"`{command}` exited with {started.process.returncode}:\n"
                            + started.text()
                        )
                    if _SERVING.search(started.text()):
                        started.server = True
                        return started
                    if "jaeger" in command:
                        if all(_answers(int(self.env[name])) for name in _JAEGER_READY):
                            return started
                    elif started.output and not _starts_a_node(command):
                        return started
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"`{command}` was not ready within {timeout} s:\n{started.text()}"
            ) from None

    async def serve_and_stop(self, command: str) -> None:
        """A server must serve, then exit 0 on SIGTERM."""
        started = await self.start(command)
        self.background.remove(started)
        code = await self._stop(started)
        assert started.server, f"`{command}` never said it serves:\n{started.text()}"
        assert code == 0, f"`{command}` exited with {code} on SIGTERM:\n{started.text()}"

    async def _stop(self, process: Process, *, kill: bool = False) -> int:
        if process.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                await asyncio.wait_for(process.process.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.process.pid, signal.SIGKILL)
                await process.process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.reader, 5)
        code = process.process.returncode
        assert code is not None
        return code

    async def close(self) -> list[str]:
        """Stop what still runs, last started first; the servers that did not exit 0."""
        failed = []
        for process in reversed(self.background):
            code = await self._stop(process)
            if process.server and code != 0:
                failed.append(f"`{process.command}` exited with {code}:\n{process.text()}")
        self.background.clear()
        return failed


_JAEGER_READY = ("JAEGER_OTLP_GRPC_PORT", "JAEGER_QUERY_PORT")
_NODE_PROGRAMS = ("ravi node", "ravi serve", "ravi-go node", "cli.js node", "ravi restate")


def _starts_a_node(command: str) -> bool:
    return any(program in command for program in _NODE_PROGRAMS)


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def jaeger_env(ports: Ports) -> dict[str, str]:
    """Where tools/jaeger.yaml puts Jaeger: the page's ports for 4317 and 16686, free others."""
    return {
        "JAEGER_OTLP_GRPC_PORT": str(ports.port(4317)),
        "JAEGER_QUERY_PORT": str(ports.port(16686)),
        "JAEGER_QUERY_GRPC_PORT": str(free_port()),
        "JAEGER_HEALTH_PORT": str(free_port()),
    }


@contextlib.asynccontextmanager
async def session(folder: Path, env: dict[str, str], ports: Ports) -> AsyncIterator[Session]:
    terminal = Session(folder, env, ports)
    try:
        yield terminal
    finally:
        failed = await terminal.close()
    assert not failed, "\n".join(failed)


def quoted(path: Path) -> str:
    return shlex.quote(str(path))
