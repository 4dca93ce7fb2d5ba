"""Runtime contract suite fixtures: one `runtime` per runtime kind, with the suite's agents.

Every kind gets the same agents (tests/contract/agents.py) and subscriptions;
tests talk to them only through the BaseRuntime interface. On "grpc" the agents
live in two `ravi node` processes and the test's runtime is a client of both.
The runtime under test also hosts a `Witness` of its own (see agents.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from ravi import AgentId, Interceptor
from ravi.errors import AgentTypeNotFound
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.integrations.runtime.restate import RestateRuntime
from ravi.runtime import BaseRuntime, LocalRuntime
from ravi.testing import eventually, ravi_command, running_node, running_restate
from tests.contract.agents import Call, Witness
from tests.contract.harness import NODE_A_TYPES, NODE_B_TYPES, WITNESS, register
from tests.paths import REPO_ROOT, RESTATE_SERVER

MAILBOX_CAPACITY = 50
DEFAULT_TIMEOUT = 10.0

RUNTIME_KINDS = ["local", "local-intercepted", "grpc", "restate", "restate-intercepted"]


class PassThrough(Interceptor):
    """Takes the intercepted paths without changing anything, to prove they keep the contract."""


_WORKERS: weakref.WeakKeyDictionary[RestateRuntime, Callable[[str], Awaitable[RestateRuntime]]] = (
    weakref.WeakKeyDictionary()
)


async def with_witness(runtime: BaseRuntime) -> None:
    await Witness.register(runtime, "witness")
    await runtime.add_subscription(WITNESS)


@contextlib.asynccontextmanager
async def worker_like(stopped: RestateRuntime) -> AsyncIterator[RestateRuntime]:
    """Another worker with the agents of a stopped one, at its address: its invocations resume."""
    assert stopped.deployment_uri is not None
    worker = await _WORKERS[stopped](stopped.deployment_uri.removeprefix("http://"))
    async with worker:
        yield worker


def node_command(node_id: str, setup: str, *peers: str) -> list[str]:
    command = [*ravi_command(), "node", "--listen", "127.0.0.1:0", "--node-id", node_id]
    command += ["--setup", setup, "--app-dir", str(REPO_ROOT)]
    command += ["--mailbox-capacity", str(MAILBOX_CAPACITY)]
    command += ["--default-timeout", str(DEFAULT_TIMEOUT)]
    for peer in peers:
        command += ["--peer", peer]
    return command


@pytest_asyncio.fixture(params=RUNTIME_KINDS)
async def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseRuntime]:
    Witness.seen.clear()
    if request.param.startswith("restate"):
        # A fresh server per test: object state and journals start empty.
        async with running_restate(RESTATE_SERVER, tmp_path / "restate") as server:
            interceptors = [PassThrough()] if request.param == "restate-intercepted" else []

            async def worker(listen: str) -> RestateRuntime:
                runtime = RestateRuntime(
                    server.ingress_url,
                    server.admin_url,
                    listen=listen,
                    default_timeout=DEFAULT_TIMEOUT,
                    interceptors=interceptors,
                )
                await register(runtime, NODE_A_TYPES + NODE_B_TYPES)
                await with_witness(runtime)
                return runtime

            durable = await worker("127.0.0.1:0")
            _WORKERS[durable] = worker
            async with durable:
                yield durable
        return
    if request.param == "grpc":
        async with running_node(node_command("node-a", "tests.contract.harness:node_a")) as a:
            command = node_command("node-b", "tests.contract.harness:node_b", f"a={a.address}")
            async with running_node(command) as b:
                client = GrpcRuntime(
                    remote_peers={"node-a": a.address, "node-b": b.address},
                    options=GrpcRuntimeOptions(default_timeout=DEFAULT_TIMEOUT),
                )
                await with_witness(client)
                async with client:
                    await asyncio.gather(
                        *(client.wait_until_ready(t) for t in NODE_A_TYPES + NODE_B_TYPES)
                    )
                    # node-a learns node-b when node-b describes it: wait until a
                    # call from node-a reaches node-b.
                    await eventually(
                        lambda: client.send_message(
                            Call("other", "probe"), AgentId("recorder", "probe")
                        ),
                        retry_on=(AgentTypeNotFound,),
                    )
                    yield client
        return
    interceptors = [PassThrough()] if request.param == "local-intercepted" else []
    local = LocalRuntime(
        default_timeout=DEFAULT_TIMEOUT,
        mailbox_capacity=MAILBOX_CAPACITY,
        interceptors=interceptors,
    )
    await register(local, NODE_A_TYPES + NODE_B_TYPES)
    await with_witness(local)
    async with local:
        yield local
