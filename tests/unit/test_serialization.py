"""The message registry: names, encodings, round trips and clear decode errors."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ravi import MessageRegistry, message_type
from ravi.errors import BadPayload
from ravi.examples.v1 import examples_pb2
from ravi.mesh.v1 import types_pb2

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


@dataclass
class Note:
    text: str
    tags: list[str] = field(default_factory=list)
    score: float = 0.0
    when: dt.datetime | None = None


@dataclass
class Wrapper:
    note: Note
    count: int


class Order(pydantic.BaseModel):
    sku: str
    quantity: int
    notes: list[str] = []


texts = st.text(max_size=50)
notes = st.builds(
    Note,
    text=texts,
    tags=st.lists(texts, max_size=4),
    score=st.floats(allow_nan=False, allow_infinity=False),
    when=st.none() | st.datetimes(timezones=st.just(dt.UTC)),
)


@given(notes, st.integers(min_value=-(2**53), max_value=2**53))
def test_dataclasses_round_trip_as_json(note: Note, count: int) -> None:
    registry = MessageRegistry()
    registry.register(Wrapper, "test.Wrapper")
    encoded = registry.encode(Wrapper(note, count))
    assert (encoded.type, encoded.content_type) == ("test.Wrapper", JSON)
    assert registry.decode(encoded.type, encoded.content_type, encoded.data) == Wrapper(note, count)


@given(st.text(min_size=1, max_size=30), st.integers(0, 10**6), st.lists(texts, max_size=3))
def test_pydantic_models_round_trip_as_json(sku: str, quantity: int, extra: list[str]) -> None:
    registry = MessageRegistry()
    order = Order(sku=sku, quantity=quantity, notes=extra)
    encoded = registry.encode(order)
    assert encoded.type == f"{__name__}.Order"
    assert registry.decode(encoded.type, encoded.content_type, encoded.data) == order


drafts = st.builds(
    examples_pb2.Draft, text=st.text(max_size=80), revision=st.integers(0, 2**32 - 1)
)


@given(st.builds(examples_pb2.ReviewRequest, draft=drafts, criteria=st.lists(texts, max_size=3)))
def test_protobuf_messages_round_trip_in_binary_and_json(
    request: examples_pb2.ReviewRequest,
) -> None:
    registry = MessageRegistry()
    for content_type in (PROTOBUF, JSON):
        encoded = registry.encode(request, content_type)
        assert (encoded.type, encoded.content_type) == (
            "ravi.examples.v1.ReviewRequest",
            content_type,
        )
        assert registry.decode(encoded.type, content_type, encoded.data) == request


def test_protobuf_types_decode_by_name_without_registration() -> None:
    registry = MessageRegistry()
    data = types_pb2.AgentId(type="t", key="k").SerializeToString()
    assert registry.decode("ravi.mesh.v1.AgentId", PROTOBUF, data) == types_pb2.AgentId(
        type="t", key="k"
    )
    assert registry.lookup("ravi.mesh.v1.AgentId") is types_pb2.AgentId


def test_names_are_explicit_and_collision_free() -> None:
    registry = MessageRegistry()
    assert registry.register(Note, "notes.Note") == "notes.Note"
    assert registry.register(Note) == "notes.Note"
    with pytest.raises(TypeError, match=r"registered as 'notes.Note' already"):
        registry.register(Note, "other.Note")
    with pytest.raises(TypeError, match=r"'notes.Note' is taken by .*Note"):
        registry.register(Wrapper, "notes.Note")
    with pytest.raises(TypeError, match=r"is a protobuf message's name"):
        registry.register(Wrapper, "ravi.examples.v1.Draft")
    with pytest.raises(TypeError, match=r"its type name is its full name"):
        registry.register(examples_pb2.Draft, "my.Draft")
    with pytest.raises(TypeError, match=r"is not a message type"):
        registry.register(int)
    with pytest.raises(TypeError, match=r"invalid message type name"):
        registry.register(Order, " padded ")


def test_message_type_decorator_registers_in_the_process_registry() -> None:
    from ravi import registry

    @message_type("tests.unit.Decorated")
    @dataclass
    class Decorated:
        value: int

    assert registry.type_name(Decorated) == "tests.unit.Decorated"
    assert registry.lookup("tests.unit.Decorated") is Decorated


@pytest.mark.parametrize(
    ("type_name", "content_type", "data", "message"),
    [
        ("no.Such", JSON, b"{}", 'unknown message type "no.Such"'),
        ("test.Note", JSON, b"{not json", "cannot decode test.Note from application/json"),
        ("test.Note", JSON, b'{"tags": []}', "text: Field required"),
        ("test.Note", PROTOBUF, b"\x08\x01", "test.Note travels as application/json"),
        ("ravi.examples.v1.Draft", PROTOBUF, b"\xff\xff", "cannot decode ravi.examples.v1.Draft"),
        ("ravi.examples.v1.Draft", JSON, b'{"nope": 1}', "cannot decode ravi.examples.v1.Draft"),
        ("ravi.examples.v1.Draft", "text/plain", b"", "content type 'text/plain' is not supported"),
    ],
)
def test_undecodable_payloads_are_bad_payload(
    type_name: str, content_type: str, data: bytes, message: str
) -> None:
    registry = MessageRegistry()
    registry.register(Note, "test.Note")
    with pytest.raises(BadPayload, match=message) as caught:
        registry.decode(type_name, content_type, data)
    assert caught.value.reason == "BAD_PAYLOAD"


def test_encoding_something_that_is_not_a_message_is_bad_payload() -> None:
    with pytest.raises(BadPayload, match="is not a message type"):
        MessageRegistry().encode(object())
    with pytest.raises(BadPayload, match="travels as application/json"):
        MessageRegistry().encode(Order(sku="a", quantity=1), PROTOBUF)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=8,
    )
)
def test_plain_json_values_round_trip_as_protobuf_value(value: object) -> None:
    if value is None:
        return
    registry = MessageRegistry()
    encoded = registry.encode(value)
    assert (encoded.type, encoded.content_type) == ("google.protobuf.Value", JSON)
    assert registry.decode(encoded.type, encoded.content_type, encoded.data) == value


def test_values_that_are_not_plain_json_are_bad_payload() -> None:
    with pytest.raises(BadPayload, match="list value is not plain JSON"):
        MessageRegistry().encode([object()])
    with pytest.raises(BadPayload, match=r"cannot decode google\.protobuf\.Value"):
        MessageRegistry().decode("google.protobuf.Value", JSON, b"{nope")
