"""SIGTERM: the worker, `ravi restate dev` and `ravi serve --runtime restate` drain and exit 0.

Kubernetes and Compose stop a container with SIGTERM and kill it when the grace
period is over, so each command must be gone before then, idle or busy, and
leave every durable run where Restate can resume it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from ravi.integrations.runtime.restate import RestateSettings, RestateWorkflowClient
from ravi.testing import RestateServer, eventually, ravi_command
from tests.restate.processes import Process, Serve, Worker, events_until, restate_server
from tests.restate.test_crashes import executions

pytestmark = [pytest.mark.restate, pytest.mark.timeout(180)]

GRACE = 5.0
# What a stop may take beyond the grace period: the interpreter's exit, on a loaded machine.
EXIT = 2.0


async def stopped_in_time(process: Process, limit: float) -> float:
    """SIGTERM the process; it exits 0 within `limit` s. Returns how long it took."""
    started = time.monotonic()
    code = await process.stop(timeout=limit + 10)
    took = time.monotonic() - started
    assert code == 0, process.output
    assert took < limit, f"took {took:.1f} s"
    return took


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[RestateServer]:
    restate = restate_server(tmp_path / "restate")
    await restate.start()
    try:
        yield restate
    finally:
        await restate.stop()


async def test_an_idle_worker_exits_at_once(server: RestateServer, tmp_path: Path) -> None:
    worker = Worker(server, tmp_path, grace_period=GRACE)
    await worker.start()
    try:
        await stopped_in_time(worker, 1.0 + EXIT)
    finally:
        await worker.kill()


async def test_a_busy_worker_finishes_its_step_suspends_and_exits(
    server: RestateServer, tmp_path: Path
) -> None:
    worker = Worker(server, tmp_path, "tests.restate.app:setup", grace_period=GRACE)
    await worker.start()
    try:
        async with RestateWorkflowClient(
            RestateSettings(server.ingress_url, server.admin_url)
        ) as client:
            slow = await client.start_agent_workflow(
                thread_id="slow", user_content="go", model="slow"
            )
            approval = await client.start_agent_workflow(
                thread_id="approval", user_content="go", model="approval"
            )

            async def busy() -> None:
                assert "slow" in executions(tmp_path)  # the 3-second step is running
                state = await client.query_workflow(approval)
                assert state["status"] == "waiting_for_approval"

            await eventually(busy, timeout=60, interval=0.05)
            took = await stopped_in_time(worker, GRACE + EXIT)
            assert took > 1.0  # it waited for the step rather than cutting it
            await worker.start()
            state = await client.query_workflow(approval)
            await client.resolve_promise(
                workflow_id=approval,
                promise_name=state["pending_approvals"][0]["promise"],
                value={"action": "approve"},
            )
            for workflow_id in (slow, approval):
                result = await client.wait_for_result(workflow_id, timeout=60)
                assert result["status"] == "completed", result
        # The step finished during the drain and was journaled: it never ran again.
        assert executions(tmp_path).count("slow") == 1
    finally:
        await worker.kill()


async def test_the_web_front_exits_at_once_idle_and_streaming(
    server: RestateServer, tmp_path: Path
) -> None:
    worker = Worker(server, tmp_path)
    serve = Serve(server)
    try:
        await asyncio.gather(worker.start(), serve.start())
        await stopped_in_time(serve, 1.0 + EXIT)
        await serve.start()
        async with serve.client() as client:
            await client.post("/threads", json={"thread_id": "open", "content": "restate"})
            await events_until(client, "open", {"approval_request"})
            stream = asyncio.ensure_future(events_until(client, "open", {"final"}))
            await asyncio.sleep(0.5)  # the stream is open, waiting for the next event
            await stopped_in_time(serve, GRACE + EXIT)
            with contextlib.suppress(Exception):
                await stream  # the server ended it
    finally:
        await asyncio.gather(serve.kill(), worker.kill())


def free_port_pair() -> tuple[int, int]:
    """An admin port P with P + 52 free too: `ravi restate dev` binds its node port there."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 52 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 52))
            except OSError:
                continue
        return port, port + 52
    raise RuntimeError("no free pair of loopback ports")


async def test_restate_dev_exits_0_idle_and_busy_and_its_runs_survive(tmp_path: Path) -> None:
    admin, _ = free_port_pair()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        ingress = int(probe.getsockname()[1])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{probe.getsockname()[1]}"
    command = [*ravi_command(), "restate", "dev", "--data-dir", str(tmp_path / "dev")]
    command += ["--ingress-port", str(ingress), "--admin-port", str(admin), "--listen", listen]
    command += ["--grace-period", str(GRACE)]
    dev = Process(command)
    settings = RestateSettings(f"http://127.0.0.1:{ingress}", f"http://127.0.0.1:{admin}")
    try:
        await dev.start()
        await stopped_in_time(dev, 10.0 + EXIT)  # worker at once, restate-server in its time
        await dev.start()
        async with RestateWorkflowClient(settings) as client:
            run = await client.start_agent_workflow(
                thread_id="dev", user_content="restate", model="demo"
            )

            async def waiting() -> str:
                state = await client.query_workflow(run)
                assert state["status"] == "waiting_for_approval", state
                return str(state["pending_approvals"][0]["promise"])

            promise = await eventually(waiting, timeout=60, interval=0.1)
            await stopped_in_time(dev, GRACE + 10.0 + EXIT)
            await dev.start()  # the same data: the run still waits
            await client.resolve_promise(
                workflow_id=run, promise_name=promise, value={"action": "approve"}
            )
            result = await client.wait_for_result(run, timeout=60)
        assert result["result"]["content"].startswith("Done. Report sent to team@example.com")
    finally:
        await dev.kill()


def children_of(pid: int) -> set[int]:
    """The direct children of `pid`, from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def test_restate_dev_killed_9_leaves_no_restate_server_behind(tmp_path: Path) -> None:
    admin, _ = free_port_pair()
    command = [*ravi_command(), "restate", "dev", "--data-dir", str(tmp_path / "dev")]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        ingress = int(probe.getsockname()[1])
    command += ["--admin-port", str(admin), "--ingress-port", str(ingress)]
    command += ["--listen", "127.0.0.1:0"]
    dev = Process(command)
    await dev.start()
    try:
        assert dev.process is not None
        servers = children_of(dev.process.process.pid)
        assert servers, "ravi restate dev started no child process"
    finally:
        await dev.kill()

    async def gone() -> None:
        alive = [pid for pid in servers if running(pid)]
        assert not alive, f"still running after ravi restate dev was killed: {alive}"

    await eventually(gone, timeout=10, interval=0.1)
