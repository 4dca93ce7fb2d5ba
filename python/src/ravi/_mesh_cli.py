"""The mesh commands of the `ravi` command line: `ravi node` and its clients.

The client commands print what the node answered as protobuf JSON (camelCase
field names, as grpcurl prints it, every field with its default included), one
JSON document per line, with each payload decoded: `{"type": NAME, "value":
MESSAGE}` when its type is known here or it is JSON, else the payload itself
(`{"type", "contentType", "data"}`, data in base64). `ravi-go` and `ravi-node`
print the same shapes (docs/interop.md, "One command line in three languages").
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import grpc
import grpc.aio
import typer
from google.protobuf import json_format
from google.protobuf.message import Message

from ravi._agent import BaseAgent
from ravi._cli_errors import Announce, UsageError, user_code_failed
from ravi._ids import new_message_id
from ravi._interceptors import Interceptor
from ravi._mesh.discovery import dns_target
from ravi._options import SettingsError, build, option, read_config
from ravi._options import pairs as _pairs
from ravi._serialization import JSON, PROTOBUF, registry
from ravi._subscriptions import TypeSubscription
from ravi.errors import Code, RaviError, Unavailable, from_grpc_error
from ravi.integrations.runtime.grpc import GrpcRuntime, GrpcRuntimeOptions, PeerDiscovery
from ravi.mesh.v1 import agent_service_pb2, agent_service_pb2_grpc, types_pb2
from ravi.runtime import BaseRuntime

if TYPE_CHECKING:
    from ravi.telemetry import Telemetry

# The packages whose protobuf messages the client commands can print by name.
_KNOWN_PROTOS = ("ravi.examples.v1.examples_pb2", "ravi.conformance.v1.conformance_pb2")


@dataclass(kw_only=True)
class NodeConfig:
    """What `ravi node` needs besides GrpcRuntimeOptions: where it listens, its peers, its agents.

    Like GrpcRuntimeOptions, each field is a flag and a key of the `--config`
    TOML file (`ravi._options`).
    """

    listen: str = field(
        default="127.0.0.1:0",
        metadata=option("Serve on this address (port 0: any free port).", metavar="HOST:PORT"),
    )
    peer: dict[str, str] = field(
        default_factory=dict,
        metadata=option(
            "A peer; with dns:HOST:PORT every address HOST resolves to is a peer (a headless "
            "Service), resolved again every --peer-dns-interval seconds.",
            metavar="NAME=HOST:PORT",
        ),
    )
    peer_dns_interval: float = field(
        default=PeerDiscovery.interval,
        metadata=option("Seconds between two resolutions of dns: peers.", metavar="SECONDS"),
    )
    agent: dict[str, str] = field(
        default_factory=dict,
        metadata=option("Host an agent class under an agent type.", metavar="TYPE=MODULE:CLASS"),
    )
    setup: list[str] = field(
        default_factory=list,
        metadata=option(
            "Call this function with the runtime, to register agents.", metavar="MODULE:FUNCTION"
        ),
    )
    setup_arg: dict[str, str] = field(
        default_factory=dict,
        metadata=option("A keyword argument for the --setup functions.", metavar="NAME=VALUE"),
    )
    subscribe: dict[str, str] = field(
        default_factory=dict,
        metadata=option(
            "Deliver the events of a topic type to an agent type (keyed by topic source).",
            metavar="TOPIC_TYPE=AGENT_TYPE",
        ),
    )
    imports: list[str] = field(
        default_factory=list,
        metadata=option(
            "Import this module first (for the message types it registers).", metavar="MODULE"
        ),
    )
    app_dir: str = field(
        default=".",
        metadata=option("Where to import agents and setup functions from.", metavar="DIR"),
    )
    wait_for_peers: float = field(
        default=0.0,
        metadata=option(
            "Announce readiness once every peer is connected; fail after this many seconds "
            "(0: do not wait).",
            metavar="SECONDS",
        ),
    )
    otlp_endpoint: str | None = field(
        default=None,
        metadata=option("Export traces and metrics over OTLP/gRPC to this URL.", metavar="URL"),
    )
    verbose: bool = field(
        default=False, metadata=option("Log debug lines too (each retry to reach a peer).")
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
            where = f"{config}: " if config and not str(error).startswith(str(config)) else ""
            raise UsageError(f"{where}{error}") from None
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
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"--imports {module}: cannot import it: {exc}") from None
    for agent_type, path in config.agent.items():
        cls = _import(path)
        if not (isinstance(cls, type) and issubclass(cls, BaseAgent)):
            raise UsageError(f"--agent {agent_type}={path}: not a BaseAgent subclass")
        await cls.register(runtime, agent_type)
    for path in config.setup:
        function = _import(path)
        try:
            result = function(runtime, **_accepted(function, config.setup_arg))
            if inspect.isawaitable(result):
                await result
        except (RaviError, UsageError):
            raise
        except Exception as error:  # the user's code: one line saying where it failed
            raise user_code_failed(f"--setup {path}", error) from None
    for topic_type, agent_type in config.subscribe.items():
        await runtime.add_subscription(TypeSubscription(topic_type, agent_type))


def _accepted(function: Callable[..., Any], arguments: dict[str, str]) -> dict[str, str]:
    """The --setup-arg values a setup function takes (every one with **kwargs)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return arguments
    names = {p.name for p in parameters}
    return {k: v for k, v in arguments.items() if k in names}


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]/]+)):(?P<port>\d{1,5})$")


