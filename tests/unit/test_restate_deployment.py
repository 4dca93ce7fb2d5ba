"""The deployment's listening socket: served by hypercorn, closed once, and only it."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from ravi.integrations.runtime.restate._deployment import Deployment

Message = MutableMapping[str, Any]


async def ok(
    scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Message]], send: Any
) -> None:
    await receive()
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def listening() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    return listener


def refused(port: int) -> None:
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_stopping_closes_the_listener_and_no_socket_that_reused_its_number() -> None:
    listener = listening()
    fd, port = listener.fileno(), listener.getsockname()[1]
    deployment = Deployment(ok, listener, grace_period=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: ravi\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.close()
    await writer.wait_closed()

    # As soon as the listener's descriptor is free, other sockets of the
    # process take numbers until one has the same: a second close of the
    # listener's number would close that one.
    taken: list[socket.socket] = []

    async def take_the_number() -> None:
        for _ in range(1_000_000):  # bounded in time too: by the wait_for below
            if not is_open(fd):
                break
            await asyncio.sleep(0)
        while fd not in (s.fileno() for s in taken) and len(taken) < 64:
            taken.append(socket.socket())

    watcher = asyncio.create_task(take_the_number())
    try:
        await deployment.stop()
        await asyncio.wait_for(watcher, 5)
        assert fd in (s.fileno() for s in taken)
        for other in taken:
            other.getsockname()  # raises "Bad file descriptor" if it was closed
        refused(port)
    finally:
        watcher.cancel()
        for other in taken:
            other.close()


async def test_stopping_before_hypercorn_served_closes_the_listener() -> None:
    listener = listening()
    port = listener.getsockname()[1]
    deployment = Deployment(ok, listener, grace_period=1.0)
    await deployment.stop()
    refused(port)


async def test_one_connection_carries_a_thousand_requests_and_more_without_delay() -> None:
    """Restate sends every invocation down the connections it keeps open to a deployment.

    Hypercorn's default ends a connection after 1,000 requests, failing the
    invocations then in flight on it. And without TCP_NODELAY on the accepted
    connection, each response waits about 40 ms for the client's delayed ACK:
    the 1,100 requests would take 45 s instead of well under one.
    """
    listener = listening()
    address = listener.getsockname()
    deployment = Deployment(ok, listener, grace_period=1.0)
    try:
        reader, writer = await asyncio.open_connection(*address)
        async with asyncio.timeout(20):
            for _ in range(1_100):
                writer.write(b"GET / HTTP/1.1\r\nhost: ravi\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                assert b"connection: close" not in head.lower()
                await reader.readexactly(2)
        writer.close()
        await writer.wait_closed()
    finally:
        await deployment.stop()
