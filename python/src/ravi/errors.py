"""Errors raised by ravi, the same on every runtime.

Every error ravi raises is a `RaviError` carrying a gRPC-style `Code`, an optional
`ErrorReason` name from the contract (`proto/ravi/mesh/v1/errors.proto`) and a
`remote` flag that tells an error raised by another node from one raised here.
A caller can therefore handle a failure the same way whether the agent ran
in-process, on another node in another language, or on Restate.

    RaviError                      code of the failure (Code), reason, remote flag
    ├── NotFound                   NOT_FOUND
    │   └── AgentTypeNotFound      NOT_FOUND            AGENT_TYPE_NOT_FOUND
    ├── Unimplemented              UNIMPLEMENTED
    │   └── NoHandler              UNIMPLEMENTED        NO_HANDLER
    ├── InvalidArgument            INVALID_ARGUMENT
    │   ├── BadId                  INVALID_ARGUMENT     BAD_ID
    │   ├── BadPayload             INVALID_ARGUMENT     BAD_PAYLOAD
    │   └── InvalidToolCall        INVALID_ARGUMENT     (a model's tool call: no such
    │                                                   tool, or bad arguments)
    ├── HandlerFailed              UNKNOWN (or the code the handler's error had)
    │                                                   HANDLER_FAILED
    ├── FailedPrecondition         FAILED_PRECONDITION
    │   ├── ReentrantCall          FAILED_PRECONDITION  REENTRANT_CALL
    │   ├── HopLimitExceeded       FAILED_PRECONDITION  HOP_LIMIT_EXCEEDED
    │   └── ForwardingLoop         FAILED_PRECONDITION  FORWARDING_LOOP
    ├── AlreadyExists              ALREADY_EXISTS
    ├── DeadlineExceeded           DEADLINE_EXCEEDED
    ├── Cancelled                  CANCELLED
    ├── Unavailable                UNAVAILABLE
    │   └── PeerUnavailable        UNAVAILABLE          PEER_UNAVAILABLE
    ├── ResourceExhausted          RESOURCE_EXHAUSTED
    │   └── MailboxFull            RESOURCE_EXHAUSTED   MAILBOX_FULL
    ├── Unauthenticated            UNAUTHENTICATED
    ├── PermissionDenied           PERMISSION_DENIED
    └── Internal                   INTERNAL

`code_of(exc)` gives the code of any exception (UNKNOWN for non-ravi ones);
`handler_error(exc, agent)` is what the caller of a handler that raised gets;
`error_for(code, message, ...)` builds the most specific error for a code and
reason, which is how errors received from other nodes keep their type.
Errors cross the wire in two encodings, mapped here and nowhere else: a gRPC
status with a `google.rpc.ErrorInfo` detail (unary calls: `to_grpc_status`,
`from_grpc_error`) and a `ravi.mesh.v1.CallFailure` (a frame of the multiplexed
Connect stream, and Restate's call outcomes: `to_call_failure`,
`from_call_failure`). Both carry the same four fields (code, message, reason,
metadata), so an error reads the same whichever way it travelled.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

if TYPE_CHECKING:
    import grpc.aio

    from ravi.mesh.v1 import agent_service_pb2

__all__ = [
    "AgentTypeNotFound",
    "AlreadyExists",
    "BadId",
    "BadPayload",
    "Cancelled",
    "Code",
    "DeadlineExceeded",
    "FailedPrecondition",
    "ForwardingLoop",
    "HandlerFailed",
    "HopLimitExceeded",
    "Internal",
    "InvalidArgument",
    "InvalidToolCall",
    "MailboxFull",
    "NoHandler",
    "NotFound",
    "PeerUnavailable",
    "PermissionDenied",
    "RaviError",
    "ReentrantCall",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "code_of",
    "error_for",
    "from_call_failure",
    "from_grpc_error",
    "handler_error",
    "to_call_failure",
    "to_grpc_status",
]

ERROR_DOMAIN = "ravi.mesh.v1"


class Code(enum.IntEnum):
    """Code mirrors the gRPC status codes, without OK: a failure always has one."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RaviError(Exception):
    """RaviError is the root of every error ravi raises.

    Attributes:
        code: the gRPC-style code of the failure.
        reason: the contract's `ErrorReason` name (for example "NO_HANDLER"), or
            None when the code says all there is to say.
        remote: True when another node raised the error and it travelled here.
        metadata: string details, as carried by `google.rpc.ErrorInfo.metadata`.
    """

    default_code: ClassVar[Code] = Code.UNKNOWN
    default_reason: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: Code | None = None,
        reason: str | None = None,
        remote: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.reason = reason if reason is not None else self.default_reason
        self.remote = remote
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        where = ", remote" if self.remote else ""
        return f"{type(self).__name__}({self.message!r}, code={self.code.name}{where})"


