"""The mesh commands of the `ravi` command line: `ravi node` and its clients."""

from __future__ import annotations

import asyncio
import base64
import importlib
import inspect
import json
import signal
import sys
import tomllib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio
import typer
from google.protobuf import json_format

from ravi._agent import BaseAgent
from ravi._host import new_message_id
from ravi._interceptors import Interceptor
from ravi._serialization import JSON, PROTOBUF, registry
from ravi._subscriptions import TypeSubscription
from ravi.errors import RaviError, from_grpc_error
from ravi.integrations.runtime.grpc import GrpcRuntime, PeerDiscovery, TlsConfig
from ravi.integrations.runtime.grpc._peers import dns_target
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2
from ravi.runtime import BaseRuntime

if TYPE_CHECKING:
    from ravi.telemetry import Telemetry

# The packages whose protobuf messages the client commands can print by name.
_KNOWN_PROTOS = ("ravi.examples.v1.examples_pb2", "ravi.conformance.v1.conformance_pb2")


T = TypeVar("T")


class UsageError(Exception):
    """A command line or config file that cannot work; printed without a traceback."""


def run_command(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning its errors into one line and an exit code.

    A usage error exits 2; a ravi error (a service that cannot be reached, a
    refused registration) exits 1.
    """
    try:
        return asyncio.run(coroutine)
    except UsageError as error:
        typer.echo(f"ravi: {error}", err=True)
        raise typer.Exit(2) from None
    except RaviError as error:
        typer.echo(f"ravi: {error}", err=True)
        raise typer.Exit(1) from None


@dataclass
class NodeConfig:
    """What `ravi node` needs, from flags and/or a TOML file (flags win)."""

    listen: str = "127.0.0.1:0"
    node_id: str | None = None
    advertise: str | None = None
    peers: dict[str, str] = field(default_factory=dict)
    peer_dns_interval: float = 10.0
    agents: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    setup_args: dict[str, str] = field(default_factory=dict)
    subscriptions: dict[str, str] = field(default_factory=dict)
    imports: list[str] = field(default_factory=list)
    token: str | None = None
    peer_token: str | None = None
    health_without_auth: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    peer_tls_ca: str | None = None
    peer_tls_cert: str | None = None
    peer_tls_key: str | None = None
    peer_tls_server_name: str | None = None
    max_message_bytes: int = 4 * 1024 * 1024
    mailbox_capacity: int = 10_000
    default_timeout: float = 60.0
    grace_period: float = 5.0
    app_dir: str = "."
    wait_for_peers: float = 0.0
    otlp_endpoint: str | None = None

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from exc
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"{path}: unknown keys {', '.join(unknown)}")
        return cls(**data)


def pairs(values: Sequence[str], what: str) -> dict[str, str]:
    """Parse repeated NAME=VALUE options."""
    parsed: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UsageError(f"{what} must be NAME=VALUE, got {value!r}")
        parsed[name] = rest
    return parsed


def _import(path: str) -> Any:
    module_name, sep, attribute = path.partition(":")
    if not sep:
        raise UsageError(f"expected module:attribute, got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name}: {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"{module_name} has no {attribute}") from None


def use_app_dir(config: NodeConfig) -> None:
    """Like uvicorn's --app-dir: find agents named by import path in the project."""
    app_dir = str(Path(config.app_dir).resolve())
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)


async def _setup(runtime: BaseRuntime, config: NodeConfig) -> None:
    for module in config.imports:
        importlib.import_module(module)
    for agent_type, path in config.agents.items():
        cls = _import(path)
        if not (isinstance(cls, type) and issubclass(cls, BaseAgent)):
            raise UsageError(f"{path} is not a BaseAgent subclass")
        await cls.register(runtime, agent_type)
    for path in config.setup:
        function = _import(path)
        result = function(runtime, **_accepted(function, config.setup_args))
        if inspect.isawaitable(result):
            await result
    for topic_type, agent_type in config.subscriptions.items():
        await runtime.add_subscription(TypeSubscription(topic_type, agent_type))


