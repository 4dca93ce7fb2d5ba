"""`ravi serve --runtime restate`: a pending approval card still works after the worker restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ravi.testing import RestateServer, ravi_command, running_node
from tests.integration.test_server import TOKEN, client_for, events
from tests.paths import RESTATE_SERVER
from tests.restate.test_crashes import Worker, free_port

pytestmark = [pytest.mark.restate, pytest.mark.timeout(180)]


async def test_an_approval_card_outlives_a_worker_restart(tmp_path: Path) -> None:
    server = RestateServer(RESTATE_SERVER, tmp_path / "restate")
    await server.start()
    try:
        worker = Worker(server, tmp_path)
        worker.command[worker.command.index("--setup") + 1] = "ravi.server:demo_setup"
        await worker.start()
        serve = [*ravi_command(), "serve", "--port", "0", "--token", TOKEN]
        serve += ["--runtime", "restate", "--no-demo"]
        serve += ["--restate-ingress", server.ingress_url, "--restate-admin", server.admin_url]
        serve += ["--restate-listen", f"127.0.0.1:{free_port()}"]
        try:
            async with running_node(serve) as web, client_for(web) as client:
                started = await client.post(
                    "/threads", json={"thread_id": "durable", "content": "restate"}
                )
                assert started.status_code == 202, started.text
                seen: list[dict[str, Any]] = []
                async for event in events(client, "durable"):
                    seen.append(event)
                    if event["kind"] == "approval_request":
                        break
                request_id = seen[-1]["approval_request"]["request_id"]

                await worker.kill()  # the worker running the agent dies with the approval pending
                await worker.start()

                answered = await client.post(f"/respond/{request_id}", json={"action": "approve"})
                assert answered.status_code == 200, answered.text
                async for event in events(client, "durable", after=seen[-1]["seq"]):
                    seen.append(event)
                    if event["kind"] in ("final", "failed"):
                        break
        finally:
            await worker.stop()
    finally:
        await server.stop()
    kinds = [e["kind"] for e in seen]
    assert kinds == [
        "started",
        "model_step",
        "tool_result",
        "model_step",
        "approval_request",
        "approval_decision",
        "tool_result",
        "model_step",
        "final",
    ]
    assert seen[-1]["final"]["content"].startswith("Done. Report sent to team@example.com")
    assert [e["seq"] for e in seen] == list(range(1, 10))