class NotFound(RaviError):
    """The thing asked for does not exist."""

    default_code = Code.NOT_FOUND


class AgentTypeNotFound(NotFound):
    """No runtime or node hosts the agent type."""

    default_reason = "AGENT_TYPE_NOT_FOUND"


class Unimplemented(RaviError):
    """The operation is not implemented by the receiver."""

    default_code = Code.UNIMPLEMENTED


class NoHandler(Unimplemented):
    """The agent has no handler for the message type (or more than one matches)."""

    default_reason = "NO_HANDLER"


class InvalidArgument(RaviError):
    """The request is malformed."""

    default_code = Code.INVALID_ARGUMENT


class BadId(InvalidArgument):
    """An agent id or topic id is empty or malformed."""

    default_reason = "BAD_ID"


class BadPayload(InvalidArgument):
    """A payload does not decode, or its type name or content type is unknown."""

    default_reason = "BAD_PAYLOAD"


class InvalidToolCall(InvalidArgument):
    """A tool call names no tool, or its arguments do not validate.

    A ReAct agent tells the model (so it can correct itself) instead of
    failing; the server refuses an edited approval whose arguments do not
    validate with it (HTTP 422, the problems listed), and the approval stays
    pending.

    Attributes:
        problems: each problem of the arguments, as (where, what): where is the
            path inside the arguments (empty for the arguments as a whole),
            what says what is wrong there. Known where this process validated
            them; not carried to other nodes.
    """

    def __init__(
        self,
        message: str,
        *,
        problems: Sequence[tuple[tuple[str | int, ...], str]] = (),
        **details: Any,
    ) -> None:
        super().__init__(message, **details)
        self.problems = list(problems)


class HandlerFailed(RaviError):
    """A message handler raised an exception that is not a `RaviError`.

    The original exception's type name and message travel with it (also across
    nodes and languages); in-process it is chained as `__cause__`.
    """

    default_reason = "HANDLER_FAILED"

    @property
    def exception_type(self) -> str:
        """The name of the exception type the handler raised."""
        return self.metadata.get("exception_type", "")

    @property
    def exception_message(self) -> str:
        """The message of the exception the handler raised."""
        return self.metadata.get("exception_message", "")


class FailedPrecondition(RaviError):
    """The call cannot be made in the current state."""

    default_code = Code.FAILED_PRECONDITION


class ReentrantCall(FailedPrecondition):
    """The call would deadlock by re-entering a busy, non-reentrant agent."""

    default_reason = "REENTRANT_CALL"


class HopLimitExceeded(FailedPrecondition):
    """Forwarding the request would exceed the hop limit."""

    default_reason = "HOP_LIMIT_EXCEEDED"


class ForwardingLoop(FailedPrecondition):
    """The request already passed through this node."""

    default_reason = "FORWARDING_LOOP"


class AlreadyExists(RaviError):
    """The thing to create exists already (for example a promise already resolved)."""

    default_code = Code.ALREADY_EXISTS


class DeadlineExceeded(RaviError):
    """The call's deadline passed before it completed."""

    default_code = Code.DEADLINE_EXCEEDED


class Cancelled(RaviError):
    """The call was cancelled by its caller or by the runtime stopping."""

    default_code = Code.CANCELLED


class Unavailable(RaviError):
    """The runtime or the service is not available (not started, stopping)."""

    default_code = Code.UNAVAILABLE


class PeerUnavailable(Unavailable):
    """The node hosting the agent could not be reached."""

    default_reason = "PEER_UNAVAILABLE"


class ResourceExhausted(RaviError):
    """A size or queue limit was reached."""

    default_code = Code.RESOURCE_EXHAUSTED


class MailboxFull(ResourceExhausted):
    """The agent's mailbox is at its bound."""

    default_reason = "MAILBOX_FULL"


class Unauthenticated(RaviError):
    """Credentials are missing or invalid."""

    default_code = Code.UNAUTHENTICATED


class PermissionDenied(RaviError):
    """The credentials do not allow the call."""

    default_code = Code.PERMISSION_DENIED


class Internal(RaviError):
    """An invariant of ravi itself broke: a bug to report."""

    default_code = Code.INTERNAL


def handler_error(exc: Exception, agent: str) -> RaviError:
    """The error the caller of a handler that raised `exc` gets.

    A RaviError as raised; anything else as HandlerFailed, carrying the
    exception's type and message.

    Args:
        exc: what the handler raised.
        agent: the agent whose handler it was, as "type/key".
    """
    if isinstance(exc, RaviError):
        return exc
    failure = HandlerFailed(
        f"handler of {agent} raised {type(exc).__name__}: {exc}",
        metadata={
            "exception_type": type(exc).__name__,
            "exception_message": str(exc),
            "agent_type": agent.partition("/")[0],
        },
    )
    failure.__cause__ = exc
    return failure