def _accepted(function: Callable[..., Any], arguments: dict[str, str]) -> dict[str, str]:
    """The --setup-arg values a setup function takes (every one with **kwargs)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return arguments
    names = {p.name for p in parameters}
    return {k: v for k, v in arguments.items() if k in names}


def _tls(
    cert: str | None, key: str | None, ca: str | None, server_name: str | None = None
) -> TlsConfig | None:
    if not (cert or key or ca):
        return None
    return TlsConfig(
        cert_file=Path(cert) if cert else None,
        key_file=Path(key) if key else None,
        ca_file=Path(ca) if ca else None,
        server_name=server_name,
    )


def build_runtime(config: NodeConfig, interceptors: Sequence[Interceptor] = ()) -> GrpcRuntime:
    host, _, port = config.listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen must be HOST:PORT, got {config.listen!r}")
    for name, address in config.peers.items():
        try:
            dns_target(address)
        except ValueError as exc:
            raise UsageError(f"--peer {name}: {exc}") from None
    if config.peer_dns_interval <= 0:
        raise UsageError(f"--peer-dns-interval must be positive, got {config.peer_dns_interval}")
    return GrpcRuntime(
        host,
        int(port),
        config.peers,
        node_id=config.node_id,
        advertise=config.advertise,
        token=config.token,
        peer_token=config.peer_token,
        tls=_tls(config.tls_cert, config.tls_key, config.tls_client_ca),
        peer_tls=_tls(
            config.peer_tls_cert,
            config.peer_tls_key,
            config.peer_tls_ca,
            config.peer_tls_server_name,
        ),
        health_without_auth=config.health_without_auth,
        default_timeout=config.default_timeout,
        mailbox_capacity=config.mailbox_capacity,
        max_message_bytes=config.max_message_bytes,
        grace_period=config.grace_period,
        interceptors=interceptors,
        discovery=PeerDiscovery(interval=config.peer_dns_interval),
    )


def _telemetry(config: NodeConfig) -> Telemetry | None:
    node_id = config.node_id or f"node-{config.listen}"
    try:
        from ravi.telemetry import configure  # noqa: PLC0415 - an optional extra
    except ImportError as missing:
        if config.otlp_endpoint:
            raise UsageError(str(missing)) from None
        return None
    return configure(node_id, endpoint=config.otlp_endpoint)


async def run_node(config: NodeConfig, *, announce: Callable[[str], None]) -> None:
    """Run a node until SIGTERM or SIGINT, then stop it gracefully."""
    telemetry = _telemetry(config)
    runtime = build_runtime(config, telemetry.interceptors if telemetry else ())
    if telemetry is not None:
        telemetry.observe(
            runtime.mailbox_depths, lambda: len([p for p in runtime.peers() if p.connected])
        )
    await _setup(runtime, config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await runtime.start()
    if config.wait_for_peers > 0:
        try:
            await runtime.wait_for_peers(timeout=config.wait_for_peers)
        except TimeoutError:
            down = [p.name for p in runtime.peers() if not p.connected]
            raise UsageError(
                f"peers not reachable after {config.wait_for_peers} s: {down}"
            ) from None
    announce(f"ravi node {runtime.node_id} serving on {runtime.address}")
    try:
        await stopping.wait()
    finally:
        await runtime.stop()
        if telemetry is not None:
            telemetry.shutdown()


# --- clients -------------------------------------------------------------------------


def _channel(address: str, ca: str | None) -> grpc.aio.Channel:
    if ca:
        return grpc.aio.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
        )
    return grpc.aio.insecure_channel(address)


def _metadata(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def payload_from_json(type_name: str, text: str) -> types_pb2.Payload:
    """A JSON payload as typed on the command line: the node decodes it by its type name."""
    try:
        json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--json is not JSON: {exc}") from exc
    return types_pb2.Payload(type=type_name, content_type=JSON, data=text.encode())


def payload_to_json(payload: types_pb2.Payload) -> Any:
    """A payload as JSON: decoded by type when this process knows it."""
    for module in _KNOWN_PROTOS:
        importlib.import_module(module)
    if payload.content_type == JSON:
        return {"type": payload.type, "value": json.loads(payload.data)}
    cls = registry.lookup(payload.type)
    if cls is not None and payload.content_type == PROTOBUF:
        message = registry.decode(payload.type, payload.content_type, payload.data)
        return {"type": payload.type, "value": json_format.MessageToDict(message)}
    return {"type": payload.type, "data_base64": base64.b64encode(payload.data).decode()}


async def _unary(call: Callable[[], Any]) -> Any:
    try:
        return await call()
    except grpc.aio.AioRpcError as error:
        raise _client_error(from_grpc_error(error)) from None


def _client_error(error: RaviError) -> UsageError:
    reason = f" ({error.reason})" if error.reason else ""
    return UsageError(f"{error.code.name}{reason}: {error.message}")


async def send(
    address: str,
    recipient: str,
    type_name: str,
    text: str,
    *,
    token: str | None,
    timeout: float,
    ca: str | None,
) -> dict[str, Any]:
    agent_type, _, key = recipient.partition("/")
    request = agent_service_pb2.SendRequest(
        recipient=types_pb2.AgentId(type=agent_type, key=key),
        envelope=types_pb2.Envelope(
            message_id=new_message_id(), payload=payload_from_json(type_name, text)
        ),
    )
    async with _channel(address, ca) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        response = await _unary(
            lambda: stub.Send(request, timeout=timeout, metadata=_metadata(token))
        )
    reply = payload_to_json(response.result) if response.HasField("result") else None
    return {"node_id": response.node_id, "result": reply}


async def publish(
    address: str,
    topic: str,
    type_name: str,
    text: str,
    *,
    token: str | None,
    timeout: float,
    ca: str | None,
) -> dict[str, Any]:
    topic_type, _, source = topic.partition("/")
    request = agent_service_pb2.PublishRequest(
        topic=types_pb2.TopicId(type=topic_type, source=source),
        envelope=types_pb2.Envelope(
            message_id=new_message_id(), payload=payload_from_json(type_name, text)
        ),
    )
    async with _channel(address, ca) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        response = await _unary(
            lambda: stub.Publish(request, timeout=timeout, metadata=_metadata(token))
        )
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)


async def describe(address: str, *, token: str | None, timeout: float, ca: str | None) -> Any:
    async with _channel(address, ca) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        response = await _unary(
            lambda: stub.Describe(
                agent_service_pb2.DescribeRequest(), timeout=timeout, metadata=_metadata(token)
            )
        )
    return json_format.MessageToDict(response.node)


async def subscribe(
    address: str,
    filters: list[types_pb2.TopicFilter],
    *,
    count: int | None,
    token: str | None,
    timeout: float,
    ca: str | None,
    emit: Callable[[Any], None],
) -> None:
    """Print the node description, then events, until `count` events or `timeout`."""
    request = agent_service_pb2.SubscribeRequest(filters=filters, subscriber_id="ravi-cli")
    received = 0
    async with _channel(address, ca) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        stream = stub.Subscribe(request, timeout=timeout, metadata=_metadata(token))
        try:
            async for item in stream:
                if item.HasField("node"):
                    emit({"node": json_format.MessageToDict(item.node)})
                    continue
                event = item.event
                emit(
                    {
                        "topic": f"{event.topic.type}/{event.topic.source}",
                        "origin": event.origin_node_id,
                        "message_id": event.envelope.message_id,
                        "metadata": dict(event.envelope.metadata),
                        "payload": payload_to_json(event.envelope.payload),
                    }
                )
                received += 1
                if count is not None and received >= count:
                    stream.cancel()
                    return
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED and count is None:
                return
            raise _client_error(from_grpc_error(error)) from None


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=None, ensure_ascii=False) + "\n")
    sys.stdout.flush()