def host_port(text: str, flag: str, *, name: str = "") -> tuple[str, int]:
    """Split HOST:PORT (or [IPV6]:PORT), with a message that says what is wrong.

    The same rule in `ravi-go` and `ravi-node`: no scheme, and a port always
    (grpc would dial 443 for a bare host). `name` is the NAME= a peer's value
    starts with, as typed.
    """
    given = f"{flag} {name}"
    _, sep, rest = text.partition("://")
    if sep:
        rest = rest.rstrip("/")
        hint = f": try {given}{rest}" if _HOST_PORT.match(rest) else ""
        raise UsageError(f"{flag} takes HOST:PORT, not a URL ({given}{text}){hint}")
    found = _HOST_PORT.match(text)
    if found is None or int(found["port"]) > 65535:
        if text and ":" not in text:
            raise UsageError(f"{given}{text} has no port: give HOST:PORT, such as {text}:50051")
        raise UsageError(f"{flag} must be HOST:PORT, got {given}{text}")
    return found["v6"] or found["host"], int(found["port"])


def build_runtime(config: NodeConfig, interceptors: Sequence[Interceptor] = ()) -> GrpcRuntime:
    host, port = host_port(config.listen, "--listen")
    for name, address in config.peer.items():
        try:
            if dns_target(address) is None:
                host_port(address, "--peer", name=f"{name}=")
        except ValueError as exc:
            raise UsageError(f"--peer {name}: {exc}") from None
    return GrpcRuntime(
        f"[{host}]" if ":" in host else host,
        port,
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


class _LogLines(logging.Formatter):
    """`ravi NODE_ID LEVEL: message`, as `ravi-go` and `ravi-node` write theirs."""

    _LEVELS: ClassVar[dict[str, str]] = {"WARNING": "warn", "CRITICAL": "error"}

    def __init__(self, node_id: Callable[[], str]) -> None:
        super().__init__()
        self._node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        level = self._LEVELS.get(record.levelname, record.levelname.lower())
        line = f"ravi {self._node_id()} {level}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _log_to_stderr(runtime: GrpcRuntime, config: NodeConfig) -> None:
    """The node's log lines on stderr: peers connecting, dropping, unreachable, and worse."""

    def node_id() -> str:
        try:
            return runtime.node_id
        except RaviError:  # port 0 and no --node-id: known once it listens
            return config.listen

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogLines(node_id))
    root = logging.getLogger("ravi")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if config.verbose else logging.INFO)
    root.propagate = False


