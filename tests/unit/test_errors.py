"""The error module: codes, reasons, and rebuilding errors received from elsewhere."""

import pytest

from ravi import errors
from ravi.errors import Code, code_of, error_for


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (Code.NOT_FOUND, "AGENT_TYPE_NOT_FOUND", errors.AgentTypeNotFound),
        (Code.NOT_FOUND, None, errors.NotFound),
        (Code.UNIMPLEMENTED, "NO_HANDLER", errors.NoHandler),
        (Code.INVALID_ARGUMENT, "BAD_PAYLOAD", errors.BadPayload),
        (Code.INVALID_ARGUMENT, "BAD_ID", errors.BadId),
        (Code.INVALID_ARGUMENT, None, errors.InvalidArgument),
        (Code.UNKNOWN, "HANDLER_FAILED", errors.HandlerFailed),
        # A handler that failed with a code of its own: the class of that code, as raised.
        (Code.INVALID_ARGUMENT, "HANDLER_FAILED", errors.InvalidArgument),
        (Code.FAILED_PRECONDITION, "REENTRANT_CALL", errors.ReentrantCall),
        (Code.FAILED_PRECONDITION, "HOP_LIMIT_EXCEEDED", errors.HopLimitExceeded),
        (Code.FAILED_PRECONDITION, "FORWARDING_LOOP", errors.ForwardingLoop),
        (Code.UNAVAILABLE, "PEER_UNAVAILABLE", errors.PeerUnavailable),
        (Code.UNAVAILABLE, None, errors.Unavailable),
        (Code.RESOURCE_EXHAUSTED, "MAILBOX_FULL", errors.MailboxFull),
        (Code.RESOURCE_EXHAUSTED, None, errors.ResourceExhausted),
        (Code.DEADLINE_EXCEEDED, None, errors.DeadlineExceeded),
        (Code.CANCELLED, None, errors.Cancelled),
        (Code.UNAUTHENTICATED, None, errors.Unauthenticated),
        (Code.PERMISSION_DENIED, None, errors.PermissionDenied),
        (Code.ALREADY_EXISTS, None, errors.AlreadyExists),
        (Code.ABORTED, "STALE_STATE", errors.StaleState),
        (Code.ABORTED, None, errors.Aborted),
        (Code.INTERNAL, None, errors.Internal),
        (Code.DATA_LOSS, None, errors.RaviError),
        (Code.UNKNOWN, "SOMETHING_NEW", errors.RaviError),
    ],
)
def test_error_for_builds_the_most_specific_class(
    code: Code, reason: str | None, cls: type[errors.RaviError]
) -> None:
    error = error_for(code, "it failed", reason=reason, remote=True, metadata={"k": "v"})
    assert type(error) is cls
    assert error.code is code
    assert error.reason == reason
    assert error.remote is True
    assert error.metadata == {"k": "v"}
    assert str(error) == "it failed"


def test_local_errors_have_default_code_and_reason() -> None:
    error = errors.NoHandler("no handler for X")
    assert (error.code, error.reason, error.remote) == (Code.UNIMPLEMENTED, "NO_HANDLER", False)
    assert repr(error) == "NoHandler('no handler for X', code=UNIMPLEMENTED)"
    assert "remote" in repr(error_for(Code.UNIMPLEMENTED, "x", reason="NO_HANDLER", remote=True))


def test_code_of_falls_back_to_unknown() -> None:
    assert code_of(errors.MailboxFull("full")) is Code.RESOURCE_EXHAUSTED
    assert code_of(ValueError("x")) is Code.UNKNOWN


def test_handler_failed_exposes_the_original_exception() -> None:
    error = errors.HandlerFailed(
        "x", metadata={"exception_type": "KeyError", "exception_message": "'k'"}
    )
    assert (error.exception_type, error.exception_message) == ("KeyError", "'k'")


def test_codes_mirror_grpc_without_ok() -> None:
    import grpc

    for code in Code:
        assert grpc.StatusCode[code.name].value[0] == code.value
    assert {c.name for c in Code} == {s.name for s in grpc.StatusCode} - {"OK"}