_BY_REASON: dict[str, type[RaviError]] = {
    cls.default_reason: cls
    for cls in (
        AgentTypeNotFound,
        NoHandler,
        BadId,
        BadPayload,
        HandlerFailed,
        ReentrantCall,
        HopLimitExceeded,
        ForwardingLoop,
        PeerUnavailable,
        MailboxFull,
    )
    if cls.default_reason is not None
}

_BY_CODE: dict[Code, type[RaviError]] = {
    Code.INVALID_ARGUMENT: InvalidArgument,
    Code.FAILED_PRECONDITION: FailedPrecondition,
    Code.ALREADY_EXISTS: AlreadyExists,
    Code.DEADLINE_EXCEEDED: DeadlineExceeded,
    Code.CANCELLED: Cancelled,
    Code.UNAVAILABLE: Unavailable,
    Code.RESOURCE_EXHAUSTED: ResourceExhausted,
    Code.UNAUTHENTICATED: Unauthenticated,
    Code.PERMISSION_DENIED: PermissionDenied,
    Code.INTERNAL: Internal,
    Code.NOT_FOUND: NotFound,
    Code.UNIMPLEMENTED: Unimplemented,
}


def code_of(exc: BaseException) -> Code:
    """Return the code of an exception: its own for a `RaviError`, else UNKNOWN."""
    if isinstance(exc, RaviError):
        return exc.code
    return Code.UNKNOWN


def error_for(
    code: Code,
    message: str,
    *,
    reason: str | None = None,
    remote: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> RaviError:
    """Build the most specific `RaviError` for a code and an optional reason.

    The reason decides the class when it is a known `ErrorReason` (a handler that
    raised keeps HandlerFailed whatever its code); otherwise the code does.
    """
    cls = _BY_REASON.get(reason or "") or _BY_CODE.get(code, RaviError)
    return cls(message, code=code, reason=reason, remote=remote, metadata=metadata)


def _as_ravi_error(exc: BaseException) -> RaviError:
    """The error to send for `exc`: itself, or HANDLER_FAILED with its type and message."""
    if isinstance(exc, RaviError):
        return exc
    return HandlerFailed(
        f"{type(exc).__name__}: {exc}",
        metadata={"exception_type": type(exc).__name__, "exception_message": str(exc)},
    )


def _received(
    number: int, message: str, reason: str | None, metadata: Mapping[str, str]
) -> RaviError:
    """The error another node sent, whichever encoding carried it."""
    code = Code(number) if number in Code._value2member_map_ else Code.UNKNOWN
    return error_for(code, message, reason=reason or None, remote=True, metadata=metadata)


def to_grpc_status(exc: BaseException) -> grpc.Status:
    """The gRPC status for an exception, with an ErrorInfo detail when it has a reason.

    A `RaviError` keeps its code, message, reason and metadata; any other
    exception becomes UNKNOWN with reason HANDLER_FAILED and its type and message.
    """
    from google.protobuf import any_pb2  # noqa: PLC0415 - keeps `import ravi` free of gRPC
    from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415
    from grpc_status import rpc_status  # noqa: PLC0415

    error = _as_ravi_error(exc)
    status = status_pb2.Status(code=error.code.value, message=error.message)
    if error.reason is not None:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
        status.details.append(detail)
    return rpc_status.to_status(status)


def from_grpc_error(error: grpc.aio.AioRpcError) -> RaviError:
    """The `RaviError` for a failed gRPC call, flagged as remote.

    The ErrorInfo detail, when present, decides the class (so a handler failure
    on a Go node is `HandlerFailed` here too); otherwise the status code does.
    """
    from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415

    reason: str | None = None
    metadata: dict[str, str] = {}
    # The stubs type the trailers as RpcError's; on grpc.aio they are Metadata.
    trailers = cast("grpc.aio.Metadata", error.trailing_metadata())
    for value in trailers.get_all("grpc-status-details-bin") if trailers else ():
        if not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                reason = info.reason or None
                metadata = dict(info.metadata)
    message = error.details() or error.code().name
    return _received(error.code().value[0], message, reason, metadata)


def to_call_failure(exc: BaseException) -> agent_service_pb2.CallFailure:
    """The `CallFailure` a Connect frame (or a Restate call outcome) carries for `exc`.

    The same fields as `to_grpc_status`: a non-ravi exception is HANDLER_FAILED.
    """
    from ravi.mesh.v1 import agent_service_pb2  # noqa: PLC0415 - keeps `import ravi` light

    error = _as_ravi_error(exc)
    return agent_service_pb2.CallFailure(
        code=error.code.value,
        message=error.message,
        reason=error.reason or "",
        metadata=error.metadata,
    )


def from_call_failure(failure: agent_service_pb2.CallFailure) -> RaviError:
    """The `RaviError` a `CallFailure` stands for, flagged as remote."""
    return _received(failure.code, failure.message, failure.reason, failure.metadata)
