"""ravi errors across Restate's ingress: a handler's terminal error carries the ravi code.

Restate passes a terminal error's status and message through to the caller
(`{"code": <status>, "message": ...}`), so the message is the ravi code and
message as JSON, and the caller rebuilds the same error class from it.
"""

from __future__ import annotations

import json

import restate

from ravi.errors import Code, NotFound, RaviError, Unavailable, error_for

_STATUS = {
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.FAILED_PRECONDITION: 412,
    Code.INVALID_ARGUMENT: 400,
}


def terminal_of(error: RaviError) -> restate.TerminalError:
    """A ravi error as a terminal error (not retried) that `error_of_reply` turns back."""
    message = json.dumps({"code": error.code.name, "message": error.message})
    return restate.TerminalError(message, _STATUS.get(error.code, 500))


def error_of_reply(status: int, data: bytes, what: str) -> RaviError:
    """The error an ingress reply that is not a success stands for.

    Args:
        status: the reply's HTTP status.
        data: its body.
        what: the request, for the message of an error ravi did not raise.
    """
    try:
        message = json.loads(data)["message"]
    except (ValueError, KeyError, TypeError):
        return Unavailable(f"Restate answered {status} to {what}: {data!r}")
    try:
        info = json.loads(message)
        return error_for(Code[info["code"]], info["message"])
    except (ValueError, KeyError, TypeError):
        pass
    if status == 404:
        return NotFound(f"{what}: {message}")
    return Unavailable(f"Restate answered {status} to {what}: {message}")
