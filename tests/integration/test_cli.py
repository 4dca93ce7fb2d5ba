"""`ravi`, `ravi-go` and `ravi-node` read alike: the same JSON, the same one-line errors and
exit codes, the same lines from a node that starts, loses a peer and stops.

Each client command runs from a folder outside the repository, as a user's would.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.testing import NodeProcess, eventually, running_node
from tests.integration.conftest import node_command
from tests.languages import LANGUAGES, Language

pytestmark = [pytest.mark.integration, pytest.mark.interop, pytest.mark.timeout(180)]

PROGRAMS = {"python": "ravi", "go": "ravi-go", "node": "ravi-node"}


def client(language: Language) -> list[str]:
    """The language's command line, without a command: the node command minus `node`."""
    command = language.command("x")
    return command[: command.index("node")]


def built(name: str) -> Language:
    language = LANGUAGES[name]
    if not language.available():
        pytest.fail(f"{name}'s node is not built: run `make build`")
    return language


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def one_line(self) -> str:
        """The single stderr line of a failure (no traceback, no second line)."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert "Traceback" not in self.stderr
        return lines[0]


async def run(command: list[str], cwd: Path, timeout: float = 60) -> Result:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port something listens on."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


@pytest.fixture
async def python_node(tmp_path: Path) -> AsyncIterator[NodeProcess]:
    """A Python node hosting the conformance agent as `conformance`."""
    async with running_node(node_command("py", conformance="conformance"), cwd=tmp_path) as node:
        yield node


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not the values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return type(value).__name__


LANGUAGE_NAMES = ["python", "go", "node"]
ECHO = ["--type", "ravi.conformance.v1.Echo", "--json", '{"text": "hi"}']
PAYLOAD = {"type": "ravi.conformance.v1.Echo", "value": {"text": "hi"}}


async def test_the_three_command_lines_print_the_same_json(
    python_node: NodeProcess, tmp_path: Path
) -> None:
    addr = ["--addr", python_node.address]
    echo = ["--type", "ravi.conformance.v1.Echo", "--json", '{"text": "hi"}']
    printed: dict[str, dict[str, Any]] = {}
    for name in LANGUAGE_NAMES:
        cli = client(built(name))
        sent = await run([*cli, "send", *addr, "--to", "conformance/k", *echo], tmp_path)
        described = await run([*cli, "describe", *addr], tmp_path)
        published = await run(
            [*cli, "publish", *addr, "--topic", "conformance.events/s", *echo], tmp_path
        )
        for result in (sent, described, published):
            assert result.code == 0, result.stderr
        printed[name] = {
            "send": json.loads(sent.stdout),
            "describe": json.loads(described.stdout),
            "publish": json.loads(published.stdout),
        }
    python = printed["python"]
    assert python["send"]["nodeId"] == "py"
    assert python["send"]["result"]["type"] == "ravi.conformance.v1.Echoed"
    assert python["send"]["result"]["value"]["text"] == "hi"
    assert python["describe"]["nodeId"] == "py"
    assert python["publish"] == {"localDeliveries": 1, "streamDeliveries": 0}
    for name in ("go", "node"):
        for command in ("send", "describe", "publish"):
            assert shape(printed[name][command]) == shape(python[command]), (name, command)
        assert printed[name]["publish"] == python["publish"]
        assert printed[name]["send"]["result"]["value"]["text"] == "hi"


async def test_subscribe_prints_the_node_then_events_alike(
    python_node: NodeProcess, tmp_path: Path
) -> None:
    lines: dict[str, list[Any]] = {}
    publisher = [*client(LANGUAGES["python"]), "publish", "--addr", python_node.address]
    for name in LANGUAGE_NAMES:
        cli = client(built(name))
        timeout = ["--timeout-ms", "20000"] if name == "node" else ["--timeout", "20s"]
        if name == "python":
            timeout = ["--timeout", "20"]
        subscriber = await asyncio.create_subprocess_exec(
            *cli,
            "subscribe",
            "--addr",
            python_node.address,
            "--topic-type",
            "news",
            "--count",
            "1",
            *timeout,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert subscriber.stderr is not None
        assert subscriber.stdout is not None
        said = await asyncio.wait_for(subscriber.stderr.readline(), 20)
        assert said.decode().startswith(f"subscribed to {python_node.address} (node py)"), said
        published = await run(
            [*publisher, "--topic", f"news/{name}", *ECHO],
            tmp_path,
        )
        assert published.code == 0, published.stderr
        out, _ = await asyncio.wait_for(subscriber.communicate(), 20)
        assert subscriber.returncode == 0
        lines[name] = [json.loads(line) for line in out.decode().splitlines()]
    node, event = lines["python"]
    assert node["node"]["nodeId"] == "py"
    assert event["event"]["topic"] == {"type": "news", "source": "python"}
    assert event["event"]["envelope"]["payload"] == PAYLOAD
    for name in ("go", "node"):
        assert [shape(line) for line in lines[name]] == [shape(node), shape(event)], name
        assert lines[name][1]["event"]["envelope"]["payload"] == PAYLOAD


@pytest.mark.parametrize("name", LANGUAGE_NAMES)
async def test_client_failures_are_one_line_with_the_documented_exit_code(
    name: str, python_node: NodeProcess, tmp_path: Path
) -> None:
    cli, program = client(built(name)), PROGRAMS[name]
    closed = f"127.0.0.1:{free_port()}"
    echo = ["--type", "ravi.conformance.v1.Echo", "--json", "{}"]
    cases = [
        # A service error: exit 1.
        (
            ["send", "--addr", python_node.address, "--to", "conformanse/k", *echo],
            1,
            f"{program} send: NOT_FOUND (AGENT_TYPE_NOT_FOUND): no node hosts agent type "
            '"conformanse" (did you mean "conformance"?); known types: conformance '
            "(asked node py)",
        ),
        (
            ["describe", "--addr", closed],
            1,
            f"{program} describe: UNAVAILABLE: cannot reach a node at {closed}: connection refused",
        ),
        # A usage error: exit 2.
        (
            ["describe", "--addr", "localhost"],
            2,
            f"{program} describe: --addr localhost has no port: give HOST:PORT, "
            "such as localhost:50051",
        ),
        (
            ["describe", "--addr", f"http://{python_node.address}"],
            2,
            f"{program} describe: --addr takes HOST:PORT, not a URL (--addr "
            f"http://{python_node.address}): try --addr {python_node.address}",
        ),
    ]
    for arguments, code, line in cases:
        result = await run([*cli, *arguments], tmp_path)
        assert (result.code, result.one_line()) == (code, line), arguments


@pytest.mark.parametrize("name", LANGUAGE_NAMES)
async def test_a_node_that_cannot_start_says_why_in_one_line_and_exits_2(
    name: str, taken: int, tmp_path: Path
) -> None:
    language, program = built(name), PROGRAMS[name]
    result = await run(language.command("n1", listen=f"127.0.0.1:{taken}"), tmp_path)
    assert result.code == 2, result.stderr
    assert result.one_line() == (
        f"{program} node: cannot listen on 127.0.0.1:{taken}: address already in use"
    )
    bad_peer = await run(language.command("n1", "--peer", "b=localhost"), tmp_path)
    assert bad_peer.code == 2
    assert bad_peer.one_line() == (
        f"{program} node: --peer b=localhost has no port: give HOST:PORT, such as localhost:50051"
    )


async def test_wait_for_peers_gives_up_cleanly(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    command = node_command("w", extra=["--wait-for-peers", "1", "--peer", f"b={closed}"])
    result = await run(command, tmp_path)
    assert result.code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("ravi node:")]
    assert errors == [f"ravi node: peers not connected after 1 s: b at {closed}"], result.stderr
    for noise in ("Traceback", "Exception ignored", "never awaited", "Event loop is closed"):
        assert noise not in result.stderr


async def test_wait_until_ready_names_what_it_waited_for() -> None:
    closed = f"127.0.0.1:{free_port()}"
    runtime = GrpcRuntime(
        port=0, remote_peers={"b": closed}, options=GrpcRuntimeOptions(node_id="a")
    )
    async with runtime:
        with pytest.raises(TimeoutError) as waited:
            await runtime.wait_until_ready("writer", timeout=0.5)
        assert str(waited.value) == (
            'agent type "writer" not reachable after 0.5 s: this node (a) hosts nothing; '
            f"peer b at {closed} is not connected"
        )
        with pytest.raises(
            TimeoutError, match=rf"^peers not connected after 0.5 s: b at {closed}$"
        ):
            await runtime.wait_for_peers(timeout=0.5)


SERVING = re.compile(r"^(?P<program>\S+) node (?P<id>\S+) serving on (?P<addr>\S+)$")


@pytest.mark.parametrize("name", LANGUAGE_NAMES)
async def test_nodes_tell_their_agents_peers_and_peer_changes_alike(
    name: str, python_node: NodeProcess, tmp_path: Path
) -> None:
    language, program = built(name), PROGRAMS[name]
    closed = f"127.0.0.1:{free_port()}"
    command = language.command(
        "watcher", "--peer", f"up={python_node.address}", "--peer", f"down={closed}"
    )
    node = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert node.stdout is not None
    assert node.stderr is not None
    try:
        head = [(await asyncio.wait_for(node.stdout.readline(), 30)).decode() for _ in range(3)]
        assert SERVING.match(head[0].strip()), head
        assert head[1].startswith("  agents: "), head
        assert head[2].strip() == (f"peers: down at {closed}, up at {python_node.address}"), head
        prefix = f"{program} watcher info: "
        expected = [
            f"peer up connected at {python_node.address} (node py, hosts conformance)",
            f"peer down at {closed} unreachable: connection refused; retrying every 2 s at most",
        ]
        seen: list[str] = []
        async with asyncio.timeout(30):
            while not all(line in seen for line in expected):
                line = (await node.stderr.readline()).decode().rstrip("\n")
                assert line, f"the node ended its log: {seen}"
                if line.startswith(prefix):
                    seen.append(line.removeprefix(prefix))
        await python_node.stop()
        lost = f"peer up at {python_node.address} dropped: its stream ended; reconnecting"
        async with asyncio.timeout(30):
            while lost not in seen:
                line = (await node.stderr.readline()).decode().rstrip("\n")
                assert line, f"the node ended its log: {seen}"
                if line.startswith(prefix):
                    seen.append(line.removeprefix(prefix))
        started = time.monotonic()
        node.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(node.communicate(), 30)
        assert node.returncode == 0
        # Nothing in flight: stopping takes far less than the grace period.
        assert time.monotonic() - started < 4.5
        tail = rest.decode().splitlines()[-2:]
        assert re.fullmatch(
            rf"{program} node watcher stopping \(SIGTERM\): calls in flight get up to 5 s",
            tail[0],
        ), tail
        assert tail[1] == f"{program} node watcher stopped"
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()


async def test_a_python_node_stops_at_once_with_nothing_in_flight() -> None:
    """Stop drains calls then returns; the grace period is an upper bound, not a wait."""
    writer = GrpcRuntime(port=0, options=GrpcRuntimeOptions(node_id="b", grace_period=30))
    await writer.start()
    caller = GrpcRuntime(
        port=0,
        remote_peers={"b": writer.address},
        options=GrpcRuntimeOptions(node_id="a", grace_period=30),
    )
    await caller.start()
    try:
        await caller.wait_for_peers(timeout=10)
        # b learnt a from its Describe and peers with it: streams both ways.
        await eventually(_peered(writer), timeout=10)
    finally:
        started = time.monotonic()
        await caller.stop()
        await writer.stop()
    assert time.monotonic() - started < 10


def _peered(runtime: GrpcRuntime) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        assert any(peer.connected for peer in runtime.peers())

    return check
