"""A bare HTTP/2 gRPC caller, for the edges a gRPC library will not let a client produce.

grpcio enforces a call's deadline on the client side and refuses reserved headers, so
it cannot show whether a node answers a `grpc-timeout` of 1 ns, or what it does with
two `authorization` headers it was sent verbatim. This caller writes the request
exactly as given (h2, the HTTP/2 library hypercorn already brings) and reports what
the node answered, or that it answered nothing within `wait` seconds.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class RawAnswer:
    """What a node answered one call: its status (None: no answer) and how long it took."""

    status: int | None = None
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0
    reset: bool = False


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message, uncompressed."""
    return struct.pack(">BI", 0, len(message)) + message


def _call(
    address: str, path: str, body: bytes, headers: list[tuple[str, str]], wait: float
) -> RawAnswer:
    host, _, port = address.rpartition(":")
    started = time.monotonic()
    answer = RawAnswer()
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        connection.initiate_connection()
        stream_id = connection.get_next_available_stream_id()
        connection.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *headers,
            ],
        )
        connection.send_data(stream_id, frame(body), end_stream=True)
        sock.sendall(connection.data_to_send())
        deadline = started + wait
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    for name, value in event.headers:
                        answer.headers[str(name)] = str(value)
                elif isinstance(event, h2.events.DataReceived):
                    connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamReset):
                    answer.reset = True
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    answer.elapsed = time.monotonic() - started
                    if "grpc-status" in answer.headers:
                        answer.status = int(answer.headers["grpc-status"])
                        answer.message = answer.headers.get("grpc-message", "")
                    return answer
            sock.sendall(connection.data_to_send())
    answer.elapsed = time.monotonic() - started
    return answer


async def raw_call(
    address: str,
    path: str,
    body: bytes,
    headers: list[tuple[str, str]] = [],  # noqa: B006 - never mutated
    *,
    wait: float = 10.0,
) -> RawAnswer:
    """Call `path` on the node with `body` as the request message and `headers` verbatim."""
    return await asyncio.to_thread(_call, address, path, body, list(headers), wait)
