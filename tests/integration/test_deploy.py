"""docker-compose.yml brought up without Docker: each service's command as a plain process.

Every ravi service runs its image's ENTRYPOINT (read from its Dockerfile) with
the service's `command:` and `environment:`, in `depends_on` order, and its
`healthcheck:` command must pass; Jaeger and restate-server run from the
binaries built here with the compose file's configuration. What a container
would provide is mapped, and nothing else is changed:

- in-image programs to the local builds: `ravi` to this interpreter's
  `python -m ravi`, /usr/local/bin/ravi-go and grpc-health-probe to .tools/bin,
  `python` to this interpreter, the image's /app to the repository;
- every SERVICE:PORT, and a service's own 0.0.0.0:PORT or 127.0.0.1:PORT, to
  127.0.0.1 and a free port (so `--advertise=node-a:50051` advertises what
  peers here can dial);
- `${VAR:?...}` to the test's tokens.

Then the mesh answers the demo task end to end (Python, Go and Node), the
server runs a task over the mesh, and Jaeger holds every node's spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import httpx
import pytest

from ravi import AgentId
from ravi._demo.run import DEFAULT_TASK
from ravi.examples.v1.examples_pb2 import Task, TaskResult
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.testing import NodeProcess, eventually, ravi_command, running_node
from tests.paths import REPO_ROOT, RESTATE_SERVER, TOOLS_BIN
from tests.unit.test_deploy import DOCKERFILES, load_compose, parse_dockerfile, resolve

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MESH_TOKEN = "compose-mesh-token"
SERVER_TOKEN = "compose-server-token"
VARIABLES = {"RAVI_TOKEN": MESH_TOKEN, "RAVI_SERVER_TOKEN": SERVER_TOKEN}
IMAGE_ROOT = "/app"
LOCAL_PROGRAMS: dict[str, list[str]] = {
    "ravi": ravi_command(),
    "python": [sys.executable],
    "/usr/local/bin/node": ["node"],
    "/usr/local/bin/ravi-go": [str(TOOLS_BIN / "ravi-go")],
    "/usr/local/bin/grpc-health-probe": [str(TOOLS_BIN / "grpc-health-probe")],
}
UPSTREAM_IMAGES: dict[str, list[str]] = {
    "jaegertracing/jaeger": [str(TOOLS_BIN / "jaeger")],
    "docker.io/restatedev/restate": [str(RESTATE_SERVER)],
}
_ADDRESS = re.compile(r"(?<![\w.-])(?P<host>[A-Za-z0-9][\w.-]*):(?P<port>\d{2,5})\b")
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::[?-](?P<rest>[^}]*))?\}")
_SELF = {"0.0.0.0", "127.0.0.1", "localhost"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Localizer:
    """Maps a compose service's strings from the container network to loopback."""

    def __init__(self, services: Mapping[str, Any]) -> None:
        self.services = services
        self.ports: dict[tuple[str, int], int] = {}

    def port(self, service: str, port: int) -> int:
        """The free loopback port that stands for `service`'s container `port`."""
        return self.ports.setdefault((service, port), _free_port())

    def text(self, text: str, service: str) -> str:
        def address(found: re.Match[str]) -> str:
            host, port = found["host"], int(found["port"])
            if host in self.services:
                return f"127.0.0.1:{self.port(host, port)}"
            if host in _SELF:
                return f"127.0.0.1:{self.port(service, port)}"
            return found[0]

        def variable(found: re.Match[str]) -> str:
            return VARIABLES.get(found["name"]) or os.environ[found["name"]]

        text = _VARIABLE.sub(variable, text)
        text = _ADDRESS.sub(address, text)
        if text.startswith("--port="):
            text = f"--port={self.port(service, int(text.removeprefix('--port=')))}"
        return text.replace(f"={IMAGE_ROOT}/", f"={REPO_ROOT}/")

    def command(self, words: Sequence[str], service: str) -> list[str]:
        program, *arguments = [self.text(word, service) for word in words]
        local = [*LOCAL_PROGRAMS.get(program, [program])]
        if arguments and arguments[0].startswith(f"{IMAGE_ROOT}/"):
            local.append(str(REPO_ROOT / arguments.pop(0).removeprefix(f"{IMAGE_ROOT}/")))
        return [*local, *arguments]

    def environment(self, service: str) -> dict[str, str]:
        env = self.services[service].get("environment", {})
        return {name: self.text(str(value), service) for name, value in env.items()}

    def entrypoint(self, service: str) -> list[str]:
        """The image's ENTRYPOINT followed by the service's command, mapped to here."""
        definition = self.services[service]
        if "build" in definition:
            dockerfile = parse_dockerfile(REPO_ROOT / definition["build"]["dockerfile"])
            image = dockerfile.exec_form("ENTRYPOINT")
            command = definition.get("command") or dockerfile.exec_form("CMD")
            return self.command([*image, *command], service)
        name = resolve(definition["image"]).rpartition(":")[0]
        return [*UPSTREAM_IMAGES[name], *definition.get("command", [])]


