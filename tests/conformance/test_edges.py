"""The contract at its edges: one table of odd inputs, the same answer from every node.

docs/protocol.md ("Edges: what every node answers") is the specification; each row of
the tables below is one decision written there and in the .proto comments. The suite
runs against the Python, Go and Node nodes with tests/conformance/exclusions.toml empty.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.errors import Code, from_grpc_error
from ravi.mesh.v1 import agent_service_pb2 as svc
from ravi.mesh.v1 import agent_service_pb2_grpc, contract, types_pb2
from ravi.testing import NodeProcess
from tests.conformance._raw import raw_call
from tests.conformance.conftest import TOKEN
from tests.conformance.test_conformance import (
    AGENT,
    JSON,
    PROTOBUF,
    echoed,
    failure,
    payload,
    send,
    send_request,
    stub_for,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

SEND = "/ravi.mesh.v1.AgentService/Send"
DEPTH = contract.MAX_NESTING_DEPTH


def nested_json(levels: int) -> bytes:
    """A Nest as JSON with `levels` objects in all, the outermost included."""
    return b'{"inner":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


def nested_protobuf(levels: int) -> bytes:
    """A Nest as protobuf with `levels` messages in all, built from the inside out."""
    data = b""
    for _ in range(levels - 1):
        data = b"\x0a" + _varint(len(data)) + data
    return data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def deep_value(levels: int) -> bytes:
    """A google.protobuf.Value as JSON: `levels` nested arrays."""
    return b"[" * levels + b"]" * levels


def deep_struct(levels: int) -> bytes:
    """A google.protobuf.Struct as JSON: `levels` nested objects."""
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


def raw_payload(type_name: str, content_type: str, data: bytes) -> types_pb2.Payload:
    return types_pb2.Payload(type=type_name, content_type=content_type, data=data)


ECHO = "ravi.conformance.v1.Echo"
NEST = "ravi.conformance.v1.Nest"
ECHO_JSON = b'{"text": "edge"}'


@dataclass(frozen=True)
class Edge:
    """One row: a Send built from `recipient` and `payload`, and what every node answers."""

    name: str
    payload: types_pb2.Payload
    code: Code | None = None
    reason: str | None = None
    key: str = "edges"
    agent_type: str = AGENT


EDGES = [
    # Payload.content_type is a media type: case-insensitive, parameters allowed, UTF-8 only.
    Edge("json-charset-utf8", raw_payload(ECHO, "application/json; charset=utf-8", ECHO_JSON)),
    Edge("json-charset-quoted", raw_payload(ECHO, 'application/json;charset="UTF-8"', ECHO_JSON)),
    Edge("json-upper-case", raw_payload(ECHO, "Application/JSON", ECHO_JSON)),
    Edge(
        "protobuf-parameter",
        raw_payload(
            ECHO, "application/x-protobuf; proto=x", conf.Echo(text="edge").SerializeToString()
        ),
    ),
    Edge(
        "json-charset-latin1",
        raw_payload(ECHO, "application/json; charset=iso-8859-1", ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_PAYLOAD",
    ),
    Edge(
        "json-subtype-only",
        raw_payload(ECHO, "json", ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_PAYLOAD",
    ),
    # JSON with a field the type does not declare is refused, as protobuf JSON parsers do.
    Edge(
        "json-unknown-field",
        raw_payload(ECHO, JSON, b'{"text": "edge", "colour": "red"}'),
        Code.INVALID_ARGUMENT,
        "BAD_PAYLOAD",
    ),
    Edge(
        "json-not-utf8",
        raw_payload(ECHO, JSON, b'{"text": "\xff"}'),
        Code.INVALID_ARGUMENT,
        "BAD_PAYLOAD",
    ),
    # An Any-style type URL names the same type.
    Edge("type-url", raw_payload(f"type.googleapis.com/{ECHO}", JSON, ECHO_JSON)),
    Edge("type-url-other-host", raw_payload(f"example.com/types/{ECHO}", PROTOBUF, b"")),
    Edge(
        "type-url-empty-name",
        raw_payload("type.googleapis.com/", JSON, ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_PAYLOAD",
    ),
    # Nesting: at most MAX_NESTING_DEPTH JSON arrays and objects, or protobuf messages.
    Edge(
        "json-nesting-at-limit",
        raw_payload(NEST, JSON, nested_json(DEPTH)),
        Code.UNIMPLEMENTED,
        "NO_HANDLER",
    ),
    Edge(
        "json-nesting-over-limit",
        raw_payload(NEST, JSON, nested_json(DEPTH + 1)),
        Code.INVALID_ARGUMENT,
        "BAD_PAYLOAD",
    ),
    Edge(
        "json-nesting-100k",
        raw_payload(NEST, JSON, nested_json(100_000)),
        Code.INVALID_ARGUMENT,
        "BAD_PAYLOAD",
    ),
    Edge(
        "protobuf-nesting-shallow",
        raw_payload(NEST, PROTOBUF, nested_protobuf(50)),
        Code.UNIMPLEMENTED,
        "NO_HANDLER",
    ),
    Edge(
        "protobuf-nesting-100k",
        raw_payload(NEST, PROTOBUF, nested_protobuf(100_000)),
        Code.INVALID_ARGUMENT,
        "BAD_PAYLOAD",
    ),
    Edge(
        "value-nesting-100k",
        raw_payload("google.protobuf.Value", JSON, deep_value(100_000)),
        Code.INVALID_ARGUMENT,
        "BAD_PAYLOAD",
    ),
    # Keys are printable: 1 to MAX_KEY_BYTES bytes of UTF-8 without control characters.
    Edge("key-unicode-space-slash", raw_payload(ECHO, JSON, ECHO_JSON), key="ü / x:y"),
    Edge(
        "key-at-limit", raw_payload(ECHO, JSON, ECHO_JSON), key="é" * (contract.MAX_KEY_BYTES // 2)
    ),
    Edge(
        "key-over-limit",
        raw_payload(ECHO, JSON, ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_ID",
        key="k" * (contract.MAX_KEY_BYTES + 1),
    ),
    Edge(
        "key-control",
        raw_payload(ECHO, JSON, ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_ID",
        key="a\x01b",
    ),
    Edge(
        "key-newline",
        raw_payload(ECHO, JSON, ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_ID",
        key="a\nb",
    ),
    Edge(
        "key-delete",
        raw_payload(ECHO, JSON, ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_ID",
        key="a\x7f",
    ),
    Edge(
        "key-c1-control",
        raw_payload(ECHO, JSON, ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_ID",
        key="a\x85",
    ),
    # Types are 1 to MAX_TYPE_BYTES of [A-Za-z0-9_.:-].
    Edge(
        "type-space",
        raw_payload(ECHO, JSON, ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_ID",
        agent_type="con formance",
    ),
    Edge(
        "type-slash",
        raw_payload(ECHO, JSON, ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_ID",
        agent_type="a/b",
    ),
    Edge(
        "type-over-limit",
        raw_payload(ECHO, JSON, ECHO_JSON),
        Code.INVALID_ARGUMENT,
        "BAD_ID",
        agent_type="t" * (contract.MAX_TYPE_BYTES + 1),
    ),
    # Handler failures: any code the handler chose keeps HANDLER_FAILED; out of range is UNKNOWN.
    Edge(
        "fail-code-9",
        payload(conf.Fail(code=9, message="chose 9")),
        Code.FAILED_PRECONDITION,
        "HANDLER_FAILED",
    ),
    Edge(
        "fail-code-minus-1",
        payload(conf.Fail(code=-1, message="m")),
        Code.UNKNOWN,
        "HANDLER_FAILED",
    ),
    Edge("fail-code-17", payload(conf.Fail(code=17, message="m")), Code.UNKNOWN, "HANDLER_FAILED"),
    Edge(
        "fail-code-2147483647",
        payload(conf.Fail(code=2**31 - 1, message="m")),
        Code.UNKNOWN,
        "HANDLER_FAILED",
    ),
]


def send_edge(edge: Edge) -> svc.SendRequest:
    return svc.SendRequest(
        recipient=types_pb2.AgentId(type=edge.agent_type, key=edge.key),
        envelope=types_pb2.Envelope(message_id=f"edge-{edge.name}", payload=edge.payload),
    )


async def health_and_echo(node: NodeProcess) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert echoed(await send(node, send_request(conf.Echo(text="alive"), "alive"))).text == "alive"


@pytest.mark.parametrize("edge", EDGES, ids=lambda edge: edge.name)
async def test_send_edge(node: NodeProcess, edge: Edge) -> None:
    request = send_edge(edge)
    if edge.code is None:
        reply = echoed(await send(node, request))
        assert reply.text in ("edge", "")
        assert reply.agent.key == edge.key
        return
    error = await failure(node, request)
    assert (error.code, error.reason) == (edge.code, edge.reason), error.message
    assert error.metadata.get("node_id") == node.node_id, error.metadata
    if edge.reason != "BAD_ID":
        assert error.metadata.get("agent_type") == AGENT, error.metadata


async def test_node_serves_after_the_edges(node: NodeProcess) -> None:
    await health_and_echo(node)


# --- ErrorInfo metadata: the same keys for every reason, from every node ------------------


def _forwarding_loop(node: NodeProcess) -> svc.SendRequest:
    request = send_request(conf.Echo(text="x"), "k", agent_type="elsewhere")
    request.route.visited_node_ids.append(node.node_id)
    return request


def _hop_limit(node: NodeProcess) -> svc.SendRequest:
    request = send_request(conf.Echo(text="x"), "k", agent_type="elsewhere")
    request.route.hop_count = contract.HOP_LIMIT
    return request


REASONS: list[tuple[str, Callable[[NodeProcess], svc.SendRequest], Code, str, str]] = [
    (
        "agent-type-not-found",
        lambda node: send_request(conf.Echo(text="x"), "k", agent_type="nobody"),
        Code.NOT_FOUND,
        "AGENT_TYPE_NOT_FOUND",
        "nobody",
    ),
    (
        "no-handler",
        lambda node: send_request(conf.Unhandled(), "k"),
        Code.UNIMPLEMENTED,
        "NO_HANDLER",
        AGENT,
    ),
    (
        "bad-payload",
        lambda node: send_edge(Edge("bad", raw_payload(ECHO, PROTOBUF, b"\xff\xff"))),
        Code.INVALID_ARGUMENT,
        "BAD_PAYLOAD",
        AGENT,
    ),
    (
        "handler-failed",
        lambda node: send_request(conf.Fail(code=0, message="boom"), "k"),
        Code.UNKNOWN,
        "HANDLER_FAILED",
        AGENT,
    ),
    (
        "reentrant-call",
        lambda node: send_request(
            conf.Echo(text="x"), "busy", call_chain=[types_pb2.AgentId(type=AGENT, key="busy")]
        ),
        Code.FAILED_PRECONDITION,
        "REENTRANT_CALL",
        AGENT,
    ),
    ("forwarding-loop", _forwarding_loop, Code.FAILED_PRECONDITION, "FORWARDING_LOOP", "elsewhere"),
    ("hop-limit", _hop_limit, Code.FAILED_PRECONDITION, "HOP_LIMIT_EXCEEDED", "elsewhere"),
]


@pytest.mark.parametrize(
    ("build", "code", "reason", "agent_type"),
    [row[1:] for row in REASONS],
    ids=[row[0] for row in REASONS],
)
async def test_every_reason_carries_node_agent_and_message_type(
    node: NodeProcess,
    build: Callable[[NodeProcess], svc.SendRequest],
    code: Code,
    reason: str,
    agent_type: str,
) -> None:
    request = build(node)
    error = await failure(node, request)
    assert (error.code, error.reason) == (code, reason), error.message
    assert error.metadata["node_id"] == node.node_id
    assert error.metadata["agent_type"] == agent_type
    assert error.metadata["message_type"] == request.envelope.payload.type
    if reason == "HANDLER_FAILED":
        assert error.metadata["exception_message"] == "boom"
        assert error.metadata["exception_type"]


async def test_explicit_code_failure_carries_handler_failed(node: NodeProcess) -> None:
    error = await failure(node, send_request(conf.Fail(code=9, message="chose 9"), "k"))
    assert (error.code, error.reason) == (Code.FAILED_PRECONDITION, "HANDLER_FAILED")
    assert error.metadata["exception_message"] == "chose 9"
    assert error.metadata["exception_type"]
    assert error.metadata["node_id"] == node.node_id


async def test_bad_id_carries_the_node(node: NodeProcess) -> None:
    error = await failure(node, send_request(conf.Echo(text="x"), "", agent_type=""))
    assert (error.code, error.reason) == (Code.INVALID_ARGUMENT, "BAD_ID")
    assert error.metadata["node_id"] == node.node_id


# --- envelopes without a message id, calls without a deadline ------------------------------


async def test_envelope_without_message_id_gets_one(node: NodeProcess) -> None:
    request = send_request(conf.Echo(text="no id"), "no-id")
    request.envelope.message_id = ""
    first, second = echoed(await send(node, request)), echoed(await send(node, request))
    assert first.message_id
    assert second.message_id
    assert first.message_id != second.message_id


async def test_handler_sees_the_message_id(node: NodeProcess) -> None:
    request = send_request(conf.Echo(text="id"), "with-id")
    assert echoed(await send(node, request)).message_id == request.envelope.message_id


async def test_call_without_deadline_is_answered(node: NodeProcess) -> None:
    async with stub_for(node) as stub:
        response = await stub.Send(send_request(conf.Echo(text="no deadline"), "no-deadline"))
    assert echoed(response).text == "no deadline"


# --- deadlines at 0, 1 ms and beyond 2^31 ms ---------------------------------------------


def _sleep_body(millis: int, tag: str) -> bytes:
    return send_request(conf.Sleep(millis=millis, tag=tag), "deadline-edges").SerializeToString()


@pytest.mark.parametrize("timeout", ["1n", "1u", "1m", "0m", "2m"])
async def test_spent_or_tiny_deadline_is_answered_deadline_exceeded(
    node: NodeProcess, timeout: str
) -> None:
    answer = await raw_call(
        node.address, SEND, _sleep_body(5000, f"tiny-{timeout}"), [("grpc-timeout", timeout)]
    )
    assert answer.status == Code.DEADLINE_EXCEEDED.value, answer
    assert answer.elapsed < 3, answer


@pytest.mark.parametrize("timeout", ["2147484S", "99999999S", "99999999H"])
async def test_deadline_beyond_2_31_ms_is_honoured(node: NodeProcess, timeout: str) -> None:
    answer = await raw_call(
        node.address, SEND, _sleep_body(50, f"long-{timeout}"), [("grpc-timeout", timeout)]
    )
    assert answer.status == 0, answer


async def test_30_day_client_deadline(node: NodeProcess) -> None:
    reply = await send(
        node, send_request(conf.Sleep(millis=20, tag="month"), "month"), timeout=30 * 86400
    )
    assert conf.Slept.FromString(reply.result.data).tag == "month"


# --- request bytes that are not the request message -----------------------------------------


@pytest.mark.parametrize(
    "body", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x08"], ids=["garbage", "truncated", "no-value"]
)
async def test_malformed_request_bytes_are_internal(node: NodeProcess, body: bytes) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = channel.unary_unary(SEND, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(body, timeout=10)
    error = from_grpc_error(caught.value)
    assert error.code is Code.INTERNAL, error.message
    assert error.reason is None
    await health_and_echo(node)


# --- LoadState and ResolvePromise nesting ---------------------------------------------------


async def test_deep_struct_in_load_state_is_bad_payload_and_state_still_saves(
    node: NodeProcess,
) -> None:
    async with stub_for(node) as stub:
        await stub.LoadState(
            svc.LoadStateRequest(
                states={
                    f"{AGENT}/state-edge": raw_payload(
                        "google.protobuf.Struct", JSON, deep_struct(20)
                    )
                }
            ),
            timeout=10,
        )
        for levels in (DEPTH + 1, 100_000):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.LoadState(
                    svc.LoadStateRequest(
                        states={
                            f"{AGENT}/state-deep": raw_payload(
                                "google.protobuf.Struct", JSON, deep_struct(levels)
                            )
                        }
                    ),
                    timeout=10,
                )
            error = from_grpc_error(caught.value)
            assert (error.code, error.reason) == (Code.INVALID_ARGUMENT, "BAD_PAYLOAD"), (
                error.message
            )
        saved = await stub.SaveState(svc.SaveStateRequest(), timeout=10)
        one = await stub.SaveState(
            svc.SaveStateRequest(agent=types_pb2.AgentId(type=AGENT, key="state-deep")), timeout=10
        )
    assert f"{AGENT}/state-edge" in saved.states
    assert json.loads(one.states[f"{AGENT}/state-deep"].data) is not None


async def test_deep_value_in_resolve_promise_is_bad_payload(node: NodeProcess) -> None:
    async with stub_for(node) as stub:
        for levels in (DEPTH + 1, 100_000):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ResolvePromise(
                    svc.ResolvePromiseRequest(
                        name=f"deep-{levels}",
                        value=raw_payload("google.protobuf.Value", JSON, deep_value(levels)),
                    ),
                    timeout=10,
                )
            error = from_grpc_error(caught.value)
            assert (error.code, error.reason) == (Code.INVALID_ARGUMENT, "BAD_PAYLOAD"), (
                error.message
            )
        response = await stub.ResolvePromise(
            svc.ResolvePromiseRequest(
                name="shallow", value=raw_payload("google.protobuf.Value", JSON, deep_value(40))
            ),
            timeout=10,
        )
    assert response.waiting is False


# --- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ([("authorization", f"Bearer {TOKEN}")], True),
        ([("authorization", f"bearer {TOKEN}")], True),
        ([("authorization", f"BEARER {TOKEN}")], True),
        ([("authorization", f"Bearer  {TOKEN}")], True),
        ([("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")], False),
        ([("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN}")], False),
        ([("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")], False),
        ([("authorization", f"Basic {TOKEN}")], False),
        ([("authorization", f"Bearer{TOKEN}")], False),
        ([("authorization", "Bearer")], False),
        ([("authorization", TOKEN)], False),
        ([], False),
    ],
    ids=[
        "bearer",
        "lower-case-scheme",
        "upper-case-scheme",
        "two-spaces",
        "twice-the-same",
        "wrong-then-right",
        "right-then-wrong",
        "basic",
        "no-space",
        "no-token",
        "no-scheme",
        "none",
    ],
)
async def test_authorization_headers(
    secured_node: NodeProcess, headers: list[tuple[str, str]], accepted: bool
) -> None:
    answer = await raw_call(
        secured_node.address,
        SEND,
        send_request(conf.Echo(text="auth"), "auth").SerializeToString(),
        [("grpc-timeout", "10S"), *headers],
    )
    expected = 0 if accepted else Code.UNAUTHENTICATED.value
    assert answer.status == expected, answer


# --- bursts: a busy key under load answers MAILBOX_FULL or DEADLINE_EXCEEDED, never CANCELLED --


async def test_burst_on_one_busy_key_is_never_cancelled(node: NodeProcess) -> None:
    async with stub_for(node) as stub:

        async def one(i: int) -> Code | None:
            try:
                # 3,000 sleeps of 1 ms take 3 s in turn; the deadline leaves
                # room for a loaded machine, where the node may read the whole
                # burst before it answers the first.
                request = send_request(conf.Sleep(millis=1, tag=f"b{i}"), "burst")
                await stub.Send(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                return from_grpc_error(error).code
            return None

        outcomes = await asyncio.gather(*(one(i) for i in range(3000)))
    assert set(outcomes) <= {None, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED}, {
        code: outcomes.count(code) for code in set(outcomes)
    }
    assert outcomes.count(None) > 0
    await health_and_echo(node)


# --- Subscribe streams per caller -------------------------------------------------------------


async def test_subscribe_streams_are_limited_per_caller(node: NodeProcess) -> None:
    limit = contract.DEFAULT_MAX_STREAMS_PER_CALLER
    request = svc.SubscribeRequest(subscriber_id="limits")
    async with stub_for(node) as stub:
        streams = [stub.Subscribe(request, timeout=60) for _ in range(limit)]
        firsts = await asyncio.gather(*(stream.read() for stream in streams))
        assert all(first.node.node_id == node.node_id for first in firsts)
        extra = stub.Subscribe(request, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await extra.read()
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # Another caller (another connection) is not held to this one's streams.
        # A channel of its own: grpc shares connections between equal channels.
        async with grpc.aio.insecure_channel(
            node.address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            elsewhere = agent_service_pb2_grpc.AgentServiceStub(channel).Subscribe(
                request, timeout=30
            )
            assert (await elsewhere.read()).node.node_id == node.node_id
            elsewhere.cancel()
        streams.pop().cancel()

        async def room_again() -> None:
            again = stub.Subscribe(request, timeout=30)
            try:
                assert (await again.read()).node.node_id == node.node_id
            finally:
                streams.append(again)

        deadline = time.monotonic() + 10
        while True:
            try:
                await room_again()
                break
            except grpc.aio.AioRpcError:
                streams.pop()
                assert time.monotonic() < deadline, "a closed stream never freed its place"
                await asyncio.sleep(0.1)
        for stream in streams:
            stream.cancel()
