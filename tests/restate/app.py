"""The worker app of the crash tests: an agent workflow whose tools leave traces on disk.

`record` appends to executions.log (so a test sees which steps ran, and how
often); `charge` writes a SQLite ledger keyed by its idempotency key, so a
step that runs again after a crash charges once. Both live in the folder
$RAVI_TEST_DIR. The models are scripts, one per scenario.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from ravi.agents import ReActAgent
from ravi.integrations.runtime.restate import AgentWorkflow, RestateRuntime
from ravi.models import ChatMessage, ScriptedModel, call, say
from ravi.tools import ToolContext, tool


def folder() -> Path:
    return Path(os.environ["RAVI_TEST_DIR"])


def ledger(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS charges (key TEXT PRIMARY KEY, cents INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS attempts (key TEXT, at REAL)")
    return db


@tool
def record(tag: str, seconds: float = 0.4) -> str:
    """Note that a step ran, then take a while.

    Args:
        tag: which step.
        seconds: how long it takes.
    """
    with (folder() / "executions.log").open("a") as log:
        log.write(f"{tag}\n")
    time.sleep(seconds)
    return f"recorded {tag}"


def _charge(cents: int, key: str) -> str:
    db = ledger(folder() / "ledger.db")
    try:
        db.execute("INSERT INTO attempts VALUES (?, ?)", (key, time.time()))
        time.sleep(random.uniform(0, 0.15))  # widens the window a kill lands in
        db.execute("INSERT OR IGNORE INTO charges VALUES (?, ?)", (key, cents))
        time.sleep(random.uniform(0, 0.15))
    finally:
        db.close()
    return f"charged {cents} (key {key})"


@tool
def charge(cents: int, ctx: ToolContext) -> str:
    """Charge a card, once per idempotency key.

    Args:
        cents: the amount.
        ctx: the call's context.
    """
    return _charge(cents, ctx.idempotency_key)


@tool(requires_approval=True)
def pay(cents: int, ctx: ToolContext) -> str:
    """Pay, once a human approved.

    Args:
        cents: the amount.
        ctx: the call's context.
    """
    return _charge(cents, ctx.idempotency_key)


def _last(messages: Sequence[ChatMessage]) -> ChatMessage:
    return say(next(m.content for m in reversed(messages) if m.role == "tool"))


MODELS = {
    "steps": ScriptedModel(
        [call("record", tag="a"), call("record", tag="b"), call("record", tag="c"), _last],
        name="steps",
    ),
    "approval": ScriptedModel(
        [call("record", tag="before", seconds=0.0), call("pay", cents=500), _last],
        name="approval",
    ),
    "ledger": ScriptedModel(
        [call("record", tag="l", seconds=0.2), call("charge", cents=1000), _last],
        name="ledger",
    ),
    "slow": ScriptedModel([call("record", tag="slow", seconds=3.0), _last], name="slow"),
    # The model the Scaling Out page's sample names, played by a script.
    "gpt-4o": ScriptedModel(
        [call("record", tag="q3", seconds=0.0), call("pay", cents=4200), _last], name="gpt-4o"
    ),
}


def setup(runtime: RestateRuntime) -> None:
    AgentWorkflow(models=MODELS, tools=[record, charge, pay]).register(runtime)


async def assistant_setup(runtime: RestateRuntime) -> None:
    """The serve path's agent: a ReActAgent ("assistant") whose one tool pays, once approved."""
    model = ScriptedModel([call("pay", cents=700), _last], name="payer")
    await ReActAgent.register(runtime, "assistant", lambda: ReActAgent(model, [pay]))