def start_order(services: Mapping[str, Any]) -> list[str]:
    graph = {name: set(s.get("depends_on", {})) for name, s in services.items()}
    return list(TopologicalSorter(graph).static_order())


async def run(command: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def healthy(localize: Localizer, service: str) -> None:
    """Run the service's compose health check here; it must exit 0."""
    test = localize.services[service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    code, output = await run(localize.command(test[1:], service), localize.environment(service))
    assert code == 0, f"{service}'s health check failed: {output}"


@contextlib.asynccontextmanager
async def background(
    command: Sequence[str], env: Mapping[str, str], ready: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A program that announces nothing: up once `ready` (an HTTP URL) answers 200."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        async def answers() -> None:
            assert process.returncode is None, f"{command[0]} exited"
            await asyncio.to_thread(_get, ready)

        await eventually(answers, timeout=30, interval=0.1, retry_on=(OSError,))
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


async def start_upstream(
    stack: contextlib.AsyncExitStack, localize: Localizer, service: str, data: Path
) -> None:
    """Jaeger or restate-server, as the compose file configures them, on loopback."""
    definition = localize.services[service]
    command = localize.entrypoint(service)
    env = localize.environment(service)
    if service == "jaeger":
        (volume,) = definition["volumes"]
        source, target, _ = volume.split(":")
        command = [str(REPO_ROOT / source) if word == target else word for word in command]
        # The configuration reads its interface and ports from the environment.
        env |= {
            "JAEGER_LISTEN_HOST": "127.0.0.1",
            "JAEGER_OTLP_GRPC_PORT": str(localize.port("jaeger", 4317)),
            "JAEGER_QUERY_PORT": str(localize.port("jaeger", 16686)),
            "JAEGER_QUERY_GRPC_PORT": str(localize.port("jaeger", 16685)),
            "JAEGER_HEALTH_PORT": str(localize.port("jaeger", 13133)),
            "OTEL_TRACES_EXPORTER": "none",
        }
        ready = f"http://127.0.0.1:{localize.port('jaeger', 13133)}/status"
    else:
        # The image keeps its journal in /restate-data (a volume here).
        command += ["--base-dir", str(data / "restate-data"), "--no-logo"]
        # Its invoker leaves a folder per partition in the temporary directory.
        (data / "restate-tmp").mkdir(exist_ok=True)
        env |= {
            "TMPDIR": str(data / "restate-tmp"),
            "RESTATE_BIND_IP": "127.0.0.1",
            "RESTATE_INGRESS__BIND_PORT": str(localize.port("restate", 8080)),
            "RESTATE_ADMIN__BIND_PORT": str(localize.port("restate", 9070)),
            "RESTATE_BIND_PORT": str(localize.port("restate", 5122)),
        }
        ready = f"http://127.0.0.1:{localize.port('restate', 9070)}/health"
    await stack.enter_async_context(background(command, env, ready))


async def test_the_compose_services_run_as_processes_and_answer_end_to_end(
    tmp_path: Path,
) -> None:
    services = load_compose()["services"]
    localize = Localizer(services)
    nodes: dict[str, NodeProcess] = {}
    async with contextlib.AsyncExitStack() as stack:
        for service in start_order(services):
            if "build" not in services[service]:
                await start_upstream(stack, localize, service, tmp_path)
                continue
            nodes[service] = await stack.enter_async_context(
                running_node(
                    localize.entrypoint(service),
                    env=localize.environment(service),
                    cwd=tmp_path,
                )
            )
            await healthy(localize, service)
        assert set(nodes) == {"node-a", "node-b", "node-go", "node-js", "server", "restate-worker"}
        for service in ("node-a", "node-b", "node-go", "node-js"):
            assert nodes[service].node_id == service
            assert nodes[service].address == f"127.0.0.1:{localize.port(service, 50051)}"

        client = GrpcRuntime(
            remote_peers={"node-a": nodes["node-a"].address},
            options=GrpcRuntimeOptions(node_id="compose-client", peer_token=MESH_TOKEN),
        )
        async with client:
            await client.wait_for_peers(timeout=10)
            result = await client.send_message(
                Task(thread_id="compose-1", content=DEFAULT_TASK),
                AgentId("orchestrator", "compose-1"),
                timeout=30,
            )
        assert isinstance(result, TaskResult)
        # The Node formatter (asked by the Go reviewer) turns the answer into Markdown.
        assert result.content.startswith("## "), result.content

        server = f"http://127.0.0.1:{localize.port('server', 8000)}"
        await server_runs_a_task(server, SERVER_TOKEN, "t-1")

        query = f"http://127.0.0.1:{localize.port('jaeger', 16686)}/api/services"

        async def traced() -> None:
            reply = json.loads(await asyncio.to_thread(_get, query))
            assert {"node-a", "node-b", "node-go", "node-js"} <= set(reply["data"] or [])

        await eventually(traced, timeout=20, interval=0.5)

        # Every service stops on SIGTERM, in time and cleanly; uvicorn re-raises the
        # SIGTERM it handled once the server drained.
        exits = {service: await node.stop() for service, node in reversed(nodes.items())}
        unclean = {
            service: (code, "".join(nodes[service].output)[-2000:])
            for service, code in exits.items()
            if code not in ({0, -signal.SIGTERM} if service == "server" else {0})
        }
        assert unclean == {}


async def server_runs_a_task(base_url: str, token: str, thread_id: str) -> list[str]:
    """A task through the server's API, to the assistant on node-a, approved.

    Returns the kinds of the thread's events, in order.
    """
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
        assert (await http.get("/info")).status_code == 200
        started = await http.post("/threads", json={"thread_id": thread_id, "content": "grpc"})
        assert started.status_code == 202, started.text
        kinds = []
        async with http.stream("GET", f"/threads/{thread_id}/events") as events:
            async for line in events.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line.removeprefix("data:"))
                kinds.append(event["kind"])
                if event["kind"] == "approval_request":
                    request_id = event["approval_request"]["request_id"]
                    answered = await http.post(f"/respond/{request_id}", json={"action": "approve"})
                    assert answered.status_code == 200, answered.text
                if event["kind"] in ("final", "failed"):
                    break
        assert kinds[-1] == "final", kinds
        return kinds


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
async def test_each_image_default_command_serves_health(image: str) -> None:
    """ENTRYPOINT + CMD of each image, as `docker run IMAGE` would run them."""
    dockerfile = parse_dockerfile(DOCKERFILES[image])
    localize = Localizer({})
    words = [*dockerfile.exec_form("ENTRYPOINT"), *dockerfile.exec_form("CMD")]
    async with running_node(localize.command(words, image)) as node:
        assert node.address == f"127.0.0.1:{localize.port(image, 50051)}"
        probe = [str(TOOLS_BIN / "grpc-health-probe"), f"-addr={node.address}"]
        code, output = await run(probe, {})
        assert code == 0, output
        assert "SERVING" in output
