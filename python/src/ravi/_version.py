"""The version of the ravi distribution, read by the build backend and the CLI."""

__version__ = "0.1.0"
