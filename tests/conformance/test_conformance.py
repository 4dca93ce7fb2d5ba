"""The protocol conformance suite: what every node must do, checked over raw gRPC.

docs/protocol.md ("Mesh behaviour: what every node does") is the specification;
each test names the rule it checks. Runs against the Python, Go and Node nodes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.errors import Code, RaviError, from_grpc_error
from ravi.mesh.v1 import agent_service_pb2 as svc
from ravi.mesh.v1 import agent_service_pb2_grpc, contract, types_pb2
from ravi.testing import NodeProcess, eventually
from tests.conformance.conftest import MAX_MESSAGE_BYTES, TOKEN, Implementation

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
AGENT = "conformance"


@asynccontextmanager
async def stub_for(
    node: NodeProcess,
) -> AsyncIterator[agent_service_pb2_grpc.AgentServiceStub]:
    options = [("grpc.max_send_message_length", 8 * MAX_MESSAGE_BYTES)]
    async with grpc.aio.insecure_channel(node.address, options=options) as channel:
        yield agent_service_pb2_grpc.AgentServiceStub(channel)


def payload(message: Message, content_type: str = PROTOBUF) -> types_pb2.Payload:
    data = (
        message.SerializeToString()
        if content_type == PROTOBUF
        else json_format.MessageToJson(message).encode()
    )
    return types_pb2.Payload(
        type=message.DESCRIPTOR.full_name, content_type=content_type, data=data
    )


def send_request(
    message: Message | None,
    key: str,
    *,
    agent_type: str = AGENT,
    content_type: str = PROTOBUF,
    **envelope: Any,
) -> svc.SendRequest:
    return svc.SendRequest(
        recipient=types_pb2.AgentId(type=agent_type, key=key),
        envelope=types_pb2.Envelope(
            message_id=f"m-{time.monotonic_ns()}",
            payload=payload(message, content_type) if message is not None else None,
            **envelope,
        ),
    )


async def send(
    node: NodeProcess, request: svc.SendRequest, *, timeout: float = 10, **kwargs: Any
) -> svc.SendResponse:
    async with stub_for(node) as stub:
        response: svc.SendResponse = await stub.Send(request, timeout=timeout, **kwargs)
        return response


async def failure(node: NodeProcess, request: svc.SendRequest, **kwargs: Any) -> RaviError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send(node, request, **kwargs)
    return from_grpc_error(caught.value)


def echoed(response: svc.SendResponse) -> conf.Echoed:
    assert response.result.type == "ravi.conformance.v1.Echoed"
    assert response.result.content_type == PROTOBUF
    return conf.Echoed.FromString(response.result.data)


async def report(node: NodeProcess, key: str) -> conf.Observed:
    response = await send(node, send_request(conf.Report(), key))
    return conf.Observed.FromString(response.result.data)


# --- Describe ------------------------------------------------------------------------


async def test_describe_names_the_node_contract_and_agents(
    node: NodeProcess, implementation: Implementation
) -> None:
    async with stub_for(node) as stub:
        info = (await stub.Describe(svc.DescribeRequest(), timeout=10)).node
    assert info.node_id == node.node_id
    assert info.contract_version == contract.VERSION
    assert info.language == implementation.language
    assert info.incarnation
    hosted = {t.agent_type: set(t.handled_types) for t in info.agent_types}
    assert {
        "ravi.conformance.v1.Echo",
        "ravi.conformance.v1.Fail",
        "ravi.conformance.v1.Sleep",
        "ravi.conformance.v1.Forward",
        "ravi.conformance.v1.Report",
    } <= hosted[AGENT]
    assert "ravi.conformance.v1.Unhandled" not in hosted[AGENT]
    filters = [(s.agent_type, s.filter.topic_type) for s in info.subscriptions]
    assert (AGENT, "conformance.events") in filters


# --- Send: the happy path -----------------------------------------------------------------


async def test_send_returns_the_reply_with_the_handling_node(node: NodeProcess) -> None:
    response = await send(
        node,
        send_request(conf.Echo(text="hello"), "happy", metadata={"x-tenant": "acme"}),
        metadata=[("traceparent", TRACEPARENT)],
    )
    assert response.node_id == node.node_id
    reply = echoed(response)
    assert reply.text == "hello"
    assert (reply.agent.type, reply.agent.key) == (AGENT, "happy")
    assert reply.node_id == node.node_id
    assert reply.metadata["x-tenant"] == "acme"
    assert reply.metadata["traceparent"] == TRACEPARENT
    assert not reply.HasField("sender")


async def test_send_accepts_canonical_protobuf_json(node: NodeProcess) -> None:
    response = await send(node, send_request(conf.Echo(text="as json"), "json", content_type=JSON))
    assert echoed(response).text == "as json"


async def test_sender_reaches_the_handler(node: NodeProcess) -> None:
    request = send_request(
        conf.Echo(text="from someone"), "sender", sender=types_pb2.AgentId(type="client", key="7")
    )
    reply = echoed(await send(node, request))
    assert (reply.sender.type, reply.sender.key) == ("client", "7")


async def test_forward_makes_a_nested_send_as_the_agent(node: NodeProcess) -> None:
    forward = conf.Forward(target=types_pb2.AgentId(type=AGENT, key="target"), text="nested")
    reply = echoed(await send(node, send_request(forward, "origin")))
    assert (reply.agent.key, reply.text) == ("target", "nested")
    assert (reply.sender.type, reply.sender.key) == (AGENT, "origin")


# --- Send: every error, in the order of the rules ----------------------------------


def assert_error(error: RaviError, code: Code, reason: str | None) -> None:
    assert error.code is code, f"{error.code.name}: {error.message}"
    assert error.reason == reason, f"{error.reason}: {error.message}"
    assert error.message


async def test_empty_recipient_is_bad_id(node: NodeProcess) -> None:
    error = await failure(node, send_request(conf.Echo(text="x"), "", agent_type=""))
    assert_error(error, Code.INVALID_ARGUMENT, "BAD_ID")
    error = await failure(node, send_request(conf.Echo(text="x"), ""))
    assert_error(error, Code.INVALID_ARGUMENT, "BAD_ID")


async def test_unknown_agent_type_is_not_found(node: NodeProcess) -> None:
    error = await failure(node, send_request(conf.Echo(text="x"), "k", agent_type="nobody"))
    assert_error(error, Code.NOT_FOUND, "AGENT_TYPE_NOT_FOUND")


async def test_request_that_passed_through_the_node_is_a_forwarding_loop(
    node: NodeProcess,
) -> None:
    request = send_request(conf.Echo(text="x"), "k", agent_type="elsewhere")
    request.route.visited_node_ids.extend(["other", node.node_id])
    request.route.hop_count = 2
    error = await failure(node, request)
    assert_error(error, Code.FAILED_PRECONDITION, "FORWARDING_LOOP")


async def test_request_at_the_hop_limit_is_refused(node: NodeProcess) -> None:
    request = send_request(conf.Echo(text="x"), "k", agent_type="elsewhere")
    request.route.hop_count = 8
    request.route.visited_node_ids.extend([f"n{i}" for i in range(8)])
    error = await failure(node, request)
    assert_error(error, Code.FAILED_PRECONDITION, "HOP_LIMIT_EXCEEDED")


@pytest.mark.parametrize(
    "bad_payload",
    [
        None,
        types_pb2.Payload(type="ravi.conformance.v1.Echo", content_type=PROTOBUF, data=b"\xff\xff"),
        types_pb2.Payload(type="ravi.conformance.v1.Echo", content_type=JSON, data=b"{nope"),
        types_pb2.Payload(type="no.such.Type", content_type=PROTOBUF, data=b""),
        types_pb2.Payload(type="ravi.conformance.v1.Echo", content_type="text/plain", data=b""),
    ],
    ids=["missing", "undecodable", "bad-json", "unknown-type", "bad-content-type"],
)
async def test_bad_payload_is_invalid_argument(
    node: NodeProcess, bad_payload: types_pb2.Payload | None
) -> None:
    request = send_request(None, "k")
    if bad_payload is not None:
        request.envelope.payload.CopyFrom(bad_payload)
    error = await failure(node, request)
    assert_error(error, Code.INVALID_ARGUMENT, "BAD_PAYLOAD")


async def test_recipient_in_the_call_chain_is_a_reentrant_call(node: NodeProcess) -> None:
    request = send_request(
        conf.Echo(text="x"),
        "busy",
        call_chain=[
            types_pb2.AgentId(type="caller", key="1"),
            types_pb2.AgentId(type=AGENT, key="busy"),
        ],
    )
    error = await failure(node, request)
    assert_error(error, Code.FAILED_PRECONDITION, "REENTRANT_CALL")


async def test_agent_forwarding_to_itself_is_a_reentrant_call(node: NodeProcess) -> None:
    forward = conf.Forward(target=types_pb2.AgentId(type=AGENT, key="loop"), text="again")
    error = await failure(node, send_request(forward, "loop"))
    assert_error(error, Code.FAILED_PRECONDITION, "REENTRANT_CALL")


async def test_message_without_handler_is_unimplemented(node: NodeProcess) -> None:
    error = await failure(node, send_request(conf.Unhandled(), "k"))
    assert_error(error, Code.UNIMPLEMENTED, "NO_HANDLER")


async def test_handler_exception_is_unknown_with_its_type_and_message(node: NodeProcess) -> None:
    error = await failure(node, send_request(conf.Fail(code=0, message="it broke: 42"), "k"))
    assert_error(error, Code.UNKNOWN, "HANDLER_FAILED")
    assert error.metadata["exception_message"] == "it broke: 42"
    assert error.metadata["exception_type"]
    assert "it broke: 42" in error.message


@pytest.mark.parametrize(
    "code", [Code.FAILED_PRECONDITION, Code.NOT_FOUND, Code.PERMISSION_DENIED, Code.INTERNAL]
)
async def test_ravi_error_from_handler_keeps_its_code(node: NodeProcess, code: Code) -> None:
    error = await failure(
        node, send_request(conf.Fail(code=code.value, message=f"chose {code.name}"), "k")
    )
    assert error.code is code
    assert error.reason is None  # a ravi error keeps its own (here: no) reason
    assert f"chose {code.name}" in error.message


# --- deadlines and cancellation -------------------------------------------------------


async def test_deadline_fails_the_call_and_cancels_the_handler(node: NodeProcess) -> None:
    started = time.monotonic()
    error = await failure(
        node, send_request(conf.Sleep(millis=5000, tag="late"), "deadline"), timeout=0.3
    )
    assert error.code is Code.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2

    async def handler_cancelled() -> None:
        assert list((await report(node, "deadline")).cancelled) == ["late"]

    await eventually(handler_cancelled)


async def test_cancelled_call_cancels_the_handler(node: NodeProcess) -> None:
    async with stub_for(node) as stub:
        call = stub.Send(send_request(conf.Sleep(millis=5000, tag="gone"), "cancel"), timeout=10)
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    async def handler_cancelled() -> None:
        assert list((await report(node, "cancel")).cancelled) == ["gone"]

    await eventually(handler_cancelled)


async def test_one_agent_handles_one_message_at_a_time(node: NodeProcess) -> None:
    started = time.monotonic()
    replies = await asyncio.gather(
        *(send(node, send_request(conf.Sleep(millis=50, tag=f"t{i}"), "serial")) for i in range(8))
    )
    assert time.monotonic() - started >= 8 * 0.05 * 0.9
    assert sorted(conf.Slept.FromString(r.result.data).tag for r in replies) == sorted(
        f"t{i}" for i in range(8)
    )


async def test_distinct_agents_run_concurrently(node: NodeProcess) -> None:
    started = time.monotonic()
    await asyncio.gather(
        *(send(node, send_request(conf.Sleep(millis=300, tag="c"), f"par{i}")) for i in range(6))
    )
    assert time.monotonic() - started < 1.5


# --- publish / subscribe ---------------------------------------------------------------


async def test_subscribe_starts_with_the_node_and_streams_matching_events(
    node: NodeProcess,
) -> None:
    async with stub_for(node) as stub:
        stream = stub.Subscribe(
            svc.SubscribeRequest(
                filters=[types_pb2.TopicFilter(topic_type_prefix="conformance.")],
                subscriber_id="conformance-suite",
            ),
            timeout=20,
        )
        first = await stream.read()
        assert first.node.node_id == node.node_id
        published = await stub.Publish(
            svc.PublishRequest(
                topic=types_pb2.TopicId(type="conformance.events", source="stream-1"),
                envelope=types_pb2.Envelope(
                    message_id="pub-1",
                    payload=payload(conf.Echo(text="broadcast")),
                    metadata={"traceparent": TRACEPARENT},
                ),
            ),
            timeout=10,
        )
        assert published.local_deliveries >= 1
        assert published.stream_deliveries >= 1
        while True:
            item = await asyncio.wait_for(stream.read(), 10)
            if item.HasField("event"):
                break
        stream.cancel()
    event = item.event
    assert (event.topic.type, event.topic.source) == ("conformance.events", "stream-1")
    assert event.envelope.message_id == "pub-1"
    assert event.envelope.metadata["traceparent"] == TRACEPARENT
    assert event.origin_node_id == node.node_id
    assert conf.Echo.FromString(event.envelope.payload.data).text == "broadcast"

    async def agent_got_it() -> None:
        assert list((await report(node, "stream-1")).events) == ["broadcast"]

    await eventually(agent_got_it)


async def test_node_scoped_publish_reaches_local_subscribers_only(node: NodeProcess) -> None:
    async with stub_for(node) as stub:
        stream = stub.Subscribe(
            svc.SubscribeRequest(filters=[types_pb2.TopicFilter(topic_type="conformance.events")]),
            timeout=20,
        )
        await stream.read()
        response = await stub.Publish(
            svc.PublishRequest(
                topic=types_pb2.TopicId(type="conformance.events", source="scoped"),
                envelope=types_pb2.Envelope(
                    message_id="pub-2", payload=payload(conf.Echo(text="local only"))
                ),
                scope=svc.PUBLISH_SCOPE_NODE,
            ),
            timeout=10,
        )
        assert response.local_deliveries >= 1
        assert response.stream_deliveries == 0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.read(), 0.5)
        stream.cancel()

    async def agent_got_it() -> None:
        assert list((await report(node, "scoped")).events) == ["local only"]

    await eventually(agent_got_it)


async def test_publish_with_bad_topic_is_bad_id(node: NodeProcess) -> None:
    async with stub_for(node) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Publish(
                svc.PublishRequest(
                    topic=types_pb2.TopicId(type="", source="s"),
                    envelope=types_pb2.Envelope(payload=payload(conf.Echo(text="x"))),
                ),
                timeout=10,
            )
    assert_error(from_grpc_error(caught.value), Code.INVALID_ARGUMENT, "BAD_ID")


# --- operations: limits, auth, health, reflection --------------------------------------


async def test_oversized_message_is_resource_exhausted(node: NodeProcess) -> None:
    big = conf.Echo(text="x" * (2 * MAX_MESSAGE_BYTES))
    error = await failure(node, send_request(big, "big"))
    assert error.code is Code.RESOURCE_EXHAUSTED


async def test_missing_or_wrong_token_is_unauthenticated(secured_node: NodeProcess) -> None:
    request = send_request(conf.Echo(text="x"), "auth")
    for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
        error = await failure(secured_node, request, metadata=metadata)
        assert error.code is Code.UNAUTHENTICATED
    response = await send(secured_node, request, metadata=[("authorization", f"Bearer {TOKEN}")])
    assert echoed(response).text == "x"


async def test_health_may_be_exempt_from_auth(secured_node: NodeProcess) -> None:
    async with grpc.aio.insecure_channel(secured_node.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_reports_serving(node: NodeProcess) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "ravi.mesh.v1.AgentService"):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_and_describes_the_services(node: NodeProcess, version: str) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        # v1 and v1alpha carry the same messages on the wire; only the service
        # name differs, so one stub class serves both.
        method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
        stream = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="ravi.mesh.v1.AgentService"
            ),
        ]
        responses = [r async for r in stream(iter(requests), timeout=10)]
    services = {s.name for s in responses[0].list_services_response.service}
    assert {"ravi.mesh.v1.AgentService", "grpc.health.v1.Health"} <= services
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    assert any(
        f.package == "ravi.mesh.v1" and any(s.name == "AgentService" for s in f.service)
        for f in files
    )


async def test_node_is_healthy_after_the_bad_inputs(node: NodeProcess) -> None:
    await test_health_reports_serving(node)
    assert echoed(await send(node, send_request(conf.Echo(text="still here"), "end"))).text == (
        "still here"
    )


# --- Connect: calls multiplexed on one stream ----------------------------------------


async def test_connect_answers_batched_calls_by_call_id(node: NodeProcess) -> None:
    def frame(call_id: int, message: Message, key: str, timeout_millis: int = 0) -> svc.CallFrame:
        return svc.CallFrame(
            call_id=call_id,
            send=send_request(message, key),
            timeout_millis=timeout_millis,
        )

    async with stub_for(node) as stub:
        stream = stub.Connect(timeout=20)
        await stream.write(
            svc.ConnectRequest(
                calls=[
                    frame(1, conf.Echo(text="first"), "mux-a"),
                    frame(2, conf.Unhandled(), "mux-b"),
                    frame(3, conf.Sleep(millis=5000, tag="short"), "mux-c", timeout_millis=200),
                    frame(4, conf.Sleep(millis=5000, tag="dropped"), "mux-d"),
                ]
            )
        )
        outcomes: dict[int, svc.CallOutcome] = {}
        while len(outcomes) < 3:
            response = await asyncio.wait_for(stream.read(), 10)
            outcomes.update({o.call_id: o for o in response.calls})
        # Call 3 timed out after 200 ms, so call 4's handler, sent with it, is running:
        # cancelling now cancels a handler, not a delivery still waiting in a mailbox.
        await stream.write(
            svc.ConnectRequest(calls=[svc.CallFrame(call_id=4, cancel=svc.CancelCall())])
        )
        await stream.done_writing()
        remaining = []
        while (response := await asyncio.wait_for(stream.read(), 10)) != grpc.aio.EOF:
            remaining.extend(response.calls)
    assert remaining == []  # the cancelled call is not answered
    assert conf.Echoed.FromString(outcomes[1].result.result.data).text == "first"
    assert outcomes[1].result.node_id == node.node_id
    assert (outcomes[2].failure.code, outcomes[2].failure.reason) == (
        Code.UNIMPLEMENTED.value,
        "NO_HANDLER",
    )
    assert outcomes[3].failure.code == Code.DEADLINE_EXCEEDED.value

    async def both_cancelled() -> None:
        assert list((await report(node, "mux-c")).cancelled) == ["short"]
        assert list((await report(node, "mux-d")).cancelled) == ["dropped"]

    await eventually(both_cancelled)
