"""The deployment a RestateRuntime serves: restate-sdk's ASGI app on hypercorn, and its drain.

Two things the SDK's app does not do for us are done here:

- it installs its own SIGTERM handler on its first request, replacing the
  process's (so `ravi restate worker` ignored SIGTERM): the app is primed once
  in a thread of its own, where installing a signal handler fails and the SDK
  gives up for good;
- on stop, an invocation waiting for a completion (a promise, a call) would
  hold its HTTP/2 stream until Restate's inactivity timeout: draining ends the
  input of every stream instead, so the SDK suspends each invocation at its
  next durable wait (a step already running finishes first) and Restate
  resumes it later, on this worker when it is back or on another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("ravi.restate.deployment")

_END_OF_INPUT: Message = {"type": "http.request", "body": b"", "more_body": False}


def disarm_sdk_sigterm(app: ASGIApp) -> None:
    """Let restate-sdk's app try (and fail) to install its SIGTERM handler, off the main thread.

    The SDK attempts it once per app, on the first request, and treats a
    failure as final; in a thread that is not the main one asyncio refuses
    signal handlers. Afterwards the process's own SIGTERM handling stands.
    """

    async def prime() -> None:
        scope = {"type": "http", "path": "/health", "headers": [], "method": "GET"}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(_message: Message) -> None:
            return None

        await app(scope, receive, send)

    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(prime())
        except Exception as error:  # reported below, in the caller's thread
            failures.append(error)

    thread = threading.Thread(target=run, name="ravi-restate-prime", daemon=True)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


class Deployment:
    """Deployment serves an ASGI app on a listening socket until drained and stopped.

    Args:
        app: restate-sdk's app.
        listener: a bound, listening, non-blocking socket, which the deployment
            takes over (the object passed is left detached).
        grace_period: seconds the streams in progress get on `stop()`.
    """

    def __init__(self, app: ASGIApp, listener: socket.socket, grace_period: float) -> None:
        self._app = app
        # The deployment owns the descriptor from here, in an object made from
        # it, whose protocol is read from the kernel: asyncio sets TCP_NODELAY
        # only on connections accepted from a listener whose protocol is
        # IPPROTO_TCP, and one made by `socket.socket()` says 0. Without it a
        # response written in two parts waits for a delayed ACK: 40 ms a step.
        self._listener = socket.socket(fileno=listener.detach())
        self._grace_period = grace_period
        self._shutdown = asyncio.Event()
        self._draining = asyncio.Event()
        self._streams = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        config = Config()
        config.accesslog = None
        config.errorlog = logger
        config.graceful_timeout = 1.0
        # Restate keeps its HTTP/2 connections to a deployment open and opens a
        # stream per invocation. Hypercorn's default ends a connection after
        # 1,000 requests, failing the invocations in flight on it: Restate
        # retries them after half a second or more (with 32 callers, a longest
        # call of 0.7 s against 0.1 s: docs/performance.md, "Restate").
        config.keep_alive_max_requests = sys.maxsize
        served: Callable[..., Awaitable[None]] = self._asgi  # hypercorn's ASGI types are narrower
        # Hypercorn serves this very socket object. An "fd://" bind would wrap
        # its descriptor in a second object: hypercorn closed the descriptor,
        # and the listener's own close later closed whichever socket had been
        # given the same number meanwhile (another connection of the process).
        sockets = Sockets(secure_sockets=[], insecure_sockets=[self._listener], quic_sockets=[])
        self._task = asyncio.get_running_loop().create_task(
            worker_serve(
                wrap_app(served, config.wsgi_max_body_size, "asgi"),
                config,
                sockets=sockets,
                shutdown_trigger=self._shutdown.wait,
            ),
            name="ravi-restate-deployment",
        )

    async def stop(self) -> None:
        """Suspend the invocations in progress, wait up to the grace period, then stop serving.

        An invocation still running after the grace period is cut off; Restate
        retries it (its journaled steps are not repeated, the one running is).
        """
        self._draining.set()
        try:
            await asyncio.wait_for(self._quiet.wait(), self._grace_period)
        except TimeoutError:
            logger.warning(
                "%d invocations still ran after %s s: cut off, Restate retries them",
                self._streams,
                self._grace_period,
            )
        # Only once the streams are done: hypercorn, shutting down, refuses a new
        # stream while its first frames may already be in, and a frame for a
        # stream it does not know breaks the whole connection.
        self._shutdown.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 3)
        except TimeoutError:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping either way
            await self._task
        self._listener.close()  # closed already if hypercorn got to serve it: a no-op then

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # restate-sdk's app has no lifespan; answering here keeps hypercorn quiet.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if self._draining.is_set():
            await _refuse(receive, send)
            return
        stream = _DrainedStream(receive, send, self._draining)
        self._streams += 1
        self._quiet.clear()
        try:
            await self._app(scope, stream.receive, stream.send)
        finally:
            self._streams -= 1
            if not self._streams:
                self._quiet.set()


async def _refuse(receive: Receive, send: Send) -> None:
    """Answer 503 to an invocation arriving while the deployment drains: Restate retries it.

    The response ends only once Restate has ended the request (see _DrainedStream).
    """
    await send({"type": "http.response.start", "status": 503, "headers": []})
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            break
    with contextlib.suppress(Exception):  # the stream may be gone: Restate reset it
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _DrainedStream:
    """One request's `receive` and `send`, ending its input early when the deployment drains.

    The SDK suspends the invocation once its input has ended, then ends its
    response. Restate, told of the suspension, ends the request; the SDK's
    last frame is held until it has, as the SDK does itself: hypercorn
    forgets a stream whose response has ended, and data arriving for it
    afterwards breaks the whole connection, every stream on it.
    """

    def __init__(self, receive: Receive, send: Send, draining: asyncio.Event) -> None:
        self._receive = receive
        self._send = send
        self._draining = draining
        self._ended = False  # the SDK was told the input ended
        self._closed = asyncio.Event()  # Restate did end it
        self._pending: asyncio.Future[Message] | None = None

    async def receive(self) -> Message:
        while True:
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._receive())
            pending = self._pending
            try:
                if not self._ended:
                    drain: asyncio.Future[Any] = asyncio.ensure_future(self._draining.wait())
                    either: set[asyncio.Future[Any]] = {pending, drain}
                    try:
                        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        drain.cancel()
                    if not pending.done():
                        self._ended = True
                        return dict(_END_OF_INPUT)
                message = await pending
            except asyncio.CancelledError:
                pending.cancel()
                raise
            self._pending = None
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                self._closed.set()
            if self._ended and message["type"] != "http.disconnect":
                continue  # the SDK was told the input ended: the rest is dropped
            return message

    async def send(self, message: Message) -> None:
        final = message["type"] == "http.response.body" and not message.get("more_body", False)
        if final and self._ended:
            await self._closed.wait()
        await self._send(message)
