"""Conversions between ravi's Python types and the ravi.mesh.v1 wire types."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from ravi._ids import AgentId, TopicId
from ravi._serialization import MessageRegistry
from ravi._subscriptions import Subscription, TypeSubscription
from ravi.errors import BadId, BadPayload, Code, RaviError, error_for
from ravi.mesh.v1 import agent_service_pb2, types_pb2

CONTRACT_VERSION = "1.1.0"
LANGUAGE = "python"


def agent_id_to_wire(agent: AgentId) -> types_pb2.AgentId:
    return types_pb2.AgentId(type=agent.type, key=agent.key)


def agent_id_from_wire(wire: types_pb2.AgentId, what: str = "agent id") -> AgentId:
    if not wire.type or not wire.key:
        raise BadId(f"{what} needs a type and a key; got {wire.type!r}/{wire.key!r}")
    return AgentId(wire.type, wire.key)


def topic_from_wire(wire: types_pb2.TopicId) -> TopicId:
    if not wire.type or not wire.source:
        raise BadId(f"topic id needs a type and a source; got {wire.type!r}/{wire.source!r}")
    return TopicId(wire.type, wire.source)


def topic_to_wire(topic: TopicId) -> types_pb2.TopicId:
    return types_pb2.TopicId(type=topic.type, source=topic.source)


def encode(registry: MessageRegistry, message: Any) -> types_pb2.Payload:
    encoded = registry.encode(message)
    return types_pb2.Payload(
        type=encoded.type, content_type=encoded.content_type, data=encoded.data
    )


def decode(registry: MessageRegistry, payload: types_pb2.Payload) -> Any:
    if not payload.type:
        raise BadPayload("the envelope has no payload type")
    return registry.decode(payload.type, payload.content_type, payload.data)


def chain_to_wire(chain: Iterable[tuple[str, str]]) -> list[types_pb2.AgentId]:
    return [types_pb2.AgentId(type=t, key=k) for t, k in chain]


def chain_from_wire(chain: Iterable[types_pb2.AgentId]) -> tuple[tuple[str, str], ...]:
    return tuple((a.type, a.key) for a in chain)


def filter_of(subscription: Subscription) -> types_pb2.TopicFilter:
    if isinstance(subscription, TypeSubscription):
        return types_pb2.TopicFilter(topic_type=subscription.topic_type)
    return types_pb2.TopicFilter(topic_type_prefix=subscription.topic_type_prefix)


def subscription_to_wire(subscription: Subscription) -> types_pb2.Subscription:
    return types_pb2.Subscription(
        id=subscription.id, agent_type=subscription.agent_type, filter=filter_of(subscription)
    )


def matches(topic_filter: types_pb2.TopicFilter, topic_type: str) -> bool:
    kind = topic_filter.WhichOneof("kind")
    if kind == "topic_type":
        return topic_filter.topic_type == topic_type
    if kind == "topic_type_prefix":
        return topic_type.startswith(topic_filter.topic_type_prefix)
    return False


def rendezvous_score(node_id: str, agent_type: str, key: str) -> int:
    """The node's score for an agent id: the highest score hosts it (docs/protocol.md)."""
    digest = hashlib.sha256(f"{node_id}\0{agent_type}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def failure_of(error: RaviError) -> agent_service_pb2.CallFailure:
    """A failed call as a Connect frame carries it."""
    return agent_service_pb2.CallFailure(
        code=error.code.value,
        message=error.message,
        reason=error.reason or "",
        metadata=error.metadata,
    )


def error_of(failure: agent_service_pb2.CallFailure) -> RaviError:
    """The error a Connect frame's failure stands for, flagged remote."""
    code = Code(failure.code) if failure.code in Code._value2member_map_ else Code.UNKNOWN
    return error_for(
        code,
        failure.message,
        reason=failure.reason or None,
        remote=True,
        metadata=dict(failure.metadata),
    )
