"""`ravi serve --a2a`: the server's app with the A2A gateway in front."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ravi._agent import BaseAgent
from ravi._cli_errors import UsageError
from ravi._mesh_cli import _import
from ravi.agents import ReActAgent
from ravi.errors import RaviError
from ravi.integrations.a2a._cards import ExposedAgent
from ravi.integrations.a2a._gateway import A2AGateway
from ravi.runtime import BaseRuntime
from ravi.server import RaviServer
from ravi.server._app import ASGIApp
from ravi.server._demo import look_up, send_report

_DEMO_DESCRIPTION = (
    "ravi's demo assistant: looks up ravi's notes and e-mails a report, "
    "which a person approves first."
)


def gateway_app(
    server: RaviServer,
    *,
    agent_type: str,
    demo: bool,
    agents: Sequence[str],
    url: str | None,
    grpc_listen: str | None,
    runtime: BaseRuntime | None,
    address: str,
    ready: Callable[[], None],
    announce: Callable[[str], None],
) -> ASGIApp:
    """The app `ravi serve` runs with --a2a: the server's endpoints and the gateway's.

    Args:
        server: the server.
        agent_type: the server's own agent type, served first.
        demo: whether that type is the demo assistant (its card shows the demo's tools).
        agents: the --a2a-agent values.
        url: --a2a-url.
        grpc_listen: --a2a-grpc (None: off).
        runtime: the runtime of request/reply calls, when not the server's.
        address: where the server listens, for the announced card URLs.
        ready: called once the gateway serves.
        announce: prints a line for the operator.
    """
    own = ExposedAgent(
        agent_type,
        ReActAgent,
        tools=(look_up, send_report) if demo else (),
        description=_DEMO_DESCRIPTION if demo else "",
    )
    exposed = {own.agent_type: own}
    for spec in agents:
        agent = exposed_agent(spec)
        exposed[agent.agent_type] = agent
    base = url.rstrip("/") if url else f"http://{address}"

    def on_ready(gateway: A2AGateway) -> None:
        ready()
        for name in exposed:
            announce(f"A2A agent {name}: {base}/a2a/{name}/.well-known/agent-card.json")
        if gateway.grpc_address is not None:
            announce(f"A2A gRPC binding on {gateway.grpc_address}")

    try:
        gateway = A2AGateway(
            server,
            list(exposed.values()),
            runtime=runtime,
            url=url,
            grpc_listen=grpc_listen,
            on_ready=on_ready,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    return gateway.app


def exposed_agent(spec: str) -> ExposedAgent:
    """An --a2a-agent value: TYPE, TYPE=module:Class, or module:name of an ExposedAgent."""
    agent_type, equals, path = spec.partition("=")
    if not equals:
        if ":" not in spec:
            return _checked(lambda: ExposedAgent(spec), spec)
        found = _import(spec)
        if not isinstance(found, ExposedAgent):
            raise UsageError(f"--a2a-agent {spec}: {spec} is not an ExposedAgent")
        return found
    cls = _import(path)
    if not (isinstance(cls, type) and issubclass(cls, BaseAgent)):
        raise UsageError(f"--a2a-agent {spec}: {path} is not a BaseAgent subclass")
    return _checked(lambda: ExposedAgent(agent_type, cls), spec)


def _checked(make: Callable[[], ExposedAgent], spec: str) -> ExposedAgent:
    try:
        return make()
    except (ValueError, RaviError) as error:
        raise UsageError(f"--a2a-agent {spec}: {error}") from None
