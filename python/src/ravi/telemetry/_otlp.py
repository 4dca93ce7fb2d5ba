"""OTLP span encoding written straight to protobuf wire bytes, and the exporter that uses it.

The SDK's encoder (`opentelemetry.exporter.otlp.proto.common`) builds a protobuf
object per span, per attribute and per value: about 38 µs per ravi span on a
2-core machine, more than making the span, and all of it under the GIL that the
node's event loop needs (docs/performance.md, "The cost of tracing"). ravi's
spans repeat the same attributes (node, language, agent type, message type), so
this encoder writes the wire format itself and keeps each attribute it has
encoded: a few µs per span. `OtlpSpanExporter` is the SDK's OTLP/gRPC exporter
(endpoint, headers, TLS, compression, retries, every OTEL_EXPORTER_OTLP_*
setting) with only the encoding replaced; the bytes are the same
`ExportTraceServiceRequest` the SDK sends, which the tests check field by field.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk._shared_internal import BatchExportStrategy
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, Status, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

_pack_q = struct.Struct("<Q").pack
_IDS = struct.Struct(">2sQQ2sQ")
"""trace_id (field 1, 16 bytes) and span_id (field 2, 8 bytes), big-endian as OTLP has them."""
_CHILD_IDS = struct.Struct(">2sQQ2sQ2sQ")
"""trace_id, span_id and parent_span_id (field 4, 8 bytes)."""
_KIND_TIMES = struct.Struct("<BBBQBQ")
"""kind (field 6, a one-byte varint) and the start and end times (fields 7 and 8, fixed64)."""
_LOW64 = (1 << 64) - 1
_pack_d = struct.Struct("<d").pack

# SpanFlags: the parent's is-remote bit is known (0x100), and set (0x200).
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200

_NO_STATUS = b"\x7a\x00"
"""Field 15, status, unset and without a description."""
UNSET_STATUS = Status(StatusCode.UNSET)
"""The status of every span that has not set one (ravi's spans share it)."""
# A link's flags (field 7 of a Link), and a span's parent's (field 16 of a Span).
_LOCAL_LINK = b"\x35" + struct.pack("<I", _HAS_IS_REMOTE)
_REMOTE_LINK = b"\x35" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_LOCAL_PARENT = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)
_REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)

ENCODE_BATCH = 64
"""Spans of the direct path that wait for their thread to encode them all at once."""

MESSAGE_ID = "messaging.message.id"
"""The attribute whose value no two spans share: never kept in the encoder's cache."""

_CACHE_LIMIT = 8192
"""Encoded attributes kept; past it the cache starts over (unique values churn it)."""


_SMALL = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    out = bytearray()
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 values are ten-byte varints
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    size = len(payload)
    return _varint(number << 3 | 2) + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


