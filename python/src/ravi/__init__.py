"""ravi: a polyglot agent runtime.

Agents addressed by `AgentId(type, key)` talk by request/response and by topic
publish/subscribe; the same agent code runs in-process, across a gRPC mesh and
durably on Restate.
"""

from ravi._version import __version__

__all__ = ["__version__"]
