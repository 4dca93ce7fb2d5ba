"""The MessageContext of a handler running inside a Restate invocation."""

from __future__ import annotations

import inspect
import json
import time
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import restate
from restate.serde import BytesSerde

from ravi._cancellation import CancellationToken
from ravi._context import MessageContext
from ravi._ids import AgentId, TopicId
from ravi._mesh import codec
from ravi._serialization import MessageRegistry
from ravi.errors import (
    AlreadyExists,
    Cancelled,
    Code,
    DeadlineExceeded,
    HandlerFailed,
    RaviError,
    error_for,
)
from ravi.mesh.v1 import types_pb2

PROMISES = "ravi.Promises"
CANCELLED_STATUS = 409

BYTES = BytesSerde()
_STEP_OPTIONS: restate.RunOptions[bytes] = restate.RunOptions(serde=BYTES)


class RestateContext(MessageContext):
    """RestateContext runs `step` and `wait_for` on the invocation's journal.

    A step's result (or its error) is recorded once; a replay returns the
    recorded value without calling the function. A wait is an awakeable
    registered under the promise's name in the `ravi.Promises` object, so it
    survives worker and server restarts.
    """

    __slots__ = (
        "_cancellation",
        "_chain",
        "_deadline",
        "_message_id",
        "_metadata",
        "_registry",
        "_sender",
        "_topic",
        "restate",
    )

    def __init__(
        self,
        ctx: restate.ObjectContext | restate.ObjectSharedContext,
        registry: MessageRegistry,
        envelope: types_pb2.Envelope,
        topic: TopicId | None,
        deadline: float | None,
    ) -> None:
        self.restate = ctx
        self._registry = registry
        self._sender = (
            codec.agent_id_from_wire(envelope.sender, "sender")
            if envelope.HasField("sender")
            else None
        )
        self._topic = topic
        self._message_id = envelope.message_id
        self._metadata = dict(envelope.metadata)
        self._chain = codec.chain_from_wire(envelope.call_chain)
        self._deadline = deadline
        self._cancellation = CancellationToken()

    @property
    def sender(self) -> AgentId | None:
        return self._sender

    @property
    def topic(self) -> TopicId | None:
        return self._topic

    @property
    def message_id(self) -> str:
        return self._message_id

    @property
    def metadata(self) -> Mapping[str, str]:
        return self._metadata

    @property
    def cancellation(self) -> CancellationToken:
        return self._cancellation

    @property
    def chain(self) -> tuple[tuple[str, str], ...]:
        """The agents waiting on this call, outermost first."""
        return self._chain

    @property
    def deadline(self) -> float | None:
        """The caller's deadline, as a `time.time()` value."""
        return self._deadline

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.time())

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        _register_return_type(self._registry, fn)

        async def action() -> bytes:
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as error:  # recorded, so that a replay raises it again
                raise restate.TerminalError(_error_json(error), 500) from error
            return codec.encode(self._registry, result).SerializeToString()

        try:
            data = await self.restate.run_typed(name, action, _STEP_OPTIONS)
        except restate.TerminalError as error:
            raise _step_error(error) from None
        return codec.decode(self._registry, types_pb2.Payload.FromString(data))

    async def wait_for(self, name: str, *, timeout: float | None = None) -> Any:
        awakeable_id, awakeable = self.restate.awakeable(serde=BYTES)
        try:
            early = await self.restate.generic_call(
                PROMISES, "wait", awakeable_id.encode(), key=name
            )
            data = early or await durable_wait(self.restate, awakeable, name, timeout)
        except restate.TerminalError as error:
            raise _terminal(error) from None
        return codec.decode(self._registry, types_pb2.Payload.FromString(data))

    def idempotency_key(self, step_name: str) -> str:
        return f"{self._message_id}/{step_name}"


def _register_return_type(registry: MessageRegistry, fn: Callable[..., Any]) -> None:
    """Register the class a step returns, so a replay in a fresh process can decode it."""
    try:
        hint = typing.get_type_hints(fn).get("return")
    except (NameError, TypeError):
        return
    if isinstance(hint, type) and hint not in (str, int, float, bool, type(None), dict, list):
        try:
            registry.type_name(hint)
        except TypeError:
            return


def _error_json(error: Exception) -> str:
    if isinstance(error, RaviError):
        info = {
            "code": error.code.value,
            "message": error.message,
            "reason": error.reason,
            "metadata": error.metadata,
        }
    else:
        info = {
            "code": Code.UNKNOWN.value,
            "message": f"{type(error).__name__}: {error}",
            "reason": HandlerFailed.default_reason,
            "metadata": {"exception_type": type(error).__name__, "exception_message": str(error)},
        }
    return json.dumps(info)


def _step_error(error: restate.TerminalError) -> RaviError:
    """The error a recorded step raised, rebuilt from the journal."""
    try:
        info = json.loads(error.message)
        code = Code(info["code"])
    except (ValueError, KeyError, TypeError):
        return _terminal(error)
    return error_for(
        code, info["message"], reason=info.get("reason"), metadata=info.get("metadata")
    )


async def durable_wait(
    ctx: restate.Context,
    value: restate.RestateDurableFuture[bytes],
    name: str,
    timeout: float | None,
) -> bytes:
    """The value of a promise, or DeadlineExceeded after a durable timer of `timeout` seconds."""
    if timeout is None:
        return await value
    match await restate.select(value=value, timer=ctx.sleep(timedelta(seconds=timeout))):
        case ["value", data]:
            return typing.cast("bytes", data)
        case _:
            raise DeadlineExceeded(f"promise {name!r} was not resolved within {timeout} s")


def _terminal(error: restate.TerminalError) -> RaviError:
    """A Restate terminal error (a cancellation, a refused promise) as a ravi error."""
    if error.status_code == CANCELLED_STATUS and error.message == "cancelled":
        return Cancelled("the invocation was cancelled")
    if error.status_code == CANCELLED_STATUS:
        return AlreadyExists(error.message)
    return error_for(Code.UNKNOWN, error.message)
