"""Credentials for nodes: bearer tokens and (mutual) TLS."""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import grpc.aio

_HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Generic only in the type stubs, so the alias is a string for the interpreter.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


@dataclass(frozen=True)
class TlsConfig:
    """TlsConfig holds the PEM files for TLS, on the serving or the calling side.

    Args:
        cert_file: this side's certificate chain.
        key_file: this side's private key.
        ca_file: the CA that signs the other side's certificates: for a server,
            the clients' CA (then client certificates are required: mutual TLS);
            for a client, the servers' CA.
        server_name: for a client, the name to expect in the server certificate
            when it differs from the address's host.
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    server_name: str | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.cert_file is None or self.key_file is None:
            raise ValueError("a TLS server needs cert_file and key_file")
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            require_client_auth=self.ca_file is not None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


_BEARER = re.compile(r"bearer +(\S+) *", re.IGNORECASE | re.ASCII)
"""`authorization` credentials (RFC 7235): the scheme in any case, one or more spaces, the token."""


class BearerAuth(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls without exactly one `authorization: Bearer <token>` with UNAUTHENTICATED.

    A second `authorization` entry is refused even when both name the token: which
    one counts must never depend on an implementation (agent_service.proto).
    """

    def __init__(self, token: str, *, health_without_auth: bool) -> None:
        self._expected = token.encode()
        self._health_without_auth = health_without_auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler | None = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or (self._health_without_auth and method.startswith(_HEALTH_PREFIX)):
            return handler  # type: ignore[return-value]  # None: unknown method, gRPC answers
        given = [
            value
            for key, value in handler_call_details.invocation_metadata or ()
            if key == "authorization"
        ]
        if len(given) == 1 and isinstance(given[0], str):
            match = _BEARER.fullmatch(given[0])
            if match is not None and hmac.compare_digest(match[1].encode(), self._expected):
                return handler
        return _denied(handler)


def _denied(handler: Handler) -> Handler:
    message = "missing or invalid bearer token"

    # grpc.aio accepts a coroutine for streaming methods too (it would write
    # with context.write), so one aborting coroutine serves every kind.
    async def deny(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(deny, **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny, **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(deny, **serializers)
    return grpc.stream_stream_rpc_method_handler(deny, **serializers)
