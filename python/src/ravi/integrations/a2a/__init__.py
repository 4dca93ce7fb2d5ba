"""A2A: ravi agents served as A2A agents, and A2A agents as ravi agent types.

`A2AGateway` serves chosen agent types of a runtime through the official A2A
SDK (JSON-RPC and gRPC, Agent Cards, tasks, streaming); `A2AAgent` makes a
remote A2A agent an agent type any mesh agent calls. See docs/a2a.md.

Needs the `a2a` extra: `pip install "ravi[a2a]"`.
"""

try:
    from ravi.integrations.a2a._agent import A2AAgent
    from ravi.integrations.a2a._cards import ExposedAgent
    from ravi.integrations.a2a._gateway import A2AGateway
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"ravi.integrations.a2a needs the A2A SDK ({missing.name} is missing): "
        'install the extra with `pip install "ravi[a2a]"`'
    ) from missing

__all__ = ["A2AAgent", "A2AGateway", "ExposedAgent"]
