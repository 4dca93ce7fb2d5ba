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
    with pytest.raises(BadId, match="longer than 512"):
        AgentId("a" * 513, "k")
    with pytest.raises(BadId, match="must be a non-empty string"):
        AgentId(3, "k")  # type: ignore[arg-type]
