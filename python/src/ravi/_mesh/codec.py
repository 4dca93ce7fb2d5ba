"""The contract codec: ravi's Python types to and from the ravi.mesh.v1 messages.

Every runtime that speaks the contract uses it: GrpcRuntime's mesh node on
the wire, RestateRuntime for the envelopes it journals. It knows no transport.
Errors have their two encodings in `ravi.errors` (`to_call_failure`,
`from_call_failure`, `to_grpc_status`, `from_grpc_error`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from ravi._ids import AgentId, TopicId
from ravi._serialization import JSON, MessageRegistry, check_json_depth, media_type
from ravi._subscriptions import Subscription, TypeSubscription
from ravi.errors import BadId, BadPayload
from ravi.mesh.v1 import agent_service_pb2, contract, types_pb2

CONTRACT_VERSION = contract.VERSION
"""The version of ravi.mesh.v1 this node implements (proto/ravi/mesh/v1/contract.toml)."""

HOP_LIMIT = contract.HOP_LIMIT
"""How many nodes may forward one Send before it is refused (the same in every language)."""

LANGUAGE = "python"

UNARY_RPCS: frozenset[str] = frozenset(
    f"/{method.containing_service.full_name}/{method.name}"
    for method in agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].methods
    if not method.client_streaming and not method.server_streaming
)
"""AgentService's unary RPCs by full method name (the ones traced by an RPC span)."""

_JSON_OBJECT = "google.protobuf.Struct"
_TRACE_KEYS = ("traceparent", "tracestate")


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


def envelope(
    registry: MessageRegistry,
    message: Any,
    sender: AgentId | None,
    message_id: str,
    metadata: Mapping[str, str] | None,
) -> types_pb2.Envelope:
    """The envelope a message travels in."""
    made = types_pb2.Envelope(
        message_id=message_id,
        sender=agent_id_to_wire(sender) if sender is not None else None,
        payload=encode(registry, message),
    )
    if metadata:
        put_metadata(made.metadata, metadata)
    return made


def put_metadata(entries: MutableMapping[str, str], metadata: Mapping[str, str]) -> None:
    """Add `metadata` to an envelope's map, one entry at a time.

    Protobuf fills a map given to a constructor, or to `update()`, through
    `MutableMapping.update`, in Python: 0.6 µs for an empty one, 1.4 µs for a
    `traceparent`, on every message. Setting the entries is C (0.3 µs).
    """
    for key, value in metadata.items():
        entries[key] = value


def metadata_of(entries: Mapping[str, str]) -> dict[str, str]:
    """An envelope's metadata map as a dict.

    `dict(entries)` and `{**entries}` read protobuf's map through
    `Mapping.keys()`, in Python: about 1 µs a message (0.5 µs when empty), a
    tenth of a node's time delivering traced events. Iterating it is C.
    """
    return {key: entries[key] for key in entries} if entries else {}


def sender_of(envelope: types_pb2.Envelope) -> AgentId | None:
    """The sender an envelope names, if any (BAD_ID when it names half of one)."""
    return agent_id_from_wire(envelope.sender, "sender") if envelope.HasField("sender") else None


def trace_of(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    """The W3C trace context entries of a message's metadata (for a call's own metadata)."""
    return [(key, metadata[key]) for key in _TRACE_KEYS if key in metadata]


def is_trace_key(key: str) -> bool:
    return key in _TRACE_KEYS


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


def state_from_wire(payload: types_pb2.Payload) -> Any:
    """An agent's saved state, as SaveState and LoadState carry it (a JSON object)."""
    if media_type(payload.content_type) != JSON:
        raise BadPayload(f"agent state travels as {JSON}, not {payload.content_type[:100]!r}")
    check_json_depth(payload.data)
    try:
        return json.loads(payload.data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadPayload(f"invalid JSON in a {payload.type} payload: {exc}") from exc


def state_to_wire(value: Mapping[str, Any]) -> types_pb2.Payload:
    return types_pb2.Payload(
        type=_JSON_OBJECT, content_type=JSON, data=json.dumps(dict(value)).encode()
    )
