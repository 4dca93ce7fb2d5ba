"""The mesh with nodes as separate processes: routing, placement, restarts, failures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from ravi import AgentId, TopicId
from ravi._mesh.codec import metadata_of, put_metadata, rendezvous_score
from ravi._mesh.streams import STREAM_QUEUE, Subscriber, backed_up, catch_up
from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.errors import AgentTypeNotFound, Code, RaviError, from_grpc_error
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions
from ravi.mesh.v1 import agent_service_pb2 as svc
from ravi.mesh.v1 import agent_service_pb2_grpc, types_pb2
from ravi.testing import NodeProcess, eventually, running_node, start_node
from tests.integration.agents import RegisterType
from tests.integration.conftest import node_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@contextlib.asynccontextmanager
async def client(*nodes: NodeProcess, **options: float) -> AsyncIterator[GrpcRuntime]:
    runtime = GrpcRuntime(
        remote_peers={n.node_id: n.address for n in nodes},
        options=GrpcRuntimeOptions(default_timeout=options.get("default_timeout", 10.0)),
    )
    async with runtime:
        yield runtime


async def echo(runtime: GrpcRuntime, agent: AgentId, text: str = "hi") -> conf.Echoed:
    reply = await runtime.send_message(conf.Echo(text=text), agent)
    assert isinstance(reply, conf.Echoed)
    return reply


async def observed(runtime: GrpcRuntime, agent: AgentId) -> conf.Observed:
    reply = await runtime.send_message(conf.Report(), agent)
    assert isinstance(reply, conf.Observed)
    return reply


def publish_request(topic_type: str, source: str, text: str) -> svc.PublishRequest:
    return svc.PublishRequest(
        topic=types_pb2.TopicId(type=topic_type, source=source),
        envelope=types_pb2.Envelope(
            message_id=f"p-{time.monotonic_ns()}",
            payload=types_pb2.Payload(
                type="ravi.conformance.v1.Echo",
                content_type="application/x-protobuf",
                data=conf.Echo(text=text).SerializeToString(),
            ),
        ),
    )


async def raw_publish(node: NodeProcess, request: svc.PublishRequest) -> svc.PublishResponse:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        response: svc.PublishResponse = await stub.Publish(request, timeout=10)
        return response


async def test_send_and_publish_across_nodes_both_ways() -> None:
    async with (
        running_node(node_command("a", conformance="conf-a")) as a,
        running_node(node_command("b", conformance="conf-b", peers=[a.address])) as b,
        client(a, b) as runtime,
    ):
        for agent_type in ("conf-a", "conf-b"):
            await runtime.wait_until_ready(agent_type)

        async def a_reaches_b() -> conf.Echoed:
            return await runtime.send_message(  # type: ignore[no-any-return]
                conf.Forward(target=types_pb2.AgentId(type="conf-b", key="x"), text="a->b"),
                AgentId("conf-a", "1"),
            )

        # node-a learns node-b when node-b describes it.
        reply = await eventually(a_reaches_b, retry_on=(AgentTypeNotFound,))
        assert (reply.node_id, reply.text, reply.sender.key) == ("b", "a->b", "1")
        reply = await runtime.send_message(
            conf.Forward(target=types_pb2.AgentId(type="conf-a", key="y"), text="b->a"),
            AgentId("conf-b", "2"),
        )
        assert (reply.node_id, reply.text) == ("a", "b->a")

        # A publish on either node reaches the subscribers on both.
        await raw_publish(a, publish_request("conformance.events", "from-a", "on a"))
        await raw_publish(b, publish_request("conformance.events", "from-b", "on b"))

        async def delivered_everywhere() -> None:
            for agent_type in ("conf-a", "conf-b"):
                seen = await observed(runtime, AgentId(agent_type, "from-a"))
                assert list(seen.events) == ["on a"]
                seen = await observed(runtime, AgentId(agent_type, "from-b"))
                assert list(seen.events) == ["on b"]

        await eventually(delivered_everywhere)


async def test_a_node_forwards_to_the_peer_hosting_the_type() -> None:
    async with (
        running_node(node_command("z", conformance="far")) as z,
        running_node(node_command("y", peers=[z.address])) as y,
    ):
        request = svc.SendRequest(
            recipient=types_pb2.AgentId(type="far", key="k"),
            envelope=types_pb2.Envelope(
                message_id="fwd-1",
                payload=types_pb2.Payload(
                    type="ravi.conformance.v1.Echo",
                    content_type="application/x-protobuf",
                    data=conf.Echo(text="via y").SerializeToString(),
                ),
            ),
        )
        async with grpc.aio.insecure_channel(y.address) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)

            async def forwarded() -> svc.SendResponse:
                try:
                    response: svc.SendResponse = await stub.Send(request, timeout=5)
                except grpc.aio.AioRpcError as error:
                    raise AssertionError(error.details()) from error
                return response

            response = await eventually(forwarded)
            assert response.node_id == "z"
            assert conf.Echoed.FromString(response.result.data).text == "via y"

            looped = svc.SendRequest()
            looped.CopyFrom(request)
            looped.route.visited_node_ids.append("y")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Send(looped, timeout=5)
            error = from_grpc_error(caught.value)
            assert (error.code, error.reason) == (Code.FAILED_PRECONDITION, "FORWARDING_LOOP")


async def test_nodes_hosting_one_type_place_each_key_by_rendezvous_hashing() -> None:
    async with (
        running_node(node_command("p1", conformance="writer")) as p1,
        running_node(node_command("p2", conformance="writer")) as p2,
        client(p1, p2) as runtime,
    ):

        async def both_up() -> None:
            assert len([p for p in runtime.peers() if "writer" in p.types]) == 2

        await eventually(both_up)
        keys = [f"conv-{i}" for i in range(40)]
        placement = {k: (await echo(runtime, AgentId("writer", k))).node_id for k in keys}
        again = {k: (await echo(runtime, AgentId("writer", k))).node_id for k in keys}
        assert again == placement
        expected = {
            k: max(("p1", "p2"), key=lambda node: rendezvous_score(node, "writer", k)) for k in keys
        }
        assert placement == expected
        assert set(placement.values()) == {"p1", "p2"}


async def test_a_restarted_peer_rejoins_without_touching_the_others() -> None:
    async with running_node(node_command("a", conformance="conf-a")) as a:
        b = await start_node(node_command("b", conformance="conf-b", peers=[a.address]))
        try:
            async with client(a, b) as runtime:
                await runtime.wait_until_ready("conf-b")
                assert (await echo(runtime, AgentId("conf-b", "k"))).node_id == "b"
                port = b.port
                await b.kill()

                async def gone() -> None:
                    assert not any("conf-b" in p.types for p in runtime.peers())

                await eventually(gone)
                b = await start_node(
                    node_command(
                        "b", conformance="conf-b", peers=[a.address], listen=f"127.0.0.1:{port}"
                    )
                )

                async def back() -> None:
                    try:
                        reply = await echo(runtime, AgentId("conf-b", "k"))
                    except RaviError as error:
                        raise AssertionError(str(error)) from error
                    assert reply.node_id == "b"

                await eventually(back, timeout=10)

                # node-a routes to the new node-b, and node-b's subscription to
                # node-a's events is back.
                async def forwarding_again() -> None:
                    try:
                        reply = await runtime.send_message(
                            conf.Forward(target=types_pb2.AgentId(type="conf-b", key="z")),
                            AgentId("conf-a", "k"),
                        )
                    except RaviError as error:
                        raise AssertionError(str(error)) from error
                    assert reply.node_id == "b"

                await eventually(forwarding_again, timeout=10)

                async def streams_again() -> None:
                    await raw_publish(a, publish_request("conformance.events", "after", "again"))
                    assert "again" in (await observed(runtime, AgentId("conf-b", "after"))).events

                await eventually(streams_again, timeout=10, interval=0.5)
        finally:
            await b.stop()


async def test_types_registered_after_start_reach_the_peers() -> None:
    async with (
        running_node(node_command("r", setup=["tests.integration.agents:registrar"])) as r,
        client(r) as runtime,
    ):
        await runtime.wait_until_ready("registrar")
        with pytest.raises(AgentTypeNotFound):
            await echo(runtime, AgentId("late", "k"))
        assert await runtime.send_message(RegisterType("late"), AgentId("registrar", "x")) == (
            "late"
        )
        started = time.monotonic()
        await runtime.wait_until_ready("late", timeout=5)
        assert time.monotonic() - started < 1.0
        assert (await echo(runtime, AgentId("late", "k"))).node_id == "r"


async def test_killing_a_node_fails_its_calls_fast_and_spares_the_others() -> None:
    deadline = 5.0
    async with running_node(node_command("survivor", conformance="survivor")) as survivor:
        victim = await start_node(node_command("victim", conformance="victim"))
        try:
            async with client(victim, survivor, default_timeout=deadline) as runtime:
                for agent_type in ("victim", "survivor"):
                    await runtime.wait_until_ready(agent_type)

                async def call(i: int) -> tuple[object, float]:
                    started = time.monotonic()
                    try:
                        result: object = await runtime.send_message(
                            conf.Sleep(millis=3000, tag=f"t{i}"), AgentId("victim", f"k{i}")
                        )
                    except RaviError as error:
                        result = error
                    return result, time.monotonic() - started

                calls = [asyncio.ensure_future(call(i)) for i in range(100)]
                await asyncio.sleep(0.5)
                await victim.kill()
                outcomes = await asyncio.wait_for(asyncio.gather(*calls), deadline + 2)
        finally:
            await victim.stop()
        for result, elapsed in outcomes:
            assert isinstance(result, RaviError), result
            assert result.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED), repr(result)
            assert elapsed < deadline + 1.0
        assert sum(r.code is Code.UNAVAILABLE for r, _ in outcomes) >= 90  # type: ignore[union-attr]
        async with client(survivor) as runtime:
            await runtime.wait_until_ready("survivor")
            assert (await echo(runtime, AgentId("survivor", "k"))).node_id == "survivor"


def test_an_envelopes_metadata_is_read_into_a_dict_of_its_own_and_written_back() -> None:
    entries = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "k": "v"}
    envelope = types_pb2.Envelope(metadata=entries)
    read = metadata_of(envelope.metadata)
    written = types_pb2.Envelope()
    put_metadata(written.metadata, read)
    assert written == envelope
    assert type(read) is dict
    assert read == entries
    read["k"] = "changed"
    assert envelope.metadata["k"] == "v"
    empty = types_pb2.Envelope().metadata
    assert metadata_of(empty) == {}
    assert metadata_of(empty) is not metadata_of(empty)


@pytest.mark.parametrize("batches", [True, False], ids=["batches", "one-event-per-message"])
async def test_a_loop_of_publishes_streams_its_events_while_it_runs(batches: bool) -> None:
    # A publisher that awaits nothing but its publishes still lets the
    # Subscribe stream's writer send: the subscriber gets the first events
    # while the loop runs, not all of them once it ends, and a loop longer
    # than the stream's queue does not end a subscriber that keeps up. Go's
    # and Node's nodes subscribe without batches: one event per message.
    count = 3 * STREAM_QUEUE
    node = GrpcRuntime(port=0, options=GrpcRuntimeOptions(node_id="publisher"))
    async with node, grpc.aio.insecure_channel(node.address) as channel:
        stream = agent_service_pb2_grpc.AgentServiceStub(channel).Subscribe(
            svc.SubscribeRequest(
                filters=[types_pb2.TopicFilter(topic_type="fan")],
                subscriber_id="watcher",
                accept_batches=batches,
            )
        )
        first = await stream.read()
        assert first.HasField("node")
        published = 0
        received_after: list[int] = []

        async def watch() -> int:
            received = 0
            while received < count:
                response = await stream.read()
                if response is grpc.aio.EOF:
                    break
                if not received:
                    received_after.append(published)
                received += len(response.events.events) or int(response.HasField("event"))
            return received

        watcher = asyncio.create_task(watch())
        for i in range(count):
            await node.publish_message(conf.Echo(text=str(i)), TopicId("fan", "s"))
            published += 1
        assert await asyncio.wait_for(watcher, 60) == count, await stream.details()
        assert received_after[0] < count


async def read_to_end(stream: grpc.aio.UnaryStreamCall[Any, Any]) -> None:
    while await stream.read() is not grpc.aio.EOF:
        pass


async def test_a_subscriber_that_reads_nothing_loses_its_stream_not_the_publisher() -> None:
    # Large events fill the connection's flow-control window: the stream's
    # queue grows until it ends the stream with RESOURCE_EXHAUSTED, while the
    # publisher, a loop that awaits nothing else, goes on.
    count = STREAM_QUEUE + 2000
    big = conf.Echo(text="x" * (8 << 10))
    node = GrpcRuntime(port=0, options=GrpcRuntimeOptions(node_id="publisher"))
    async with node, grpc.aio.insecure_channel(node.address) as channel:
        stream = agent_service_pb2_grpc.AgentServiceStub(channel).Subscribe(
            svc.SubscribeRequest(
                filters=[types_pb2.TopicFilter(topic_type="fan")], subscriber_id="stuck"
            )
        )
        assert (await stream.read()).HasField("node")
        async with asyncio.timeout(60):
            for _ in range(count):
                await node.publish_message(big, TopicId("fan", "s"))
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await read_to_end(stream)
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "subscriber stuck fell more than 10000 events behind" in str(ended.value.details())
        await node.publish_message(conf.Echo(text="after"), TopicId("fan", "s"))


async def test_a_stuck_stream_holds_a_publisher_for_a_few_event_loop_turns_only() -> None:
    # Its subscriber takes nothing: the publisher gives it a bounded number of
    # turns per publish and goes on, so the stream fills up and ends.
    subscriber = Subscriber([types_pb2.TopicFilter(topic_type="fan")], "stuck", batches=True)
    for _ in range(STREAM_QUEUE // 2):
        subscriber.offer(svc.Event())
    assert backed_up([subscriber])
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    before = turns
    async with asyncio.timeout(1):
        await catch_up([subscriber])
    counter.cancel()
    assert 1 <= turns - before <= 9, f"the publisher waited {turns - before} turns"
    assert backed_up([subscriber])
    for _ in range(STREAM_QUEUE // 2):
        subscriber.offer(svc.Event())
    assert not subscriber.offer(svc.Event())
    assert subscriber.overflowed
