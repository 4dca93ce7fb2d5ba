"""Helpers for testing agents and runtimes, the same ones ravi's own tests use."""

from ravi.testing._helpers import eventually

__all__ = ["eventually"]
