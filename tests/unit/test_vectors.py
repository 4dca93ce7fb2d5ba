"""Shared protobuf test vectors: Python, Go and Node encode the same bytes.

Every language builds each case of tests/vectors/cases.json from its canonical
JSON, encodes it deterministically and compares with the files every language
committed. `make vectors` (RAVI_UPDATE_VECTORS=1) rewrites the Python files.
"""

import json
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool, json_format, message, message_factory

from ravi.examples.v1 import examples_pb2
from ravi.mesh.v1 import agent_service_pb2, types_pb2
from tests.languages import LANGUAGES as ALL_LANGUAGES

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
LANGUAGES = tuple(ALL_LANGUAGES)
CASES: list[dict[str, Any]] = json.loads((VECTORS / "cases.json").read_text())["cases"]

# Importing the generated modules registers their types in the default pool.
REGISTERED = (agent_service_pb2.DESCRIPTOR, examples_pb2.DESCRIPTOR)


def _build(case: dict[str, Any]) -> message.Message:
    descriptor = descriptor_pool.Default().FindMessageTypeByName(case["type"])
    msg = message_factory.GetMessageClass(descriptor)()
    json_format.ParseDict(case["json"], msg)
    return msg


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_python_encoding_matches_committed_vector(case: dict[str, Any]) -> None:
    encoded = _build(case).SerializeToString(deterministic=True)
    path = VECTORS / "python" / f"{case['name']}.binpb"
    if os.environ.get("RAVI_UPDATE_VECTORS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encoded)
    assert path.read_bytes() == encoded


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_decodes_vector_of_every_language(case: dict[str, Any], language: str) -> None:
    expected = _build(case)
    data = (VECTORS / language / f"{case['name']}.binpb").read_bytes()
    decoded = type(expected).FromString(data)
    assert decoded == expected
    assert data == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("language", LANGUAGES)
def test_nested_payload_decodes_as_its_declared_type(language: str) -> None:
    data = (VECTORS / language / "send_request.binpb").read_bytes()
    request = agent_service_pb2.SendRequest.FromString(data)
    assert request.envelope.payload.type == examples_pb2.WriteRequest.DESCRIPTOR.full_name
    inner = examples_pb2.WriteRequest.FromString(request.envelope.payload.data)
    assert inner.topic == "Rendezvous hashing"
    assert list(inner.feedback) == ["cite the paper ✓"]
    assert request.recipient == types_pb2.AgentId(type="writer", key="default")
