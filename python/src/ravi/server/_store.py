"""ThreadStore: the monolith's thread history in an embedded SQLite file (or in memory)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ravi.errors import FailedPrecondition, ResourceExhausted, Unavailable
from ravi.server._model import ApprovalState, RunSummary, run_of

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY,
    updated_at REAL NOT NULL,
    running INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS threads_by_time ON threads (updated_at);
CREATE TABLE IF NOT EXISTS events (
    thread_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    run_seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (thread_id, seq),
    UNIQUE (thread_id, run_id, run_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS approvals (
    request_id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_by_thread ON approvals (thread_id);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_thread ON runs (thread_id, started_at);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (started_at);
"""

DATABASE = "threads.db"


class ThreadStore:
    """ThreadStore keeps thread records, their events and their approvals.

    `ThreadStore.open(folder)` keeps them in `folder/threads.db`, so a restart
    of the server shows every past thread; one server at a time uses a folder
    (a second one is refused). `ThreadStore.memory()` keeps them in memory,
    the least recently updated idle threads dropped past `max_threads`.
    Records are the JSON of `ravi.server._model`; each run keeps its
    `RunSummary`, written with its thread's record.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        max_threads: int | None,
        max_events: int | None,
        lock: IO[bytes] | None = None,
        where: str = "memory",
    ) -> None:
        self._db = db
        self._max_threads = max_threads
        self._max_events = max_events
        self._lock = lock
        self.where = where
        """Where the store keeps its data, for messages."""

    @classmethod
    def open(cls, folder: Path) -> ThreadStore:
        """The store in `folder` (created if missing).

        Raises:
            Unavailable: the folder cannot be written.
            FailedPrecondition: another server uses it.
        """
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = (folder / f"{DATABASE}.lock").open("ab")
        except OSError as error:
            raise Unavailable(
                f"cannot keep threads in {folder}: {error.strerror or error}; "
                "pass --data-dir DIR, or --store memory to keep them in memory"
            ) from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise FailedPrecondition(
                f"another ravi server keeps its threads in {folder}: "
                "give each server a --data-dir of its own"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n".encode())
        lock.flush()
        db = sqlite3.connect(folder / DATABASE, isolation_level=None)
        # WAL: readers never wait for the writer; NORMAL: a power cut may lose
        # the last events, never corrupt the file.
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)
        return cls(db, max_threads=None, max_events=None, lock=lock, where=str(folder))

    @classmethod
    def memory(cls, *, max_threads: int = 1000, max_events: int = 10_000) -> ThreadStore:
        """A store in memory, forgotten when the server stops."""
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.executescript(_SCHEMA)
        return cls(db, max_threads=max_threads, max_events=max_events)

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Apply the writes of the block together, or none of them."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- threads ---------------------------------------------------------------------

    def get(self, thread_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT record FROM threads WHERE thread_id = ?", (thread_id,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, record: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO threads (thread_id, updated_at, running, record) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (thread_id) DO UPDATE SET "
            "updated_at = excluded.updated_at, running = excluded.running, "
            "record = excluded.record",
            (
                record["thread_id"],
                record["updated_at"],
                record["state"] == "running",
                json.dumps(record),
            ),
        )
        run = run_of(record)
        if run is not None:
            self._db.execute(
                "INSERT INTO runs (run_id, thread_id, started_at, summary) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET summary = excluded.summary",
                (run["run_id"], run["thread_id"], run["started_at"], json.dumps(run)),
            )

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The most recently updated records, newest first."""
        rows = self._db.execute(
            "SELECT record FROM threads ORDER BY updated_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def running(self) -> list[dict[str, Any]]:
        """The records of threads with a run in progress."""
        rows = self._db.execute("SELECT record FROM threads WHERE running").fetchall()
        return [json.loads(r[0]) for r in rows]

    def make_room(self) -> None:
        """Drop the least recently updated idle threads past `max_threads` (memory only).

        Raises:
            ResourceExhausted: every thread kept has a run in progress.
        """
        if self._max_threads is None:
            return
        (count,) = self._db.execute("SELECT count(*) FROM threads").fetchone()
        if count < self._max_threads:
            return
        idle = self._db.execute(
            "SELECT thread_id FROM threads WHERE NOT running ORDER BY updated_at LIMIT ?",
            (count - self._max_threads + 1,),
        ).fetchall()
        if len(idle) <= count - self._max_threads:
            raise ResourceExhausted(
                f"all {self._max_threads} threads have a run in progress; try again later"
            )
        for (thread_id,) in idle:
            for table in ("threads", "events", "approvals", "runs"):
                self._db.execute(f"DELETE FROM {table} WHERE thread_id = ?", (thread_id,))

    # --- runs -----------------------------------------------------------------------

    def run(self, run_id: str) -> RunSummary | None:
        row = self._db.execute("SELECT summary FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        run: RunSummary = json.loads(row[0])
        return run

    def runs(self, thread_id: str | None, limit: int) -> list[RunSummary]:
        """The runs of a thread (of every thread when None), the most recently started first."""
        where, args = ("WHERE thread_id = ?", (thread_id,)) if thread_id is not None else ("", ())
        rows = self._db.execute(
            f"SELECT summary FROM runs {where} ORDER BY started_at DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # --- events ---------------------------------------------------------------------

    def add_event(self, thread_id: str, event: dict[str, Any]) -> dict[str, Any] | None:
        """Keep an event under the thread's next seq; the event as kept, None if kept before.

        The store numbers a thread's events itself: an agent that lost its
        memory (a restart of the monolith) numbers its events from 1 again.
        The agent's own number only tells an event delivered twice.
        """
        seen = self._db.execute(
            "SELECT 1 FROM events WHERE thread_id = ? AND run_id = ? AND run_seq = ?",
            (thread_id, event["run_id"], event["seq"]),
        ).fetchone()
        if seen:
            return None
        (last,) = self._db.execute(
            "SELECT coalesce(max(seq), 0) FROM events WHERE thread_id = ?", (thread_id,)
        ).fetchone()
        kept = {**event, "seq": last + 1}
        self._db.execute(
            "INSERT INTO events (thread_id, seq, run_id, run_seq, data) VALUES (?, ?, ?, ?, ?)",
            (thread_id, kept["seq"], event["run_id"], event["seq"], json.dumps(kept)),
        )
        if self._max_events is not None and kept["seq"] > self._max_events:
            self._db.execute(
                "DELETE FROM events WHERE thread_id = ? AND seq <= ?",
                (thread_id, kept["seq"] - self._max_events),
            )
        return kept

    def events_after(self, thread_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT data FROM events WHERE thread_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (thread_id, after, limit),
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # --- approvals ------------------------------------------------------------------

    def approval(self, request_id: str) -> tuple[str, ApprovalState] | None:
        """The thread that asked, and the request's state."""
        row = self._db.execute(
            "SELECT thread_id, state FROM approvals WHERE request_id = ?", (request_id,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def set_approvals(self, thread_id: str, states: dict[str, ApprovalState]) -> None:
        self._db.executemany(
            "INSERT INTO approvals (request_id, thread_id, state) VALUES (?, ?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET state = excluded.state "
            # A run's end closes what is still pending, not what was answered.
            "WHERE approvals.state = 'pending' OR excluded.state <> 'closed'",
            [(request_id, thread_id, state) for request_id, state in states.items()],
        )
