"""Message serialization for the networked runtimes.

A message travels as a self-describing payload: a type name, a content type and
bytes. Protobuf messages use their full protobuf name and travel as binary
protobuf (or canonical protobuf JSON); dataclasses and pydantic models travel as
JSON under a name registered once, explicitly with `message_type("name")` or
else as "module.QualifiedName". Names never collide: registering a second class
under a taken name is an error. Plain JSON values (strings, numbers, booleans,
lists and dicts of them) travel as "google.protobuf.Value" in its JSON form,
which every language can read.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from ravi.errors import BadPayload
from ravi.mesh.v1.contract import MAX_NESTING_DEPTH

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
JSON_VALUE = "google.protobuf.Value"
_JSON_NATIVE = frozenset({str, int, float, bool, list, dict})
_MEDIA_TYPES = {PROTOBUF: PROTOBUF, JSON: JSON}
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
"""JSON strings (skipped whole) and the brackets that nest, for the depth check."""


def media_type(content_type: str) -> str:
    """The content type a payload names, as PROTOBUF or JSON (types.proto, Payload).

    Type and subtype match case-insensitively and parameters are allowed, but a
    charset other than UTF-8 is refused: "application/json; charset=utf-8" is JSON.

    Raises:
        BadPayload: neither encoding, or a charset other than UTF-8.
    """
    known = _MEDIA_TYPES.get(content_type)
    if known is not None:
        return known
    essence, _, parameters = content_type.partition(";")
    known = _MEDIA_TYPES.get(essence.strip().lower())
    if known is None:
        raise BadPayload(
            f"content type {content_type[:100]!r} is not supported; use {PROTOBUF!r} or {JSON!r}"
        )
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise BadPayload(f"content type {content_type[:100]!r}: only UTF-8 JSON is accepted")
    return known


def check_json_depth(data: bytes) -> None:
    """Refuse JSON nested deeper than MAX_NESTING_DEPTH arrays and objects (BAD_PAYLOAD).

    Counting is only needed when there are more brackets than the limit, which keeps
    ordinary payloads on the fast path.
    """
    if data.count(b"[") + data.count(b"{") <= MAX_NESTING_DEPTH:
        return
    depth = 0
    for token in _JSON_TOKENS.finditer(data):
        first = token.group()[:1]
        if first in (b"[", b"{"):
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                raise BadPayload(f"JSON nests deeper than {MAX_NESTING_DEPTH} arrays and objects")
        elif first in (b"]", b"}"):
            depth -= 1


C = TypeVar("C", bound=type)


@dataclass(frozen=True, slots=True)
class EncodedMessage:
    """EncodedMessage is a message as it travels: type name, content type and bytes."""

    type: str
    content_type: str
    data: bytes


class _Codec(ABC):
    __slots__ = ("cls", "name")

    def __init__(self, cls: type, name: str) -> None:
        self.cls = cls
        self.name = name

    @abstractmethod
    def encode(self, message: Any, content_type: str | None) -> EncodedMessage: ...

    @abstractmethod
    def decode(self, content_type: str, data: bytes) -> Any: ...


class _ProtobufCodec(_Codec):
    __slots__ = ()

    def encode(self, message: Any, content_type: str | None) -> EncodedMessage:
        if content_type in (None, PROTOBUF):
            return EncodedMessage(self.name, PROTOBUF, message.SerializeToString())
        if content_type == JSON:
            text = json_format.MessageToJson(message, indent=None)
            return EncodedMessage(self.name, JSON, text.encode())
        raise BadPayload(f"content type {content_type!r} is not supported for {self.name}")

    def decode(self, content_type: str, data: bytes) -> Any:
        message = self.cls()
        try:
            if content_type == PROTOBUF:
                message.ParseFromString(data)
            else:
                check_json_depth(data)
                json_format.Parse(data, message, max_recursion_depth=MAX_NESTING_DEPTH + 1)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
            raise BadPayload(f"cannot decode {self.name} from {content_type}: {exc}") from exc
        return message


class _JsonCodec(_Codec):
    __slots__ = ("_adapter",)

    def __init__(self, cls: type, name: str) -> None:
        super().__init__(cls, name)
        self._adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(cls)

    def encode(self, message: Any, content_type: str | None) -> EncodedMessage:
        if content_type not in (None, JSON):
            raise BadPayload(f"{self.name} travels as {JSON}, not {content_type!r}")
        return EncodedMessage(self.name, JSON, self._adapter.dump_json(message))

    def decode(self, content_type: str, data: bytes) -> Any:
        if content_type != JSON:
            raise BadPayload(f"{self.name} travels as {JSON}, not {content_type!r}")
        check_json_depth(data)
        try:
            return self._adapter.validate_json(data, strict=False)
        except pydantic.ValidationError as exc:
            raise BadPayload(
                f"cannot decode {self.name} from {JSON}: {exc.error_count()} error(s): "
                f"{_first_error(exc)}"
            ) from exc


def _first_error(exc: pydantic.ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    location = ".".join(str(part) for part in error["loc"]) or "message"
    return f"{location}: {error['msg']}"


def _is_json_class(cls: type) -> bool:
    return dataclasses.is_dataclass(cls) or (
        isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)
    )


class MessageRegistry:
    """MessageRegistry maps message classes to type names and encodes them.

    One registry is shared by the process (`registry`); runtimes use it to put
    messages on the wire and to decode what arrives.
    """

    def __init__(self) -> None:
        self._by_class: dict[type, _Codec] = {}
        self._by_name: dict[str, _Codec] = {}
        self._lock = threading.Lock()

    def register(self, cls: type, name: str | None = None) -> str:
        """Register a message class (once) and return its type name.

        Protobuf classes always use their full protobuf name. A dataclass or
        pydantic model uses `name`, or "module.QualifiedName" without one.

        Raises:
            TypeError: the class is not a message class, the name is taken by
                another class, or the class is registered under another name.
        """
        with self._lock:
            codec = self._by_class.get(cls)
            if codec is not None:
                if name is not None and name != codec.name:
                    raise TypeError(
                        f"{cls.__qualname__} is registered as {codec.name!r} already; "
                        f"it cannot also be {name!r}"
                    )
                return codec.name
            codec = self._make_codec(cls, name)
            taken = self._by_name.get(codec.name)
            if taken is not None:
                raise TypeError(
                    f"message type name {codec.name!r} is taken by "
                    f"{taken.cls.__module__}.{taken.cls.__qualname__}"
                )
            self._by_class[cls] = codec
            self._by_name[codec.name] = codec
            return codec.name

    def _make_codec(self, cls: type, name: str | None) -> _Codec:
        if isinstance(cls, type) and issubclass(cls, ProtoMessage):
            full_name: str = cls.DESCRIPTOR.full_name
            if name is not None and name != full_name:
                raise TypeError(
                    f"{cls.__qualname__} is a protobuf message: its type name is its full "
                    f"name {full_name!r}, not {name!r}"
                )
            return _ProtobufCodec(cls, full_name)
        if not _is_json_class(cls):
            raise TypeError(
                f"{cls!r} is not a message type: use a protobuf message, a dataclass "
                "or a pydantic model"
            )
        chosen = name if name is not None else f"{cls.__module__}.{cls.__qualname__}"
        if not chosen or not chosen.isprintable() or chosen != chosen.strip():
            raise TypeError(f"invalid message type name {chosen!r}")
        if _in_protobuf_pool(chosen):
            raise TypeError(f"message type name {chosen!r} is a protobuf message's name")
        return _JsonCodec(cls, chosen)

    def type_name(self, cls: type) -> str:
        """The type name of a message class, registering it on first use."""
        codec = self._by_class.get(cls)
        return codec.name if codec is not None else self.register(cls)

    def encode(self, message: Any, content_type: str | None = None) -> EncodedMessage:
        """Encode a message; `content_type` None picks the type's native encoding."""
        cls = type(message)
        if cls in _JSON_NATIVE:
            return _encode_json_value(message, content_type)
        codec = self._by_class.get(cls)
        if codec is None:
            try:
                self.register(cls)
            except TypeError as exc:
                raise BadPayload(str(exc)) from exc
            codec = self._by_class[cls]
        return codec.encode(message, content_type)

    def decode(self, type_name: str, content_type: str, data: bytes) -> Any:
        """Decode a payload into an instance of the class registered under `type_name`.

        Raises:
            BadPayload: the name is unknown, the content type is not supported, or
                the data does not decode.
        """
        if "/" in type_name:
            # A type URL, as google.protobuf.Any writes it, names the type after its last '/'.
            type_name = type_name.rpartition("/")[2]
        content_type = media_type(content_type)
        if type_name == JSON_VALUE:
            return _decode_json_value(content_type, data)
        codec = self._by_name.get(type_name) or self._protobuf_codec(type_name)
        if codec is None:
            raise BadPayload(f'unknown message type "{type_name[:200]}"')
        return codec.decode(content_type, data)

    def _protobuf_codec(self, type_name: str) -> _Codec | None:
        if not _in_protobuf_pool(type_name):
            return None
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
        cls = message_factory.GetMessageClass(descriptor)
        self.register(cls)
        return self._by_class[cls]

    def lookup(self, type_name: str) -> type | None:
        """The class registered under `type_name`, if any."""
        codec = self._by_name.get(type_name) or self._protobuf_codec(type_name)
        return codec.cls if codec is not None else None


def _encode_json_value(value: Any, content_type: str | None) -> EncodedMessage:
    if content_type not in (None, JSON):
        raise BadPayload(f"plain values travel as {JSON}, not {content_type!r}")
    try:
        data = json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise BadPayload(f"{type(value).__name__} value is not plain JSON: {exc}") from exc
    return EncodedMessage(JSON_VALUE, JSON, data)


def _decode_json_value(content_type: str, data: bytes) -> Any:
    if content_type != JSON:
        raise BadPayload(f"{JSON_VALUE} travels as {JSON}, not {content_type!r}")
    check_json_depth(data)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadPayload(f"cannot decode {JSON_VALUE} from {JSON}: {exc}") from exc


def _in_protobuf_pool(name: str) -> bool:
    try:
        descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return False
    return True


registry = MessageRegistry()
"""The process-wide message registry used by every runtime."""


def message_type(name: str) -> Callable[[C], C]:
    """Class decorator: register a dataclass or pydantic model under an explicit type name.

    The name is what other nodes and languages see in `Payload.type`, so choose a
    stable one (for example "billing.ChargeRequest"); it must not collide with
    another registered type.
    """

    def decorate(cls: C) -> C:
        registry.register(cls, name)
        return cls

    return decorate
