"""Tools a model can call: typed functions with a JSON schema, some needing a human's approval."""

from ravi.tools._tool import Tool, ToolContext, render, tool

__all__ = ["Tool", "ToolContext", "render", "tool"]
