"""Agent state stores: where passivated agents keep their state.

A node saves an agent's `save_state()` to its store when the instance is
passivated (idle, or beyond `max_active_agents`), when the node stops
gracefully, and, with `checkpoint="each_message"`, after every handled
message; the next message activates the agent again with `load_state()` from
the store. Every store versions its writes, so a node holding a stale copy of
an agent (the key moved to another node, which saved since) is refused with
`ravi.errors.StaleState` instead of overwriting. docs/state.md says which
store to choose and what each setting keeps across a crash.

    MemoryStore     in this process (LocalRuntime's default)
    SqliteStore     one file per node (`ravi node --data-dir`'s default)
    PostgresStore   shared by the nodes of a mesh (the `postgres` extra)
"""

from ravi.state._memory import MemoryStore
from ravi.state._open import open_store
from ravi.state._postgres import PostgresStore
from ravi.state._sqlite import SqliteStore
from ravi.state._store import StateStore, StoredState

__all__ = [
    "MemoryStore",
    "PostgresStore",
    "SqliteStore",
    "StateStore",
    "StoredState",
    "open_store",
]
