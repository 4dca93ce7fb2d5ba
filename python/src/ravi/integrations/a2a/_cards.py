"""Which agent types the gateway serves, and the Agent Card each one gets."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol

from ravi._agent import BaseAgent
from ravi._ids import _check_type
from ravi._serialization import registry
from ravi._version import __version__
from ravi.agents import ReActAgent
from ravi.react.v1 import react_pb2
from ravi.tools import Tool

BEARER = "bearer"
"""The name of the card's security scheme: the server's bearer token."""

TEXT = "text/plain"
JSON = "application/json"


@dataclass(frozen=True)
class ExposedAgent:
    """ExposedAgent is an agent type the A2A gateway serves, and what its Agent Card says.

    A ReAct agent type (`agent_class` a ReActAgent, or `tools` given) is a task
    agent: each A2A task is a run on a thread, its contextId the thread id.
    Any other type is a request/reply agent: a message carries a data part
    naming the request's type, the reply comes back as an artifact.

    Args:
        agent_type: the registered agent type.
        agent_class: the class registered for it; its docstring describes the
            card and its handlers become skills. Needed for types hosted on
            other nodes too, since a card is built here.
        tools: a ReAct agent's tools: its skills, and the schemas an edited
            approval is checked against.
        name: the card's name; the agent type when empty.
        description: the card's description; the class docstring when empty.
    """

    agent_type: str
    agent_class: type[BaseAgent] | None = None
    tools: Sequence[Tool] = field(default=())
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        _check_type("agent type", self.agent_type)

    @property
    def is_react(self) -> bool:
        """Whether A2A tasks are ReAct runs on threads (else request/reply calls)."""
        if self.tools:
            return True
        cls = self.agent_class
        return cls is not None and (
            issubclass(cls, ReActAgent) or react_pb2.Task in cls.handled_types()
        )

    def tool(self, name: str) -> Tool | None:
        """The tool of this name, when the card knows it."""
        return next((t for t in self.tools if t.name == name), None)


@dataclass(frozen=True)
class Bindings:
    """Where the gateway is reached: the JSON-RPC base URL and the gRPC address."""

    http_url: str
    grpc_address: str | None


def agent_card(exposed: ExposedAgent, bindings: Bindings) -> AgentCard:
    """The Agent Card of one exposed agent type."""
    base = f"{bindings.http_url}/a2a/{exposed.agent_type}"
    interfaces = [
        AgentInterface(
            url=base,
            protocol_binding=TransportProtocol.JSONRPC.value,
            protocol_version=PROTOCOL_VERSION_CURRENT,
        ),
        AgentInterface(
            url=f"{base}/rest",
            protocol_binding=TransportProtocol.HTTP_JSON.value,
            protocol_version=PROTOCOL_VERSION_CURRENT,
        ),
    ]
    if bindings.grpc_address is not None:
        # One gRPC service serves every exposed type; the tenant selects one.
        interfaces.append(
            AgentInterface(
                url=bindings.grpc_address,
                protocol_binding=TransportProtocol.GRPC.value,
                protocol_version=PROTOCOL_VERSION_CURRENT,
                tenant=exposed.agent_type,
            )
        )
    react = exposed.is_react
    return AgentCard(
        name=exposed.name or exposed.agent_type,
        description=exposed.description or _docstring(exposed.agent_class) or exposed.agent_type,
        supported_interfaces=interfaces,
        provider=AgentProvider(organization="ravi", url="https://github.com/ravi-mesh/ravi"),
        version=__version__,
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        security_schemes={
            BEARER: SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="bearer", description="The ravi server's token."
                )
            )
        },
        security_requirements=[SecurityRequirement(schemes={BEARER: StringList()})],
        default_input_modes=[TEXT] if react else [JSON],
        default_output_modes=[TEXT, JSON],
        skills=_tool_skills(exposed) if react else _handler_skills(exposed),
    )


def _tool_skills(exposed: ExposedAgent) -> list[AgentSkill]:
    skills = []
    for tool in exposed.tools:
        description = tool.description or tool.name
        tags = ["tool"]
        if tool.requires_approval:
            description += " (asks a person to approve each call first)"
            tags.append("approval")
        skills.append(
            AgentSkill(
                id=tool.name,
                name=tool.name,
                description=description,
                tags=tags,
                input_modes=[TEXT],
                output_modes=[TEXT, JSON],
            )
        )
    return skills or [
        AgentSkill(
            id="task",
            name="task",
            description="Works on a task given in plain language.",
            tags=["react"],
            input_modes=[TEXT],
            output_modes=[TEXT, JSON],
        )
    ]


def _handler_skills(exposed: ExposedAgent) -> list[AgentSkill]:
    cls = exposed.agent_class
    if cls is None:
        return [
            AgentSkill(
                id="message",
                name="message",
                description='Takes a data part {"@type": TYPE, ...fields} naming a message '
                "type the agent handles.",
                tags=["ravi"],
                input_modes=[JSON],
                output_modes=[JSON],
            )
        ]
    skills = []
    for message_type, (method, function) in cls._ravi_handlers.items():
        name = type_name(message_type)
        summary = _docstring(function) or _docstring(message_type) or f"Handles {name}."
        skills.append(
            AgentSkill(
                id=name,
                name=method,
                description=summary,
                tags=["ravi", "message"],
                examples=[f'{{"@type": "{name}", ...}}'],
                input_modes=[JSON],
                output_modes=[JSON],
            )
        )
    return skills


def type_name(message_type: type) -> str:
    """The registry's name of a message type (its class name when it is no message type)."""
    try:
        name: str = registry.type_name(message_type)
    except TypeError:
        return message_type.__qualname__
    return name


def _docstring(thing: object) -> str:
    """The first paragraph of its own docstring (not a base class's), on one line."""
    doc = getattr(thing, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
