"""docker-compose.yml, built and run by a real Docker engine, exercised as a user would.

The stack comes up with `docker compose up --build --wait` (conftest.py), the
three ravi images built from deploy/docker on stand-in base images. Then, in
this order (the last tests stop what the first ones use):

- the images: small, non-root, without build tools;
- every service up and healthy;
- the demo task through the Python, Go and Node containers, and its one trace
  in the Jaeger container;
- a task with an approval through the server container's HTTP API (401
  without its token);
- a durable approval on Restate that survives `docker compose restart` of the
  worker and of restate-server;
- `docker compose stop`: every service stops on SIGTERM, well within its grace
  period;
- `docker compose down -v`, then the engine stopped: nothing left running.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ravi.errors import NotFound
from ravi.integrations.runtime.restate import RestateSettings, RestateWorkflowClient
from ravi.testing import eventually
from tests.containers import _engine
from tests.containers._engine import Engine
from tests.containers.conftest import MESH_TOKEN, REPORT, SERVER_TOKEN, Stack
from tests.integration.test_deploy import server_runs_a_task
from tests.paths import REPO_ROOT
from tests.unit.test_deploy import MESH_NODES

pytestmark = pytest.mark.timeout(300, func_only=True)

MB = 1_000_000
IMAGES = {"ravi-python:dev": 250 * MB, "ravi-go:dev": 40 * MB, "ravi-node:dev": 250 * MB}
"""The images docker-compose.yml builds, and the size each must stay under."""

BUILD_TOOLS = re.compile(
    r"(^|/)(gcc|g\+\+|cc|c\+\+|ld|make|cmake|git|go|gofmt|npm|npx|yarn|corepack|pip3?(\.\d+)?|tsc)$"
    r"|^usr/local/go/|^usr/lib/gcc/|^usr/local/lib/node_modules/"
    r"|/site-packages/(pip|setuptools|wheel|hatchling)/"
    r"|/node_modules/typescript/"
)
"""Paths that mean a compiler, a package manager that installs code, or a build backend.

(Type declarations are not among them: protobufjs, which the OTLP exporter
needs, depends on @types/node at run time.)
"""


def files_of(engine: Engine, image: str) -> Iterator[tarfile.TarInfo]:
    """Every file of an image's filesystem: `docker export` of a container never started."""
    created = engine.docker("create", image).stdout.strip()
    try:
        command = [str(engine.install / "usr" / "bin" / "docker"), "export", created]
        with subprocess.Popen(command, stdout=subprocess.PIPE, env=engine.env()) as export:
            assert export.stdout is not None
            with tarfile.open(fileobj=export.stdout, mode="r|") as archive:
                yield from archive
            assert export.wait(60) == 0
    finally:
        engine.docker("rm", created)


def test_the_images_are_small_non_root_and_hold_no_build_tools(stack: Stack) -> None:
    for image, limit in IMAGES.items():
        (inspected,) = stack.inspect(image)
        size = inspected["Size"]
        REPORT.append(f"{image}: {size / MB:.1f} MB (at most {limit / MB:.0f} MB)")
        user = inspected["Config"]["User"]
        assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"{image} runs as {user!r}"
        found = [info.name for info in files_of(stack.engine, image) if not info.isdir()]
        assert found
        tools = [name for name in found if BUILD_TOOLS.search(name)]
        assert tools == [], f"{image} holds build tools"
        assert size <= limit, f"{image} is {size / MB:.1f} MB"


def test_every_service_is_up_healthy_and_unprivileged(stack: Stack) -> None:
    config = json.loads(stack.compose("config", "--format", "json").stdout)
    services = set(config["services"])
    containers = stack.containers()
    assert set(containers) == services
    root = set()
    for service, container in containers.items():
        assert "healthcheck" in config["services"][service], f"{service} has no health check"
        (inspected,) = stack.inspect(container)
        assert inspected["State"]["Status"] == "running", service
        assert inspected["State"]["Health"]["Status"] == "healthy", service
        if inspected["Config"]["User"] in ("", "0", "root", "0:0"):
            root.add(service)
    # restate-server's released image runs as root; every other service does not.
    assert root == {"restate"}


