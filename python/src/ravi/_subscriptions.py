"""Subscriptions: which agents receive the messages published on which topics."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias, TypeVar

from ravi._ids import AgentId, TopicId, _check_type


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class TypeSubscription:
    """TypeSubscription sends messages on topics of `topic_type` to agents of `agent_type`.

    The receiving agent's key is the topic source, so `TopicId("progress",
    "conv-1")` reaches `AgentId(agent_type, "conv-1")`.
    """

    topic_type: str
    agent_type: str
    id: str = field(default_factory=_new_id, compare=False)

    def __post_init__(self) -> None:
        _check_type("topic type", self.topic_type)
        _check_type("agent type", self.agent_type)

    def is_match(self, topic: TopicId) -> bool:
        """Whether a message on `topic` is for this subscription."""
        return topic.type == self.topic_type

    def map_to_agent(self, topic: TopicId) -> AgentId:
        """The agent that receives a message on `topic`."""
        return AgentId(self.agent_type, topic.source)


@dataclass(frozen=True, slots=True)
class TypePrefixSubscription:
    """TypePrefixSubscription matches every topic type that starts with a prefix.

    The receiving agent's key is the topic source, as for `TypeSubscription`.
    """

    topic_type_prefix: str
    agent_type: str
    id: str = field(default_factory=_new_id, compare=False)

    def __post_init__(self) -> None:
        _check_type("topic type prefix", self.topic_type_prefix)
        _check_type("agent type", self.agent_type)

    def is_match(self, topic: TopicId) -> bool:
        """Whether a message on `topic` is for this subscription."""
        return topic.type.startswith(self.topic_type_prefix)

    def map_to_agent(self, topic: TopicId) -> AgentId:
        """The agent that receives a message on `topic`."""
        return AgentId(self.agent_type, topic.source)


Subscription: TypeAlias = TypeSubscription | TypePrefixSubscription
"""Subscription is any of the subscription kinds the contract can describe."""

SubscriptionFactory: TypeAlias = Callable[[str], Subscription]
"""A function from the registered agent type to the subscription to add."""

A = TypeVar("A", bound=type)


def type_subscription(topic_type: str) -> Callable[[A], A]:
    """Class decorator: subscribe the agent type to topics of `topic_type` on registration.

    `await MyAgent.register(runtime, "my_type")` then adds
    `TypeSubscription(topic_type, "my_type")`.
    """
    _check_type("topic type", topic_type)

    def decorate(cls: A) -> A:
        factories: list[SubscriptionFactory] = list(
            getattr(cls, "_ravi_subscription_factories", ())
        )
        factories.append(lambda agent_type: TypeSubscription(topic_type, agent_type))
        cls._ravi_subscription_factories = tuple(factories)  # type: ignore[attr-defined]
        return cls

    return decorate


def default_subscription(cls: A) -> A:
    """Class decorator: subscribe the agent type to the topic type "default"."""
    return type_subscription("default")(cls)
