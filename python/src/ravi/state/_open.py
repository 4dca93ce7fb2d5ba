"""The URLs that name a state store."""

from __future__ import annotations

from pathlib import Path

from ravi.errors import InvalidArgument
from ravi.state._memory import MemoryStore
from ravi.state._postgres import PostgresStore
from ravi.state._sqlite import SqliteStore
from ravi.state._store import StateStore


def open_store(url: str) -> StateStore:
    """The store a URL names: `memory`, `sqlite:PATH` or `postgresql://…`.

    `sqlite:PATH` is a file path (`sqlite:state.db`, `sqlite:/var/lib/ravi/state.db`;
    `sqlite:///abs/path` works too); `postgresql://` (or `postgres://`) is a
    libpq connection URL, which needs the `postgres` extra.

    Raises:
        InvalidArgument: the URL names no store ravi knows.
    """
    if url in ("memory", "memory:"):
        return MemoryStore()
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:")
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise InvalidArgument(f"{url!r} names no file: write sqlite:PATH")
        return SqliteStore(Path(path))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise InvalidArgument(
        f"unknown state store {url!r}: use memory, sqlite:PATH or postgresql://USER@HOST/DB"
    )
