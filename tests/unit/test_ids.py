"""Agent and topic ids."""

import pytest

from ravi import AgentId, TopicId
from ravi.errors import BadId


def test_ids_print_and_parse_as_type_slash_key() -> None:
    agent = AgentId("writer", "conv/1")
    assert str(agent) == "writer/conv/1"
    assert AgentId.parse(str(agent)) == agent
    assert TopicId.parse("progress/conv-1") == TopicId("progress", "conv-1")
    with pytest.raises(BadId, match="expected 'type/key'"):
        AgentId.parse("writer")


def test_ids_are_values() -> None:
    assert AgentId("a", "b") == AgentId("a", "b")
    assert hash(AgentId("a", "b")) == hash(AgentId("a", "b"))
    assert AgentId("a", "b") != TopicId("a", "b")
    with pytest.raises(AttributeError):
        AgentId("a", "b").key = "c"  # type: ignore[misc]


def test_overlong_parts_are_refused() -> None:
    with pytest.raises(BadId, match="longer than 256"):
        AgentId("a" * 257, "k")
    with pytest.raises(BadId, match="longer than 1024 bytes"):
        AgentId("a", "é" * 513)
    assert AgentId("a" * 256, "é" * 512).key == "é" * 512


def test_keys_may_hold_anything_but_control_characters() -> None:
    assert AgentId("a", "ü / x:y\u00a0").key == "ü / x:y\u00a0"
    for bad in ("a\x00", "a\nb", "\x7f", "a\x85", "\x9f"):
        with pytest.raises(BadId, match="without control characters"):
            AgentId("a", bad)
    with pytest.raises(BadId, match="must be a non-empty string"):
        AgentId(3, "k")  # type: ignore[arg-type]
