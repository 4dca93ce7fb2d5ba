"""RestateRuntime: the same agents on a Restate server, with journaled steps and durable waits.

Needs the `restate` extra: `pip install "ravi[restate]"`. See docs/restate.md.
"""

try:
    from ravi.integrations.runtime.restate._runtime import RestateRuntime
    from ravi.integrations.runtime.restate._workflow import (
        AgentWorkflow,
        RestateSettings,
        RestateWorkflowClient,
    )
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"RestateRuntime needs restate-sdk, hypercorn and aiohttp ({missing.name} is missing): "
        'install the extra with `pip install "ravi[restate]"`'
    ) from missing

__all__ = ["AgentWorkflow", "RestateRuntime", "RestateSettings", "RestateWorkflowClient"]