DEPLOY_PAGE = REPO_ROOT / "docs" / "deploy.md"


def documented_exec() -> list[str]:
    """The `docker compose exec node-a ravi send ...` command of docs/deploy.md."""
    text = DEPLOY_PAGE.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("docker compose exec ")]
    return shlex.split(line)


def documented_key() -> str:
    """The orchestrator key the documented command sends to (`--to orchestrator/KEY`)."""
    command = documented_exec()
    agent_type, _, key = command[command.index("--to") + 1].partition("/")
    assert agent_type == "orchestrator"
    return key


@pytest.fixture(scope="module")
def demo_task(stack: Stack) -> dict[str, Any]:
    """The demo task, sent as docs/deploy.md does: `ravi send` inside node-a's container."""
    docker, compose, *arguments = documented_exec()
    assert (docker, compose) == ("docker", "compose")
    sent = stack.compose(*arguments, timeout=90)
    reply: dict[str, Any] = json.loads(sent.stdout)
    return reply


def test_the_demo_task_runs_through_python_go_and_node_containers(
    demo_task: dict[str, Any],
) -> None:
    assert demo_task["nodeId"] == "node-a"
    result = demo_task["result"]
    assert result["type"] == "ravi.examples.v1.TaskResult"
    # Searched and written in Python, reviewed in Go, formatted as Markdown in Node.
    assert result["value"]["content"].startswith("## How are messages ordered")
    assert result["value"]["steps"] == 6


async def test_the_demo_task_is_one_trace_in_jaeger(
    stack: Stack, demo_task: dict[str, Any]
) -> None:
    assert demo_task["result"]
    query = {
        "service": "node-a",
        "operation": "handle orchestrator",
        "tags": json.dumps({"ravi.agent.key": documented_key()}),
        "lookback": "1h",
        "limit": "20",
    }

    async def traced() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=stack.url("jaeger"), timeout=10) as http:
            reply = (await http.get("/api/traces", params=query)).json()
        (trace,) = reply["data"]
        services = {p["serviceName"] for p in trace["processes"].values()}
        assert set(MESH_NODES) <= services, services
        return dict(trace)

    trace = await eventually(traced, timeout=60, interval=1, retry_on=(AssertionError, ValueError))
    spans = trace["spans"]
    assert {span["traceID"] for span in spans} == {trace["traceID"]}
    (root,) = [span for span in spans if not span["references"]]
    assert trace["processes"][root["processID"]]["serviceName"] == "node-a"
    languages = {
        (trace["processes"][span["processID"]]["serviceName"], span["operationName"]): {
            tag["value"] for tag in span["tags"] if tag["key"] == "ravi.language"
        }
        for span in spans
    }
    assert languages[("node-go", "handle reviewer")] == {"go"}
    assert languages[("node-js", "handle formatter")] == {"node"}
    assert languages[("node-b", "handle writer")] == {"python"}
    REPORT.append(f"demo task: trace {trace['traceID']}, {len(spans)} spans")


async def test_the_server_container_runs_a_task_with_an_approval(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url("server"), timeout=30) as http:
        assert (await http.get("/info")).status_code == 401
        wrong = {"Authorization": f"Bearer {MESH_TOKEN}"}
        assert (await http.get("/info", headers=wrong)).status_code == 401
        refused = await http.post("/threads", json={"thread_id": "x", "content": "grpc"})
        assert refused.status_code == 401
    kinds = await server_runs_a_task(stack.url("server"), SERVER_TOKEN, "containers-approval")
    assert "approval_request" in kinds


