"""How the contract suite spreads its agents over two `ravi node` processes.

node-a hosts recorder, reentrant, news_reader and flaky; node-b hosts other and
third. Each node subscribes the agent types it hosts; the test's own runtime is
a client of both.
"""

from __future__ import annotations

from ravi import TypePrefixSubscription, TypeSubscription
from ravi.runtime import BaseRuntime
from tests.contract.agents import AGENT_TYPES

NODE_A_TYPES = ("recorder", "reentrant", "news_reader", "flaky")
WITNESS = TypeSubscription("flush", "witness")
"""Where the runtime under test's own `Witness` listens (see conftest.py)."""
NODE_B_TYPES = ("other", "third")

SUBSCRIPTIONS = (
    TypeSubscription("fan", "recorder"),
    TypeSubscription("fan", "other"),
    TypeSubscription("fan", "flaky"),
    TypePrefixSubscription("alerts.", "third"),
)


async def register(runtime: BaseRuntime, agent_types: tuple[str, ...]) -> None:
    for agent_type in agent_types:
        await AGENT_TYPES[agent_type].register(runtime, agent_type)
    for subscription in SUBSCRIPTIONS:
        if subscription.agent_type in agent_types:
            await runtime.add_subscription(subscription)


async def node_a(runtime: BaseRuntime) -> None:
    await register(runtime, NODE_A_TYPES)


async def node_b(runtime: BaseRuntime) -> None:
    await register(runtime, NODE_B_TYPES)
