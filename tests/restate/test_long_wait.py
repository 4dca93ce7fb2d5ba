"""An approval answered ten minutes after it was asked, with Restate's default timeouts.

Marked slow (left out of `make test`): run it with
`.venv/bin/python -m pytest -m slow tests/restate/test_long_wait.py`. The same
path with the inactivity timeout shortened to a second, so that every wait is
a suspension, runs in every test run (test_server_restate.py, test_chaos.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ravi.testing import RestateServer
from tests.paths import RESTATE_SERVER
from tests.restate.processes import events_until, invocation_statuses, running_stack

pytestmark = [pytest.mark.restate, pytest.mark.slow, pytest.mark.timeout(900)]

WAIT = 600.0


async def test_an_approval_answered_ten_minutes_later(tmp_path: Path) -> None:
    default = RestateServer(RESTATE_SERVER, tmp_path / "restate")  # Restate's own timeouts
    async with running_stack(tmp_path, server=default) as stack:
        server = stack.server
        async with stack.serve.client() as client:
            await client.post("/threads", json={"thread_id": "patient", "content": "restate"})
            seen = await events_until(client, "patient", {"approval_request"})
            asked = time.monotonic()
            await asyncio.sleep(WAIT)
            assert await invocation_statuses(server, "assistant") == ["suspended"]
            request_id = seen[-1]["approval_request"]["request_id"]
            answered = await client.post(f"/respond/{request_id}", json={"action": "approve"})
            assert answered.status_code == 200, answered.text
            waited = time.monotonic() - asked
            seen += await events_until(client, "patient", {"final"}, after=seen[-1]["seq"])
    assert waited >= WAIT
    assert seen[-1]["final"]["content"].startswith("Done. Report sent to team@example.com")
    print(f"answered {waited:.0f} s after the approval was asked; the run completed")