def _any_value(value: Any) -> bytes:  # noqa: PLR0911 - one return per kind of value
    """An AnyValue message (docs of opentelemetry/proto/common/v1/common.proto)."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_d(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(6, b"".join(_field(1, _key_value(str(k), v)) for k, v in value.items()))
    if value is None:
        return b""
    raise TypeError(f"cannot encode an attribute of type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _field(1, key.encode()) + _field(2, _any_value(value))


class EncodedSpan(NamedTuple):
    """A span as `Span` field bytes, with the resource and scope it is grouped under."""

    resource: Resource
    scope: InstrumentationScope | None
    body: bytes


class SpanEncoder:
    """SpanEncoder writes `ExportTraceServiceRequest` bytes for SDK spans.

    Spans are grouped by resource, then by instrumentation scope, in the order
    they come, as the SDK's encoder groups them.
    """

    def __init__(self) -> None:
        self._attributes: dict[tuple[int, str, str], bytes] = {}
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}
        self._names: dict[str, bytes] = {}
        self._keys: dict[tuple[int, str], tuple[bytes, bytes]] = {}
        self._blocks: dict[int, tuple[Mapping[str, Any], bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The request for `spans`."""
        return self.request([self.encoded(span) for span in spans])

    def encoded(self, span: ReadableSpan) -> EncodedSpan:
        """One span, encoded, with what groups it in a request."""
        return EncodedSpan(span.resource, span.instrumentation_scope, self.span(span))

    def request(self, spans: Sequence[EncodedSpan]) -> bytes:
        """The `ExportTraceServiceRequest` of encoded spans."""
        grouped: dict[int, tuple[Resource, dict[int, tuple[Any, list[bytes]]]]] = {}
        for encoded in spans:
            resource = encoded.resource
            scope = encoded.scope
            scopes = grouped.get(id(resource))
            if scopes is None:
                scopes = grouped[id(resource)] = (resource, {})
            entry = scopes[1].get(id(scope))
            if entry is None:
                entry = scopes[1][id(scope)] = (scope, [])
            entry[1].append(encoded.body)
        return b"".join(
            self.resource_spans(resource, by_scope.values())
            for resource, by_scope in grouped.values()
        )

    def resource_spans(
        self,
        resource: Resource,
        scopes: Iterable[tuple[InstrumentationScope | None, Sequence[bytes]]],
    ) -> bytes:
        """The `resource_spans` field (1) of a request: one resource's spans, by scope."""
        body = [self._resource(resource)]
        for scope, encoded_spans in scopes:
            scope_spans = self._scope(scope) + b"".join(encoded_spans)
            if scope is not None and scope.schema_url:
                scope_spans += _field(3, scope.schema_url.encode())
            body.append(_field(2, scope_spans))
        if resource.schema_url:
            body.append(_field(3, resource.schema_url.encode()))
        return _field(1, b"".join(body))

    def span(self, span: ReadableSpan) -> bytes:
        """One `Span`, as the field `spans` (2) of a ScopeSpans.

        Written for the common span (no events, links or drops, status unset):
        a few cached pieces joined once; the rest is written by `_rare`.
        """
        context = span.get_span_context()
        assert context is not None
        # A SpanContext is the tuple (trace_id, span_id, is_remote, trace_flags,
        # trace_state, is_valid): read by position, without a Python-level
        # property call per field (tests/unit/test_telemetry.py pins the layout).
        trace_id, span_id, _, _, state, _ = context
        parent = span.parent
        if parent is None:
            parts = [
                _IDS.pack(b"\x0a\x10", trace_id >> 64, trace_id & _LOW64, b"\x12\x08", span_id)
            ]
            flags = _LOCAL_PARENT
        else:
            parts = [
                _CHILD_IDS.pack(
                    b"\x0a\x10",
                    trace_id >> 64,
                    trace_id & _LOW64,
                    b"\x12\x08",
                    span_id,
                    b"\x22\x08",
                    parent[1],
                )
            ]
            flags = _REMOTE_PARENT if parent[2] else _LOCAL_PARENT
        if state is not DEFAULT_TRACE_STATE and state:
            # Field 3 after field 4: a parser takes fields in any order.
            parts.append(_field(3, state.to_header().encode()))
        name = span.name
        parts.append(self._names.get(name) or self._name(name))
        # The kind's value without Enum's Python-level hash, plus one: OTLP's
        # SpanKind counts UNSPECIFIED as 0.
        parts.append(
            _KIND_TIMES.pack(
                0x30, span.kind._value_ + 1, 0x39, span.start_time or 0, 0x41, span.end_time or 0
            )
        )
        shared = getattr(span, "shared", None)
        if shared:
            known = self._blocks.get(id(shared))
            parts.append(
                known[1] if known is not None and known[0] is shared else self._shared(shared)
            )
        attributes = span.attributes
        if attributes:
            self._attributes_into(parts, 9, attributes)
        if (
            span.events
            or span.links
            or span.dropped_attributes
            or span.dropped_events
            or span.dropped_links
        ):
            parts.append(self._rare(span))
        status = span.status
        parts.append(_NO_STATUS if status is UNSET_STATUS else _status(status))
        parts.append(flags)
        body = b"".join(parts)
        size = len(body)
        if size < 0x80:
            return b"\x12" + _SMALL[size] + body
        if size < 0x4000:
            # Most spans: a two-byte length, written without _varint's loop.
            return bytes((0x12, (size & 0x7F) | 0x80, size >> 7)) + body
        return b"\x12" + _varint(size) + body

    def _rare(self, span: ReadableSpan) -> bytes:
        """Fields 10 to 14 of a span: dropped attributes, events, links and their drop counts."""
        parts: list[bytes] = []
        if span.dropped_attributes:
            parts += (b"\x50", _varint(span.dropped_attributes))
        for event in span.events:
            parts.append(self._event(event))
        if span.dropped_events:
            parts += (b"\x60", _varint(span.dropped_events))
        for link in span.links:
            parts.append(self._link(link))
        if span.dropped_links:
            parts += (b"\x70", _varint(span.dropped_links))
        return b"".join(parts)

    def _shared(self, shared: Mapping[str, Any]) -> bytes:
        """The span attributes of a mapping many spans share, encoded and kept.

        `span` looks them up in `_blocks` itself; this encodes those it did not find.
        """
        if len(self._blocks) >= _CACHE_LIMIT:
            self._blocks.clear()
        encoded = self._attributes_of(9, shared)
        self._blocks[id(shared)] = (shared, encoded)
        return encoded

    def _name(self, name: str) -> bytes:
        encoded = self._names.get(name)
        if encoded is None:
            if len(self._names) >= _CACHE_LIMIT:
                self._names.clear()
            encoded = self._names[name] = _field(5, name.encode())
        return encoded

    def _event(self, event: Event) -> bytes:
        body = b"\x09" + _pack_q(event.timestamp) + _field(2, event.name.encode())
        if event.attributes:
            body += self._attributes_of(3, event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        return _field(11, body)

    def _link(self, link: Link) -> bytes:
        trace_id, span_id, is_remote, _, _, _ = link.context
        ids = _IDS.pack(b"\x0a\x10", trace_id >> 64, trace_id & _LOW64, b"\x12\x08", span_id)
        flags = _REMOTE_LINK if is_remote else _LOCAL_LINK
        if link.attributes is None:
            # A link to a span and nothing more (a delivery's to its publish):
            # 33 bytes, its length one byte.
            return b"\x6a\x21" + ids + flags
        body = ids
        if link.attributes:
            body += self._attributes_of(4, link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        return _field(13, body + flags)

    def _attributes_of(self, number: int, attributes: Mapping[str, Any]) -> bytes:
        out: list[bytes] = []
        self._attributes_into(out, number, attributes)
        return b"".join(out)

    def _attributes_into(
        self, out: list[bytes], number: int, attributes: Mapping[str, Any]
    ) -> None:
        """Append the attributes, each as field `number`, to `out`."""
        cache = self._attributes
        # BoundedAttributes iterates through the Mapping ABC, one Python call
        # per key; the dict inside it does not.
        plain: Mapping[str, Any] = (
            attributes if type(attributes) is dict else getattr(attributes, "_dict", attributes)
        )
        for key, value in plain.items():
            # Only strings are kept: they are most of ravi's attributes, and
            # True == 1 == 1.0 would share an entry.
            if type(value) is not str:
                out.append(_field(number, _key_value(key, value)))
                continue
            if key == MESSAGE_ID:
                # Unique to each span: keeping it would only churn the cache.
                out.append(self._text(number, key, value))
                continue
            entry = (number, key, value)
            encoded = cache.get(entry)
            if encoded is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                encoded = cache[entry] = self._text(number, key, value)
            out.append(encoded)

    def _text(self, number: int, key: str, value: str) -> bytes:
        """A string attribute as field `number`: what `_key_value` writes, its key kept encoded.

        Values seen once (a message id) cost this every time.
        """
        head = self._keys.get((number, key))
        if head is None:
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            head = self._keys[number, key] = (_varint(number << 3 | 2), _field(1, key.encode()))
        tag, key_field = head
        text = value.encode()
        size = len(text)
        whole = len(key_field) + size + 4
        if whole < 0x80:
            # Every length fits one byte: KeyValue{key, value: AnyValue{string_value}}.
            return b"".join(
                (tag, _SMALL[whole], key_field, bytes((0x12, size + 2, 0x0A, size)), text)
            )
        return _field(number, key_field + _field(2, _field(1, text)))

    def _resource(self, resource: Resource) -> bytes:
        known = self._resources.get(id(resource))
        if known is None or known[0] is not resource:
            known = (resource, _field(1, self._attributes_of(1, resource.attributes)))
            self._resources[id(resource)] = known
        return known[1]

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        known = self._scopes.get(id(scope))
        if known is None or known[0] is not scope:
            body = b""
            if scope is not None:
                body = _field(1, scope.name.encode())
                if scope.version:
                    body += _field(2, scope.version.encode())
                if scope.attributes:
                    body += self._attributes_of(3, scope.attributes)
            known = (scope, _field(1, body))
            self._scopes[id(scope)] = known
        return known[1]


def _status(status: Status) -> bytes:
    body = b""
    if status.description:
        body += _field(2, status.description.encode())
    if status.status_code.value:
        body += b"\x18" + _varint(status.status_code.value)
    return _field(15, body)


class OtlpSpanExporter(OTLPSpanExporter):
    """OtlpSpanExporter is the SDK's OTLP/gRPC span exporter with ravi's faster encoding.

    It takes the SDK exporter's arguments and OTEL_EXPORTER_OTLP_* settings,
    and exports SDK spans as well as spans `EncodingSpanProcessor` encoded.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = SpanEncoder()
        self.direct: tuple[Resource, InstrumentationScope] | None = None
        """The resource and scope of spans queued as bytes (`EncodingSpanProcessor.direct`)."""
        # The request goes out as the bytes written here, not parsed into the
        # SDK's message to be serialized again (upb, a few µs per span with
        # the GIL held). A reconnect makes its client with `_stub` too.
        self._stub = _EncodedStub
        # The SDK types `_channel` and `_client` as None until made: both are made.
        self._client = _EncodedStub(self._channel)  # type: ignore[assignment, arg-type]

    def _encoded(self, item: ReadableSpan | EncodedSpan | bytes) -> EncodedSpan:
        if isinstance(item, bytes):
            assert self.direct is not None, "spans queued as bytes without a direct path"
            return EncodedSpan(self.direct[0], self.direct[1], item)
        if isinstance(item, EncodedSpan):
            return item
        return self.encoder.encoded(item)

    def _translate_data(  # type: ignore[override]
        self, data: Sequence[ReadableSpan | EncodedSpan | bytes]
    ) -> bytes:
        """The `ExportTraceServiceRequest` bytes `_EncodedStub` sends."""
        direct = self.direct
        if direct is not None and all(type(item) is bytes for item in data):
            # Only spans of the direct path: one resource and scope, no grouping.
            return self.encoder.resource_spans(direct[0], [(direct[1], data)])  # type: ignore[list-item]
        return self.encoder.request([self._encoded(item) for item in data])


class _EncodedStub:
    """TraceService's client, for requests already written as bytes."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )


class EncodingSpanProcessor(BatchSpanProcessor):
    """EncodingSpanProcessor is the SDK's batch processor, encoding spans where they end.

    The SDK's processor hands span objects to its export thread, which encodes
    them there; on a loaded event loop that thread and the loop then pass the
    GIL back and forth, which cost more than the encoding itself (measured in
    docs/performance.md, "The cost of tracing"). Spans of the direct path are
    encoded on the thread that ended them, `ENCODE_BATCH` at a time: one
    after another in a tight loop the encoder's code and caches stay warm,
    and on a busy node that costs about half of encoding each span as it ends.
    The export thread is left the batching and the gRPC call, which runs
    without the GIL; it encodes only what waits when its timer fires or on a
    flush or shutdown, so a trickle of spans is exported as the SDK's would
    be. Batch size, queue size and delays are the SDK's, from the standard
    OTEL_BSP_* settings.
    """

    def __init__(self, exporter: OtlpSpanExporter, *, max_queue_size: int | None = None) -> None:
        super().__init__(exporter, max_queue_size=max_queue_size)
        self._encoder = exporter.encoder
        self._encoded = exporter.encoder.encoded

    def direct(self, resource: Resource, scope: InstrumentationScope) -> Callable[[Any], None]:
        """The function that queues spans of one resource and scope made without the SDK.

        They have `ReadableSpan`'s fields and are sampled. Each is queued as
        its bytes alone: objects the garbage collector need not visit while
        they wait for the export thread.
        """
        exporter: OtlpSpanExporter = self.span_exporter
        exporter.direct = (resource, scope)
        batches = self._batch_processor
        emit = batches.emit
        encode = self._encoder.span
        full, batch_size = batches._max_queue_size, batches._max_export_batch_size
        # No more than an export batch waits unencoded: a small OTEL_BSP_MAX_EXPORT_BATCH_SIZE
        # still exports as soon as that many spans ended.
        encode_batch = min(ENCODE_BATCH, batch_size)
        ended: deque[Any] = deque()
        if hasattr(os, "register_at_fork"):
            # As the SDK's processor drops its queue in a forked child.
            os.register_at_fork(after_in_child=ended.clear)

        def encode_ended() -> None:
            # Any thread may end spans and encode them, so each takes one span
            # at a time from the deque, which is thread safe.
            waiting = batches._queue
            while True:
                try:
                    span = ended.popleft()
                except IndexError:
                    break
                data = encode(span)
                if len(waiting) >= full:
                    # The SDK's emit logs and counts the drop. Spans that ended
                    # before a shutdown are still exported by it.
                    emit(data)  # type: ignore[arg-type]
                else:
                    waiting.appendleft(data)
            if len(waiting) >= batch_size and not batches._worker_awaken.is_set():
                batches._worker_awaken.set()

        export = batches._export

        def export_ended(strategy: BatchExportStrategy) -> None:
            # A wake-up for a full batch finds the ended spans encoded already;
            # the timer, a flush and shutdown encode those still waiting.
            if strategy is not BatchExportStrategy.EXPORT_WHILE_BATCH_EXCEEDS_THRESHOLD:
                encode_ended()
            export(strategy)

        batches._export = export_ended  # type: ignore[assignment]

        def queue(span: Any) -> None:
            # The SDK's emit, less what costs a microsecond a span on a busy
            # node (a getpid system call, for a fork that the at-fork handlers
            # take care of).
            if batches._shutdown:
                emit(span)  # logged and counted as the SDK does, then dropped
                return
            ended.append(span)
            if len(ended) >= encode_batch:
                encode_ended()

        return queue
