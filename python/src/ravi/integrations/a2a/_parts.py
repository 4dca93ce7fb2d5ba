"""Between A2A parts and ravi messages: data parts that name a type, errors as data."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from a2a.helpers import new_data_part, new_text_part
from a2a.types import Artifact, Part
from google.protobuf import json_format, struct_pb2

from ravi._serialization import JSON, JSON_VALUE, registry
from ravi.a2a.v1 import a2a_pb2 as rpb
from ravi.errors import BadPayload, RaviError, code_of

P = TypeVar("P", Part, rpb.Part)

TYPE_KEY = "@type"
"""The key of a data part that names a message type, as in protobuf's JSON for Any."""


def decode_message(data: Any) -> Any:
    """The ravi message a data part describes: {"@type": NAME, ...fields}.

    A protobuf well-known type and a plain JSON value ("google.protobuf.Value")
    carry their JSON under "value", as protobuf's JSON for Any does.

    Raises:
        BadPayload: the part names no type, an unknown one, or fields that do
            not decode.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get(TYPE_KEY), str):
        raise BadPayload(
            'the message needs a data part naming its type: {"@type": "TYPE", ...fields}'
        )
    fields = {k: v for k, v in data.items() if k != TYPE_KEY}
    name = data[TYPE_KEY]
    if name == JSON_VALUE or (set(fields) == {"value"} and _is_well_known(name)):
        body = json.dumps(fields.get("value"))
    else:
        body = json.dumps(fields)
    return registry.decode(name, JSON, body.encode())


def encode_message(message: Any) -> dict[str, Any]:
    """A ravi message as a data part's JSON: {"@type": NAME, ...fields}."""
    encoded = registry.encode(message, JSON)
    value = json.loads(encoded.data)
    if isinstance(value, dict) and not _is_well_known(encoded.type):
        return {TYPE_KEY: encoded.type, **value}
    return {TYPE_KEY: encoded.type, "value": value}


def _is_well_known(name: str) -> bool:
    return name.startswith("google.protobuf.")


def failure(error: BaseException) -> dict[str, str]:
    """An error as the data part of a failed task: its code, message and reason."""
    data = {"code": code_of(error).name, "message": str(error)}
    if isinstance(error, RaviError) and error.reason:
        data["reason"] = error.reason
    return data


def text_and_data(text: str, data: Any) -> list[Part]:
    """A message's parts: a text part (when there is text) and a data part."""
    parts = [new_text_part(text)] if text else []
    parts.append(new_data_part(data))
    return parts


def to_ravi_parts(parts: Iterable[Part]) -> list[rpb.Part]:
    """A2A parts as the ravi.a2a.v1 parts a mesh caller reads."""
    return [_copy(part, rpb.Part()) for part in parts]


def from_ravi_parts(parts: Iterable[rpb.Part]) -> list[Part]:
    """ravi.a2a.v1 parts as A2A parts.

    Raises:
        BadPayload: a part has no content.
    """
    converted = []
    for part in parts:
        if part.WhichOneof("content") is None:
            raise BadPayload("a ravi.a2a.v1.Part has no content: set text, data, raw or url")
        converted.append(_copy(part, Part()))
    return converted


def _copy(part: Part | rpb.Part, into: P) -> P:
    """Copy a part between the two messages, whose fields have the same names."""
    into.media_type, into.filename = part.media_type, part.filename
    kind = part.WhichOneof("content")
    if kind == "data":
        into.data.CopyFrom(part.data)
    elif kind is not None:
        setattr(into, kind, getattr(part, kind))
    return into


def to_ravi_artifacts(artifacts: Iterable[Artifact]) -> list[rpb.Artifact]:
    """A2A artifacts as ravi.a2a.v1 artifacts."""
    return [
        rpb.Artifact(
            artifact_id=a.artifact_id,
            name=a.name,
            description=a.description,
            parts=to_ravi_parts(a.parts),
        )
        for a in artifacts
    ]


def data_of(part: Part) -> Any:
    """The JSON value of a data part."""
    return json_format.MessageToDict(part.data)


def value(data: Any) -> struct_pb2.Value:
    """A JSON value as a protobuf Value."""
    return json_format.ParseDict(data, struct_pb2.Value())
