"""The gRPC transport against the mesh node's seam: a real GrpcServer and GrpcPeer on loopback.

The node side is a `NodeHandler` written here, so each test decides what the
node does with a call and observes what the transport does with the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import grpc
import grpc.aio
import pytest

from ravi._cancellation import CancellationToken
from ravi._deadlines import Deadlines
from ravi.errors import Cancelled, DeadlineExceeded, HandlerFailed, MailboxFull
from ravi.integrations.runtime.grpc._server import GrpcServer
from ravi.integrations.runtime.grpc._transport import GrpcPeer, dialer
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Node:
    """A NodeHandler whose Send does what the test says, and records what it saw."""

    def __init__(self) -> None:
        self.behaviour = "echo"
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    @property
    def node_id(self) -> str:
        return "seam"

    def node_info(self) -> types_pb2.NodeInfo:
        return types_pb2.NodeInfo(node_id="seam", language="test")

    async def serve_send(
        self,
        request: agent_service_pb2.SendRequest,
        remaining: float | None,
        trace: Mapping[str, str],
    ) -> agent_service_pb2.SendResponse:
        self.started.set()
        if self.behaviour == "raise":
            raise RuntimeError("not a ravi error")
        if self.behaviour == "full":
            raise MailboxFull("full")
        if self.behaviour == "hang":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return agent_service_pb2.SendResponse(node_id="seam", result=request.envelope.payload)

    async def serve_publish(
        self,
        request: agent_service_pb2.PublishRequest,
        remaining: float | None,
        trace: Mapping[str, str],
    ) -> agent_service_pb2.PublishResponse:
        raise RuntimeError("publish broke")

    async def serve_subscribe(
        self, request: agent_service_pb2.SubscribeRequest
    ) -> AsyncIterator[agent_service_pb2.SubscribeResponse]:
        yield agent_service_pb2.SubscribeResponse(node=self.node_info())

    def serve_describe(
        self, request: agent_service_pb2.DescribeRequest
    ) -> agent_service_pb2.DescribeResponse:
        return agent_service_pb2.DescribeResponse(node=self.node_info())

    async def serve_resolve_promise(
        self, request: agent_service_pb2.ResolvePromiseRequest
    ) -> agent_service_pb2.ResolvePromiseResponse:
        return agent_service_pb2.ResolvePromiseResponse()

    async def serve_save_state(
        self, request: agent_service_pb2.SaveStateRequest
    ) -> agent_service_pb2.SaveStateResponse:
        return agent_service_pb2.SaveStateResponse()

    async def serve_load_state(
        self, request: agent_service_pb2.LoadStateRequest
    ) -> agent_service_pb2.LoadStateResponse:
        return agent_service_pb2.LoadStateResponse()


@contextlib.asynccontextmanager
async def served(node: Node) -> AsyncIterator[tuple[GrpcServer, GrpcPeer]]:
    server = GrpcServer(
        node,
        host="127.0.0.1",
        port=0,
        token=None,
        health_without_auth=False,
        tls=None,
        max_message_bytes=1 << 20,
    )
    await server.start()
    deadlines = Deadlines(asyncio.get_running_loop())
    peer = dialer(max_message_bytes=1 << 20, tls=None, token=None, deadlines=lambda: deadlines)(
        f"127.0.0.1:{server.port}"
    )
    try:
        yield server, peer
    finally:
        await peer.close()
        await server.stop(0)


def request(text: str = "hi") -> agent_service_pb2.SendRequest:
    payload = types_pb2.Payload(type="test.Text", content_type="application/json", data=b'"x"')
    return agent_service_pb2.SendRequest(
        recipient=types_pb2.AgentId(type="a", key=text),
        envelope=types_pb2.Envelope(payload=payload),
    )


async def test_a_send_goes_on_the_connect_stream_and_comes_back() -> None:
    async with served(Node()) as (_, peer):
        response = await peer.send(request(), 10, None)
        assert response.node_id == "seam"
        assert response.result.type == "test.Text"


async def test_any_exception_while_serving_a_frame_is_a_failure_outcome() -> None:
    node = Node()
    node.behaviour = "raise"
    async with served(node) as (_, peer):
        with pytest.raises(HandlerFailed) as caught:
            await peer.send(request(), 10, None)
        assert caught.value.remote
        assert caught.value.exception_type == "RuntimeError"
        node.behaviour = "full"
        with pytest.raises(MailboxFull):
            await peer.send(request(), 10, None)
        node.behaviour = "echo"
        assert (await peer.send(request(), 10, None)).node_id == "seam"


async def test_any_exception_while_serving_a_unary_call_is_a_status() -> None:
    async with (
        served(Node()) as (server, _),
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Publish(agent_service_pb2.PublishRequest(), timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNKNOWN
    assert "RuntimeError: publish broke" in (caught.value.details() or "")


async def test_a_cancellation_token_cancels_the_call_on_the_stream_and_on_the_node() -> None:
    node = Node()
    node.behaviour = "hang"
    async with served(node) as (_, peer):
        token = CancellationToken()
        call = asyncio.ensure_future(peer.send(request(), 30, token))
        await asyncio.wait_for(node.started.wait(), 10)
        token.cancel()
        with pytest.raises(Cancelled):
            await asyncio.wait_for(call, 5)
        # The cancel frame reached the node: its handler was cancelled too.
        await asyncio.wait_for(node.cancelled.wait(), 10)


async def test_a_deadline_on_the_stream_fails_the_call_and_cancels_the_handler() -> None:
    node = Node()
    node.behaviour = "hang"
    async with served(node) as (_, peer):
        with pytest.raises(DeadlineExceeded):
            await peer.send(request(), 0.3, None)
        await asyncio.wait_for(node.cancelled.wait(), 10)