def _describe_node(runtime: GrpcRuntime) -> list[str]:
    """The lines under the serving line: what the node hosts and whom it peers with."""
    info = runtime._node.node_info()
    agents = ", ".join(
        f"{t.agent_type} ({', '.join(sorted(t.handled_types)) or 'no handlers'})"
        for t in sorted(info.agent_types, key=lambda t: t.agent_type)
    )
    peers = ", ".join(sorted(f"{p.name} at {p.address}" for p in runtime.peers() if not p.learned))
    return [f"  agents: {agents or 'none'}", f"  peers: {peers or 'none'}"]


async def run_node(config: NodeConfig, *, announce: Announce) -> None:
    """Run a node until SIGTERM or SIGINT, then stop it gracefully (`_cli_errors.run_service`)."""
    telemetry = _telemetry(config)
    runtime = build_runtime(config, telemetry.interceptors if telemetry else ())
    _log_to_stderr(runtime, config)
    if telemetry is not None:
        telemetry.observe(
            runtime.mailbox_depths,
            lambda: len([p for p in runtime.peers() if p.connected]),
            runtime.active_agents,
        )
    stopping = asyncio.Event()
    received: list[str] = []

    def stop(signum: signal.Signals) -> None:
        received.append(signum.name)
        stopping.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    try:
        await _setup(runtime, config)
        await runtime.start()
        if config.wait_for_peers > 0:
            try:
                await runtime.wait_for_peers(timeout=config.wait_for_peers)
            except TimeoutError as error:
                raise UsageError(str(error)) from None
        announce(f"ravi node {runtime.node_id} serving on {runtime.address}")
        for line in _describe_node(runtime):
            typer.echo(line)
        await stopping.wait()
        typer.echo(
            f"ravi node {runtime.node_id} stopping ({received[0] if received else 'asked to'}): "
            f"calls in flight get up to {config.options.grace_period:g} s"
        )
    finally:
        await runtime.stop()
        if telemetry is not None:
            telemetry.shutdown()
    typer.echo(f"ravi node {runtime.node_id} stopped")


# --- clients -------------------------------------------------------------------------


def _channel(address: str, ca: str | None) -> grpc.aio.Channel:
    host, port = host_port(address, "--addr")
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if ca:
        try:
            roots = Path(ca).read_bytes()
        except OSError as error:
            raise UsageError(f"--tls-ca {ca}: {(error.strerror or str(error)).lower()}") from None
        return grpc.aio.secure_channel(
            target, grpc.ssl_channel_credentials(root_certificates=roots)
        )
    return grpc.aio.insecure_channel(target)


