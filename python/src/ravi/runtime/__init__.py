"""Runtimes: the interface agents talk to, and the in-process implementation."""

from ravi.runtime._base import BaseRuntime
from ravi.runtime._local import LocalRuntime

__all__ = ["BaseRuntime", "LocalRuntime"]
