"""Fixtures of the A2A tests: `ravi serve --a2a` and official A2A clients."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc.aio
import httpx
import pytest_asyncio
from a2a.client import (
    A2ACardResolver,
    AuthInterceptor,
    Client,
    ClientCallContext,
    ClientConfig,
    ClientFactory,
    InMemoryContextCredentialStore,
)

from ravi.testing import NodeProcess, ravi_command, running_node
from tests.paths import REPO_ROOT

TOKEN = "a2a-test-token"
SESSION = "tests"
SERVED = ("assistant", "librarian", "slowpoke")


def serve_command(*extra: str) -> list[str]:
    """`ravi serve --a2a` with the test agents (tests/a2a/agents.py).

    Threads in memory, unless `extra` names a --data-dir.
    """
    store = [] if "--data-dir" in extra else ["--store", "memory"]
    command = [*ravi_command(), "serve", "--port", "0", "--token", TOKEN, "--a2a", *store]
    command += ["--app-dir", str(REPO_ROOT), "--setup", "tests.a2a.agents:setup"]
    for name in SERVED:
        command += ["--a2a-agent", f"tests.a2a.agents:{name}"]
    return [*command, *extra]


@dataclass
class Gateway:
    """A running `ravi serve --a2a`: where it is, and how to make official clients for it."""

    url: str
    token: str = TOKEN

    @classmethod
    def of(cls, node: NodeProcess) -> Gateway:
        return cls(f"http://{node.address}")

    def card_url(self, agent_type: str) -> str:
        return f"{self.url}/a2a/{agent_type}"

    async def client(self, agent_type: str, binding: str, *, streaming: bool = True) -> Client:
        """An official client for an agent, from its card, on one binding, with the token."""
        async with httpx.AsyncClient() as http:
            card = await A2ACardResolver(http, self.card_url(agent_type)).get_agent_card()
        credentials = InMemoryContextCredentialStore()
        await credentials.set_credentials(SESSION, "bearer", self.token)
        config = ClientConfig(
            streaming=streaming,
            supported_protocol_bindings=[binding],
            grpc_channel_factory=grpc.aio.insecure_channel,
        )
        return ClientFactory(config).create(card, interceptors=[AuthInterceptor(credentials)])

    @contextlib.asynccontextmanager
    async def connected(
        self, agent_type: str, binding: str, *, streaming: bool = True
    ) -> AsyncIterator[Client]:
        """`client`, closed at the end."""
        client = await self.client(agent_type, binding, streaming=streaming)
        try:
            yield client
        finally:
            await client.close()

    def api(self) -> httpx.AsyncClient:
        """The server's own HTTP API (threads, approvals), with the token."""
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


def session() -> ClientCallContext:
    """The call context the AuthInterceptor finds the token by."""
    return ClientCallContext(state={"sessionId": SESSION}, timeout=60)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[Gateway]:
    async with running_node(serve_command()) as node:
        yield Gateway.of(node)