def _wait_healthy(stack: Stack, service: str, timeout: float = 120) -> None:
    container = stack.containers()[service]
    deadline = time.monotonic() + timeout
    while True:
        (inspected,) = stack.inspect(container)
        health = inspected["State"].get("Health", {}).get("Status")
        if health == "healthy":
            return
        assert time.monotonic() < deadline, f"{service} is {health} after {timeout} s"
        time.sleep(0.5)


async def test_a_durable_approval_survives_restarts_of_the_worker_and_restate(
    stack: Stack,
) -> None:
    settings = RestateSettings(stack.url("restate-ingress"), stack.url("restate-admin"))
    async with RestateWorkflowClient(settings) as client:
        workflow = await client.start_agent_workflow(
            thread_id="containers-durable", user_content="restate", model="demo"
        )

        async def status(wanted: str) -> dict[str, Any]:
            async def reached() -> dict[str, Any]:
                found = await client.query_workflow(workflow)
                assert found["status"] == wanted, found
                return found

            return await eventually(
                reached, timeout=120, interval=0.5, retry_on=(AssertionError, NotFound, OSError)
            )

        waiting = await status("waiting_for_approval")
        for service in ("restate-worker", "restate"):
            started = time.monotonic()
            await asyncio.to_thread(stack.compose, "restart", service, timeout=120)
            await asyncio.to_thread(_wait_healthy, stack, service)
            REPORT.append(f"compose restart {service}: {time.monotonic() - started:.1f} s")
        # Still waiting, durably: nothing of it was in the processes restarted.
        assert (await status("waiting_for_approval"))["waiting_for"] == waiting["waiting_for"]
        (promise,) = waiting["waiting_for"]
        await client.resolve_promise(
            workflow_id=workflow, promise_name=promise, value={"action": "approve"}
        )
        done = await status("completed")
    assert done["result"]["content"].startswith("Done. Report sent to team@example.com")


def _grace_seconds(definition: dict[str, Any]) -> float:
    """A service's stop grace period (compose's `stop_grace_period`, 10 s by default)."""
    period = str(definition.get("stop_grace_period", "10s"))
    found = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", period)
    assert found, period
    return int(found[1] or 0) * 60 + float(found[2] or 0)


def test_compose_stop_stops_every_service_on_sigterm_well_within_its_grace_period(
    stack: Stack,
) -> None:
    config = json.loads(stack.compose("config", "--format", "json").stdout)["services"]
    containers = stack.containers()
    # Dependents first, as `docker compose stop` orders them.
    order: list[str] = []
    while len(order) < len(config):
        for name in config:
            dependents = [d for d, other in config.items() if name in other.get("depends_on", {})]
            if name not in order and all(d in order for d in dependents):
                order.append(name)
    slow = {}
    for service in order:
        grace = _grace_seconds(config[service])
        started = time.monotonic()
        stack.compose("stop", service, timeout=grace + 60)
        took = time.monotonic() - started
        (inspected,) = stack.inspect(containers[service])
        state = inspected["State"]
        REPORT.append(
            f"compose stop {service}: {took:.1f} s (grace {grace:.0f} s), exit {state['ExitCode']}"
        )
        if took > grace / 2 or state["ExitCode"] != 0:
            logs = stack.compose("logs", "--no-color", "--tail", "20", service, check=False)
            slow[service] = (round(took, 1), state["ExitCode"], logs.stdout[-2000:])
    # Exit 137 is SIGKILL: the service waited to be killed at the end of its grace period.
    assert slow == {}, "slow to stop, or not cleanly (seconds, exit code, last logs)"


def test_compose_down_and_the_engine_stop_leave_nothing_behind(
    stack: Stack, engine: Engine
) -> None:
    stack.compose("down", "--volumes", "--timeout", "30", timeout=180)
    assert engine.docker("ps", "--all", "--quiet").stdout.split() == []
    assert engine.docker("volume", "ls", "--quiet").stdout.split() == []
    networks = engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert sorted(networks) == ["bridge", "host", "none"]
    assert engine.stop() == []
    assert engine.leftovers() == []
    assert _engine.host_state() == stack.host_before
