"""Tracing and metrics interceptors (the conventions of docs/operations.md)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from ravi._interceptors import (
    ActivateInput,
    ForwardInput,
    HandleInput,
    Interceptor,
    PassivateInput,
    PublishInput,
    SendInput,
)
from ravi._serialization import registry
from ravi.errors import RaviError, code_of

LANGUAGE = "python"
_SCOPE = "ravi"


def _message_type(message: Any) -> str:
    try:
        return registry.type_name(type(message))
    except TypeError:
        return type(message).__qualname__


class TracingInterceptor(Interceptor):
    """TracingInterceptor makes the spans of docs/operations.md and propagates their context.

    The `send` and `publish` spans inject W3C trace context into the message
    metadata; the `handle` and `deliver` spans take their parent from it, so
    one request is one trace across nodes and languages.

    Args:
        node_id: this node's id, for the ravi.node.id attribute.
        tracer_provider: the provider to trace with (the global one when None).
    """

    def __init__(self, node_id: str, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        self._common = {
            "messaging.system": "ravi",
            "ravi.node.id": node_id,
            "ravi.language": LANGUAGE,
        }

    async def send(self, input: SendInput, next: Callable[[SendInput], Awaitable[Any]]) -> Any:
        attributes = {
            **self._common,
            "messaging.operation.type": "send",
            "messaging.destination.name": input.recipient.type,
            "ravi.agent.type": input.recipient.type,
            "ravi.agent.key": input.recipient.key,
            "ravi.message.type": _message_type(input.message),
            "messaging.message.id": input.message_id,
        }
        with self._span(f"send {input.recipient.type}", SpanKind.CLIENT, attributes):
            propagate.inject(input.metadata)
            return await next(input)

    async def publish(
        self, input: PublishInput, next: Callable[[PublishInput], Awaitable[None]]
    ) -> None:
        attributes = {
            **self._common,
            "messaging.operation.type": "publish",
            "messaging.destination.name": input.topic.type,
            "ravi.topic.source": input.topic.source,
            "ravi.message.type": _message_type(input.message),
            "messaging.message.id": input.message_id,
        }
        with self._span(f"publish {input.topic.type}", SpanKind.PRODUCER, attributes):
            propagate.inject(input.metadata)
            await next(input)

    async def handle(
        self, input: HandleInput, next: Callable[[HandleInput], Awaitable[Any]]
    ) -> Any:
        ctx = input.ctx
        parent = propagate.extract(dict(ctx.metadata))
        attributes: dict[str, str] = {
            **self._common,
            "messaging.operation.type": "process",
            "ravi.agent.type": input.agent_id.type,
            "ravi.agent.key": input.agent_id.key,
            "ravi.message.type": _message_type(input.message),
            "messaging.message.id": ctx.message_id,
        }
        if ctx.sender is not None:
            attributes["ravi.sender"] = str(ctx.sender)
        topic = ctx.topic
        if topic is None:
            name, kind, links = f"handle {input.agent_id.type}", SpanKind.SERVER, []
        else:
            attributes["ravi.topic.type"] = topic.type
            attributes["ravi.topic.source"] = topic.source
            name, kind = f"deliver {input.agent_id.type}", SpanKind.CONSUMER
            published = trace.get_current_span(parent).get_span_context()
            links = [Link(published)] if published.is_valid else []
        with self._span(name, kind, attributes, parent=parent, links=links):
            return await next(input)

    async def forward(
        self, input: ForwardInput, next: Callable[[ForwardInput], Awaitable[Any]]
    ) -> Any:
        attributes = {
            **self._common,
            "ravi.agent.type": input.recipient.type,
            "ravi.agent.key": input.recipient.key,
            "ravi.route.hop_count": input.hop_count,
        }
        parent = propagate.extract(input.metadata)
        with self._span(
            f"forward {input.recipient.type}", SpanKind.INTERNAL, attributes, parent=parent
        ) as span:
            result = await next(input)
            if input.next_node:
                span.set_attribute("ravi.route.next_node", input.next_node)
            return result

    @contextmanager
    def _span(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        *,
        parent: otel_context.Context | None = None,
        links: list[Link] | None = None,
    ) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as error:
                span.record_exception(error)
                span.set_attribute("ravi.error.code", code_of(error).name)
                # A handler's own exception becomes HANDLER_FAILED for its caller.
                reason = error.reason if isinstance(error, RaviError) else "HANDLER_FAILED"
                if reason:
                    span.set_attribute("ravi.error.reason", reason)
                span.set_status(Status(StatusCode.ERROR, str(error)))
                raise


class MetricsInterceptor(Interceptor):
    """MetricsInterceptor counts messages and agent lifecycles, and times handlers and activations.

    Args:
        meter_provider: the provider to record with (the global one when None).
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
        self._sent = meter.create_counter("ravi.messages.sent", description="sends made here")
        self._handled = meter.create_counter(
            "ravi.messages.handled", description="messages this node's agents handled"
        )
        self._failed = meter.create_counter(
            "ravi.messages.failed", description="handled messages whose handler failed"
        )
        self._duration = meter.create_histogram(
            "ravi.handler.duration", unit="s", description="how long handlers ran"
        )
        self._activated = meter.create_counter(
            "ravi.agents.activated", description="agent instances activated here"
        )
        self._passivated = meter.create_counter(
            "ravi.agents.passivated",
            description="agent instances passivated here, by reason (idle, capacity, moved, stop)",
        )
        self._activation = meter.create_histogram(
            "ravi.agent.activation.duration",
            unit="s",
            description="how long activating an instance took, its state load included",
        )

    async def send(self, input: SendInput, next: Callable[[SendInput], Awaitable[Any]]) -> Any:
        self._sent.add(1, {"ravi.agent.type": input.recipient.type})
        return await next(input)

    async def handle(
        self, input: HandleInput, next: Callable[[HandleInput], Awaitable[Any]]
    ) -> Any:
        attributes = {"ravi.agent.type": input.agent_id.type}
        started = time.perf_counter()
        try:
            return await next(input)
        except Exception as error:
            self._failed.add(1, {**attributes, "ravi.error.code": code_of(error).name})
            raise
        finally:
            self._handled.add(1, attributes)
            self._duration.record(time.perf_counter() - started, attributes)

    async def activate(
        self, input: ActivateInput, next: Callable[[ActivateInput], Awaitable[None]]
    ) -> None:
        attributes = {"ravi.agent.type": input.agent_id.type}
        started = time.perf_counter()
        await next(input)
        self._activation.record(time.perf_counter() - started, attributes)
        self._activated.add(1, attributes)

    async def passivate(
        self, input: PassivateInput, next: Callable[[PassivateInput], Awaitable[None]]
    ) -> None:
        await next(input)
        self._passivated.add(
            1, {"ravi.agent.type": input.agent_id.type, "ravi.passivation.reason": input.reason}
        )
