"""Agent and topic identifiers."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass

from ravi.errors import BadId
from ravi.mesh.v1.contract import MAX_KEY_BYTES, MAX_TYPE_BYTES

_TYPE_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]+")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""The control characters (Unicode category Cc) a printable key may not hold (types.proto)."""
_message_ids = itertools.count(1)
_id_prefix = os.urandom(6).hex()


def new_message_id() -> str:
    """A process-unique message id, cheaper than a UUID on the hot path."""
    return f"{_id_prefix}-{next(_message_ids)}"


def _check_type(kind: str, value: object) -> None:
    if not isinstance(value, str) or not _TYPE_PATTERN.fullmatch(value):
        raise BadId(
            f"{kind} must be a non-empty string of letters, digits, '_', '-', '.' or ':'; "
            f"got {value[:64] if isinstance(value, str) else value!r}"
        )
    if len(value) > MAX_TYPE_BYTES:
        raise BadId(f"{kind} is longer than {MAX_TYPE_BYTES} characters")


def _check_name(kind: str, value: object) -> None:
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        shown = value[:64] if isinstance(value, str) else value
        raise BadId(f"{kind} must be a non-empty string without control characters; got {shown!r}")
    # A key of at most MAX_KEY_BYTES / 4 characters cannot exceed the limit in UTF-8.
    if len(value) > MAX_KEY_BYTES // 4 and len(value.encode()) > MAX_KEY_BYTES:
        raise BadId(f"{kind} is longer than {MAX_KEY_BYTES} bytes of UTF-8")


@dataclass(frozen=True, slots=True)
class AgentType:
    """AgentType is what `register` returns: the registered type name."""

    type: str


@dataclass(frozen=True, slots=True)
class AgentId:
    """AgentId addresses one agent instance: `type` selects the code, `key` the instance.

    Each AgentId has its own mailbox and state. Both parts are validated on
    construction: an empty or malformed part raises `ravi.errors.BadId`.

    Args:
        type: the agent type, as registered (letters, digits, '_', '-', '.', ':').
        key: the instance key (any non-empty printable string).
    """

    type: str
    key: str

    def __post_init__(self) -> None:
        _check_type("agent type", self.type)
        _check_name("agent key", self.key)

    def __str__(self) -> str:
        return f"{self.type}/{self.key}"

    @classmethod
    def parse(cls, text: str) -> AgentId:
        """Parse the "type/key" form that `str(agent_id)` prints."""
        agent_type, sep, key = text.partition("/")
        if not sep:
            raise BadId(f"expected 'type/key', got {text!r}")
        return cls(agent_type, key)


@dataclass(frozen=True, slots=True)
class TopicId:
    """TopicId names a stream of published events: subscriptions match on `type`.

    The `source` usually names where the events come from (a conversation id)
    and becomes the key of the agent that receives them.

    Args:
        type: the topic type (letters, digits, '_', '-', '.', ':').
        source: the topic source (any non-empty printable string).
    """

    type: str
    source: str

    def __post_init__(self) -> None:
        _check_type("topic type", self.type)
        _check_name("topic source", self.source)

    def __str__(self) -> str:
        return f"{self.type}/{self.source}"

    @classmethod
    def parse(cls, text: str) -> TopicId:
        """Parse the "type/source" form that `str(topic_id)` prints."""
        topic_type, sep, source = text.partition("/")
        if not sep:
            raise BadId(f"expected 'type/source', got {text!r}")
        return cls(topic_type, source)
