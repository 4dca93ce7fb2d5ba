"""Runtime contract suite fixtures: one `runtime` per runtime kind, with the suite's agents.

Every kind gets the same agents (tests/contract/agents.py) and subscriptions;
tests talk to them only through the BaseRuntime interface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ravi import Interceptor, TypePrefixSubscription, TypeSubscription
from ravi.runtime import BaseRuntime, LocalRuntime
from tests.contract.agents import AGENT_TYPES

SUBSCRIPTIONS = (
    TypeSubscription("fan", "recorder"),
    TypeSubscription("fan", "other"),
    TypeSubscription("fan", "flaky"),
    TypePrefixSubscription("alerts.", "third"),
)
MAILBOX_CAPACITY = 50
DEFAULT_TIMEOUT = 10.0

RUNTIME_KINDS = ["local", "local-intercepted"]


class PassThrough(Interceptor):
    """Takes the intercepted paths without changing anything, to prove they keep the contract."""


async def setup_agents(runtime: BaseRuntime) -> None:
    for agent_type, cls in AGENT_TYPES.items():
        await cls.register(runtime, agent_type)
    for subscription in SUBSCRIPTIONS:
        await runtime.add_subscription(subscription)


@pytest_asyncio.fixture(params=RUNTIME_KINDS)
async def runtime(request: pytest.FixtureRequest) -> AsyncIterator[BaseRuntime]:
    interceptors = [PassThrough()] if request.param == "local-intercepted" else []
    local = LocalRuntime(
        default_timeout=DEFAULT_TIMEOUT,
        mailbox_capacity=MAILBOX_CAPACITY,
        interceptors=interceptors,
    )
    await setup_agents(local)
    async with local:
        yield local