def _metadata(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def payload_from_json(type_name: str, text: str) -> types_pb2.Payload:
    """A JSON payload as typed on the command line: the node decodes it by its type name."""
    try:
        json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--json is not JSON: {exc}") from exc
    return types_pb2.Payload(type=type_name, content_type=JSON, data=text.encode())


def message_json(message: Message) -> Any:
    """A protobuf message as the commands print it: protobuf JSON, defaults included."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def payload_json(payload: types_pb2.Payload) -> Any:
    """A payload decoded when this process knows its type or it is JSON, else as it came."""
    for module in _KNOWN_PROTOS:
        importlib.import_module(module)
    try:
        if payload.content_type == JSON:
            return {"type": payload.type, "value": json.loads(payload.data)}
        if payload.content_type == PROTOBUF and registry.lookup(payload.type) is not None:
            message = registry.decode(payload.type, payload.content_type, payload.data)
            if isinstance(message, Message):
                return {"type": payload.type, "value": message_json(message)}
    except (ValueError, RaviError):
        pass  # printed as it came: the bytes in base64
    return json_format.MessageToDict(payload)


def _client_error(error: grpc.aio.AioRpcError, address: str) -> RaviError:
    converted = from_grpc_error(error)
    refused = "Failed to connect to remote host: "
    if converted.code is Code.UNAVAILABLE and refused in converted.message:
        cause = converted.message.rpartition(refused)[2].lower()
        return type(converted)(f"cannot reach a node at {address}: {cause}")
    return converted


async def _unary(address: str, call: Callable[[], Any]) -> Any:
    try:
        return await call()
    except grpc.aio.AioRpcError as error:
        raise _client_error(error, address) from None


def _agent_id(text: str, flag: str) -> types_pb2.AgentId:
    kind, sep, key = text.partition("/")
    if not sep or not kind or not key:
        raise UsageError(f"{flag} must be TYPE/KEY, got {text!r}")
    return types_pb2.AgentId(type=kind, key=key)


async def send(
    address: str,
    recipient: str,
    type_name: str,
    text: str,
    *,
    token: str | None,
    timeout: float,
    ca: str | None,
) -> Any:
    """Send a message; the node's SendResponse, its result decoded."""
    request = agent_service_pb2.SendRequest(
        recipient=_agent_id(recipient, "--to"),
        envelope=types_pb2.Envelope(
            message_id=new_message_id(), payload=payload_from_json(type_name, text)
        ),
    )
    async with _channel(address, ca) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        response = await _unary(
            address, lambda: stub.Send(request, timeout=timeout, metadata=_metadata(token))
        )
    printed = message_json(response)
    if response.HasField("result"):
        printed["result"] = payload_json(response.result)
    return printed


async def publish(
    address: str,
    topic: str,
    type_name: str,
    text: str,
    *,
    token: str | None,
    timeout: float,
    ca: str | None,
) -> Any:
    """Publish a message; the node's PublishResponse (deliveries here and on streams)."""
    topic_type, sep, source = topic.partition("/")
    if not sep or not topic_type or not source:
        raise UsageError(f"--topic must be TYPE/SOURCE, got {topic!r}")
    request = agent_service_pb2.PublishRequest(
        topic=types_pb2.TopicId(type=topic_type, source=source),
        envelope=types_pb2.Envelope(
            message_id=new_message_id(), payload=payload_from_json(type_name, text)
        ),
    )
    async with _channel(address, ca) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        response = await _unary(
            address, lambda: stub.Publish(request, timeout=timeout, metadata=_metadata(token))
        )
    return message_json(response)


async def describe(address: str, *, token: str | None, timeout: float, ca: str | None) -> Any:
    """The node's NodeInfo."""
    async with _channel(address, ca) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        response = await _unary(
            address,
            lambda: stub.Describe(
                agent_service_pb2.DescribeRequest(), timeout=timeout, metadata=_metadata(token)
            ),
        )
    # Every field, zeros too: an agent type with no active instance says "activeInstances": 0.
    return message_json(response.node)


def event_json(event: agent_service_pb2.Event) -> Any:
    """An event as `subscribe` prints it: protobuf JSON, its payload decoded."""
    printed = message_json(event)
    printed["envelope"]["payload"] = payload_json(event.envelope.payload)
    return printed


async def subscribe(
    address: str,
    filters: list[types_pb2.TopicFilter],
    *,
    count: int | None,
    token: str | None,
    timeout: float,
    ca: str | None,
    emit: Callable[[Any], None],
    say: Callable[[str], None],
) -> None:
    """Print the node's description, then its events, until `count` events or `timeout`.

    A node streams the events published through it: by its own agents and by
    clients publishing to it. Events published through its peers reach its
    agents (over the peers' streams) but not this stream: subscribe to each node
    to follow a whole mesh.
    """
    if not filters:
        say(
            "warning: no --topic-type or --prefix: no event matches, only the node's "
            "description and its changes are printed"
        )
    request = agent_service_pb2.SubscribeRequest(filters=filters, subscriber_id="ravi-cli")
    received = 0
    described = False
    async with _channel(address, ca) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        stream = stub.Subscribe(request, timeout=timeout, metadata=_metadata(token))
        try:
            async for item in stream:
                if item.HasField("node"):
                    if not described:
                        described = True
                        say(
                            f"subscribed to {address} (node {item.node.node_id}): the events "
                            "published through this node"
                        )
                    emit({"node": message_json(item.node)})
                    continue
                emit({"event": event_json(item.event)})
                received += 1
                if count is not None and received >= count:
                    stream.cancel()
                    return
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED and count is None:
                return
            raise _client_error(error, address) from None
    if count is not None:
        raise Unavailable(f"the stream ended after {received} of {count} events")


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=None, ensure_ascii=False) + "\n")
    sys.stdout.flush()
