"""The ravi server: a monolith HTTP server for ReAct agents, with a web page and approvals.

Needs the `server` extra: `pip install "ravi[server]"`. See docs/agents.md for
the HTTP API.
"""

try:
    from ravi.server._app import RaviServer
    from ravi.server._demo import demo_model, demo_setup, demo_workflow_setup
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"ravi.server needs Starlette, uvicorn and sse-starlette ({missing.name} is missing): "
        'install the extra with `pip install "ravi[server]"`'
    ) from missing

__all__ = ["RaviServer", "demo_model", "demo_setup", "demo_workflow_setup"]
