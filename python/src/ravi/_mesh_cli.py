"""The mesh commands of the `ravi` command line: `ravi node` and its clients."""

from __future__ import annotations

import asyncio
import base64
import importlib
import inspect
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
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
from ravi._mesh.discovery import dns_target
from ravi._options import SettingsError, build, option, read_config
from ravi._options import pairs as _pairs
from ravi._serialization import JSON, PROTOBUF, registry
from ravi._subscriptions import TypeSubscription
from ravi.errors import RaviError, from_grpc_error
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions, PeerDiscovery
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


@dataclass(kw_only=True)
class NodeConfig:
    """What `ravi node` needs besides GrpcRuntimeOptions: where it listens, its peers, its agents.

    Like GrpcRuntimeOptions, each field is a flag and a key of the `--config`
    TOML file (`ravi._options`).
    """

    listen: str = field(default="127.0.0.1:0", metadata=option("HOST:PORT to serve on."))
    peer: dict[str, str] = field(
        default_factory=dict,
        metadata=option(
            "A peer, NAME=HOST:PORT; with NAME=dns:HOST:PORT every address HOST resolves "
            "to is a peer (a headless Service), re-resolved every --peer-dns-interval seconds."
        ),
    )
    peer_dns_interval: float = field(
        default=PeerDiscovery.interval,
        metadata=option("Seconds between two resolutions of dns: peers."),
    )
    agent: dict[str, str] = field(
        default_factory=dict, metadata=option("Host an agent class, TYPE=module:Class.")
    )
    setup: list[str] = field(
        default_factory=list, metadata=option("Call module:function(runtime) to register agents.")
    )
    setup_arg: dict[str, str] = field(
        default_factory=dict, metadata=option("A keyword argument for the setup functions, K=V.")
    )
    subscribe: dict[str, str] = field(
        default_factory=dict,
        metadata=option("Subscribe an agent type, TOPIC_TYPE=AGENT_TYPE."),
    )
    imports: list[str] = field(
        default_factory=list,
        metadata=option("Import this module first (for the message types it registers)."),
    )
    app_dir: str = field(
        default=".", metadata=option("Where to import agents from (default: here).")
    )
    wait_for_peers: float = field(
        default=0.0,
        metadata=option("Announce readiness once every peer is connected (give up after S s)."),
    )
    otlp_endpoint: str | None = field(
        default=None, metadata=option("Export traces and metrics over OTLP/gRPC to this URL.")
    )
    options: GrpcRuntimeOptions = field(default_factory=GrpcRuntimeOptions)

    def __post_init__(self) -> None:
        if self.peer_dns_interval <= 0:
            raise ValueError(f"--peer-dns-interval must be positive, got {self.peer_dns_interval}")

    @classmethod
    def load(cls, config: Path | None, given: Mapping[str, Any]) -> NodeConfig:
        """The settings of `ravi node`: its flags (`given`) over its TOML file, if any.

        Raises:
            UsageError: a flag, the file or a value cannot configure a node.
        """
        try:
            data = read_config(config, cls, GrpcRuntimeOptions) if config else {}
            options = build(GrpcRuntimeOptions, given, data)
            node = build(cls, given, data)
        except SettingsError as error:
            raise UsageError(str(error)) from None
        node.options = options
        return node


def pairs(values: Sequence[str], what: str) -> dict[str, str]:
    """Parse repeated NAME=VALUE options."""
    try:
        return _pairs(values, what)
    except SettingsError as error:
        raise UsageError(str(error)) from None


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


def use_app_dir(config: NodeConfig | str) -> None:
    """Like uvicorn's --app-dir: find agents named by import path in the project."""
    app_dir = str(Path(config if isinstance(config, str) else config.app_dir).resolve())
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)


async def _setup(runtime: BaseRuntime, config: NodeConfig) -> None:
    for module in config.imports:
        importlib.import_module(module)
    for agent_type, path in config.agent.items():
        cls = _import(path)
        if not (isinstance(cls, type) and issubclass(cls, BaseAgent)):
            raise UsageError(f"{path} is not a BaseAgent subclass")
        await cls.register(runtime, agent_type)
    for path in config.setup:
        function = _import(path)
        result = function(runtime, **_accepted(function, config.setup_arg))
        if inspect.isawaitable(result):
            await result
    for topic_type, agent_type in config.subscribe.items():
        await runtime.add_subscription(TypeSubscription(topic_type, agent_type))


def _accepted(function: Callable[..., Any], arguments: dict[str, str]) -> dict[str, str]:
    """The --setup-arg values a setup function takes (every one with **kwargs)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return arguments
    names = {p.name for p in parameters}
    return {k: v for k, v in arguments.items() if k in names}


def build_runtime(config: NodeConfig, interceptors: Sequence[Interceptor] = ()) -> GrpcRuntime:
    host, _, port = config.listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen must be HOST:PORT, got {config.listen!r}")
    for name, address in config.peer.items():
        try:
            dns_target(address)
        except ValueError as exc:
            raise UsageError(f"--peer {name}: {exc}") from None
    return GrpcRuntime(
        host,
        int(port),
        config.peer,
        options=config.options,
        interceptors=interceptors,
        discovery=PeerDiscovery(interval=config.peer_dns_interval),
    )


def _telemetry(config: NodeConfig) -> Telemetry | None:
    node_id = config.options.node_id or f"node-{config.listen}"
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
