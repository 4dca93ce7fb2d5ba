"""RpcInstrumentation: what a ravi interceptor gives the gRPC layer to trace unary RPCs.

The mesh's own spans (`send`, `handle`, ...) come from interceptors; RPC spans
come from gRPC interceptors (OpenTelemetry's grpc instrumentation, which
`ravi.telemetry.TracingInterceptor` provides). A `GrpcRuntime` installs them
when one of its interceptors has these methods, so this package never imports
a telemetry library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import grpc.aio


@runtime_checkable
class RpcInstrumentation(Protocol):
    """RpcInstrumentation traces the unary RPCs a node serves and makes.

    Only the unary RPCs (`codec.UNARY_RPCS`) get RPC spans: the multiplexed
    stream and Subscribe carry many messages per RPC, and each message there
    has the mesh's own spans.
    """

    def grpc_server_interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
        """Server interceptors that make a span for each unary RPC served."""

    def grpc_client_interceptors(self) -> Sequence[grpc.aio.ClientInterceptor]:
        """Client interceptors that make a span for each unary RPC to a peer."""

    def rpc_trace_context(self) -> Mapping[str, str]:
        """The W3C headers of the current RPC span (empty without one)."""


def instrumentation(interceptors: Sequence[Any]) -> RpcInstrumentation | None:
    """The first of a runtime's interceptors that instruments RPCs, if any."""
    for interceptor in interceptors:
        if isinstance(interceptor, RpcInstrumentation):
            return interceptor
    return None
