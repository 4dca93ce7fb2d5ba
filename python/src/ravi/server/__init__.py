"""The ravi server: a web page, an HTTP API and live events for threads of ReAct agents.

`RaviServer` is the HTTP front of a `ThreadService`: `RuntimeThreads` runs the
tasks from this process on a LocalRuntime or GrpcRuntime and keeps the threads
in a `ThreadStore` (SQLite); `RestateThreads` keeps everything in Restate, in
the objects `restate_setup` serves from the workers.

Needs the `server` extra: `pip install "ravi[server]"` (and `ravi[restate]` for
`RestateThreads` and `restate_setup`). See docs/agents.md for the HTTP API.
"""

from typing import Any

try:
    from ravi.server._app import RaviServer
    from ravi.server._demo import demo_model, demo_setup, demo_workflow_setup
    from ravi.server._model import Answered, ThreadSummary, event_json
    from ravi.server._service import ThreadService
    from ravi.server._store import ThreadStore
    from ravi.server._threads import RuntimeThreads
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"ravi.server needs Starlette, uvicorn, sse-starlette and jsonschema ({missing.name} is "
        "missing): "
        'install the extra with `pip install "ravi[server]"`'
    ) from missing

_RESTATE = {"RestateThreads": "ravi.server._restate", "restate_setup": "ravi.server._durable"}


def __getattr__(name: str) -> Any:
    """The Restate parts, imported on first use: they need the `restate` extra."""
    if name not in _RESTATE:
        raise AttributeError(f"module 'ravi.server' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    try:
        return getattr(importlib.import_module(_RESTATE[name]), name)
    except ImportError as missing:
        raise ImportError(
            f"ravi.server.{name} needs restate-sdk and aiohttp ({missing.name} is missing): "
            'install the extra with `pip install "ravi[restate]"`'
        ) from missing


__all__ = [
    "Answered",
    "RaviServer",
    "RestateThreads",
    "RuntimeThreads",
    "ThreadService",
    "ThreadStore",
    "ThreadSummary",
    "demo_model",
    "demo_setup",
    "demo_workflow_setup",
    "event_json",
    "restate_setup",
]
