"""The server's web page in a real browser (Debian's Chromium, driven by Playwright).

`ravi serve` runs the demo assistant (a scripted model): a task streams its
steps over Server-Sent Events, the page shows an approval card for the risky
tool, and approving, rejecting or editing the call decides the final answer.
Also what a newcomer trips over: no token or a wrong one, a second browser,
the address bar, a server that goes away, `#thread=` links.
Screenshots go to test-output/server-ui/.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from ravi.testing import NodeProcess, ravi_command, running_node, start_node
from tests.paths import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TOKEN = "e2e-page-token"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "test-output" / "server-ui"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT_MS = 10_000


@pytest.fixture
async def server() -> AsyncIterator[NodeProcess]:
    command = [*ravi_command(), "serve", "--port", "0", "--token", TOKEN, "--store", "memory"]
    async with running_node(command) as node:
        yield node


@pytest.fixture
async def api(server: NodeProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://{server.address}", headers=AUTH, timeout=10
    ) as client:
        yield client


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), headless=True)
        async with browser:
            expect.set_options(timeout=TIMEOUT_MS)
            yield browser


async def new_page(browser: Browser, errors: list[str]) -> Page:
    """A 1280x800 page in a browser context of its own (its own sessionStorage)."""
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(TIMEOUT_MS)
    return page


@pytest.fixture
async def page(server: NodeProcess, browser: Browser) -> AsyncIterator[Page]:
    """A browser page; the test fails if the page throws."""
    errors: list[str] = []
    yield await new_page(browser, errors)
    assert not errors, f"the page threw: {errors}"


def url(server: NodeProcess, fragment: str = "") -> str:
    return f"http://{server.address}/?token={TOKEN}{fragment}"


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / name


async def screenshot(page: Page, name: str) -> Path:
    path = screenshot_path(name)
    await page.screenshot(path=path, full_page=False)
    print(f"screenshot: {path}")
    return path


async def thread_summary(api: httpx.AsyncClient, thread_id: str) -> dict[str, Any]:
    response = await api.get(f"/threads/{thread_id}")
    response.raise_for_status()
    summary: dict[str, Any] = response.json()
    return summary


async def waiting_thread(api: httpx.AsyncClient, content: str) -> str:
    """A thread whose run waits for its approval; its id."""
    started = await api.post("/threads", json={"content": content})
    assert started.status_code == 202, started.text
    thread_id: str = started.json()["thread_id"]
    await until_waiting(api, thread_id)
    return thread_id


async def until_waiting(api: httpx.AsyncClient, thread_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            summary = await thread_summary(api, thread_id)
            if summary["status"] == "waiting_for_approval":
                return summary
            await asyncio.sleep(0.05)


async def test_the_page_holds_no_data_the_api_needs_the_token(server: NodeProcess) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server.address}", timeout=10) as client:
        for params in [{}, {"token": "wrong"}, {"token": TOKEN}]:
            page = await client.get("/", params=params)
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["cache-control"] == "no-store"
            assert page.headers["x-frame-options"] == "DENY"
            assert 'data-testid="task-input"' in page.text
        assert (await client.get("/threads", params={"token": TOKEN})).status_code == 401
        assert (await client.get("/info")).status_code == 401


async def test_approve_then_reject_a_follow_up(server: NodeProcess, page: Page) -> None:
    await page.goto(url(server))
    await expect(page.get_by_test_id("agent-type")).to_have_text("assistant")
    await expect(page.get_by_test_id("error-banner")).to_be_hidden()

    await page.get_by_test_id("task-input").fill("How do approvals work in ravi?")
    await page.get_by_test_id("task-submit").click()

    card = page.get_by_test_id("approval-card")
    await expect(card).to_be_visible()
    await expect(card).to_contain_text("send_report")
    await expect(card).to_contain_text("E-mail a report to someone")
    await expect(card.get_by_test_id("approval-arguments")).to_contain_text("team@example.com")
    await expect(page.get_by_test_id("model-name")).to_have_text(
        "ScriptedModel (deterministic demo script)"
    )
    await expect(page.get_by_test_id("user-task")).to_contain_text("How do approvals work")
    # look_up's model step and result, send_report's model step, the card: once each.
    await expect(page.get_by_test_id("step")).to_have_count(4)
    await expect(page.get_by_test_id("tool-status").first).to_have_text("ok")
    await expect(page.get_by_test_id("thread-item")).to_have_count(1)
    await screenshot(page, "approval.png")

    await card.get_by_test_id("approve").click()
    answer = page.get_by_test_id("final-answer")
    await expect(answer).to_contain_text("Report sent to team@example.com")
    await expect(card.get_by_test_id("approval-status")).to_contain_text("Approved by web page")
    await expect(card.get_by_test_id("approve")).to_be_hidden()
    await expect(page.get_by_test_id("thread-status")).to_have_text("completed")
    await screenshot(page, "final.png")

    # A follow-up on the same thread: the agent asks again; reject it with a reason.
    await page.get_by_test_id("followup-input").fill("And how does the gRPC runtime work?")
    await page.get_by_test_id("followup-submit").click()
    second = card.nth(1)
    await expect(second).to_be_visible()
    await expect(page.get_by_test_id("user-task")).to_have_count(2)
    await second.get_by_test_id("reject-reason").fill("not before the review")
    await second.get_by_test_id("reject").click()
    rejected = answer.nth(1)
    await expect(rejected).to_contain_text("I did not send the report")
    await expect(rejected).to_contain_text("not before the review")
    await expect(second.get_by_test_id("approval-status")).to_contain_text("Rejected")
    await expect(page.get_by_test_id("tool-status").last).to_have_text("rejected")
    await screenshot(page, "rejected.png")


async def test_edit_the_call(server: NodeProcess, page: Page, api: httpx.AsyncClient) -> None:
    await page.goto(url(server))
    await page.get_by_test_id("task-input").fill("Tell me about the local runtime")
    await page.get_by_test_id("task-submit").click()
    card = page.get_by_test_id("approval-card")
    await expect(card).to_be_visible()
    thread_id = await page.get_by_test_id("thread-item").first.get_attribute("data-thread-id")
    assert thread_id

    await card.get_by_test_id("edit").click()
    editor = card.get_by_test_id("edit-arguments")
    assert json.loads(await editor.input_value())["to"] == "team@example.com"
    await editor.fill('{"to": "boss@example.com", ')
    await card.get_by_test_id("edit-submit").click()
    await expect(card.get_by_test_id("edit-error")).to_contain_text("Not valid JSON")
    await screenshot(page, "edit-invalid.png")
    summary = await thread_summary(api, thread_id)  # nothing was sent
    assert summary["status"] == "waiting_for_approval"
    assert len(summary["pending_approvals"]) == 1

    # JSON, but not what the tool takes: the server refuses it (422), the card stays pending.
    await editor.fill('{"to": 42}')
    await card.get_by_test_id("edit-submit").click()
    error = card.get_by_test_id("edit-error")
    await expect(error).to_contain_text("to: 42 is not of type 'string'")
    await expect(error).to_contain_text("'summary' is a required property")
    await expect(card.get_by_test_id("approve")).to_be_enabled()
    await expect(card.get_by_test_id("approval-status")).to_have_text("")
    await expect(page.get_by_test_id("error-banner")).to_be_hidden()
    await screenshot(page, "edit-refused.png")
    summary = await thread_summary(api, thread_id)
    assert summary["status"] == "waiting_for_approval"
    assert len(summary["pending_approvals"]) == 1

    await editor.fill(json.dumps({"to": "boss@example.com", "summary": "Local runtime notes"}))
    await expect(card.get_by_test_id("edit-error")).to_be_hidden()
    await card.get_by_test_id("edit-submit").click()
    answer = page.get_by_test_id("final-answer")
    await expect(answer).to_contain_text("Report sent to boss@example.com")
    await expect(card.get_by_test_id("approval-status")).to_contain_text("Edited")
    await expect(page.locator('[data-kind="approval_decision"]')).to_contain_text(
        "boss@example.com"
    )
    # The card shows the arguments the tool ran with, the model's own folded below.
    await expect(card.get_by_test_id("approval-arguments")).to_contain_text("boss@example.com")
    await expect(card.get_by_test_id("model-arguments")).to_contain_text("team@example.com")
    await screenshot(page, "edited.png")


async def test_an_answer_that_comes_too_late(
    server: NodeProcess, page: Page, api: httpx.AsyncClient
) -> None:
    """Someone else answers first: the page's answer gets a 409, shown as already answered."""
    started = await api.post("/threads", json={"content": "Notes on restate"})
    assert started.status_code == 202
    thread_id = started.json()["thread_id"]
    request_id = (await until_waiting(api, thread_id))["pending_approvals"][0]["approval_request"][
        "request_id"
    ]

    async def answer_first(route: Route) -> None:
        first = await api.post(
            f"/respond/{request_id}", json={"action": "approve", "answered_by": "someone else"}
        )
        assert first.status_code == 200
        await route.continue_()

    await page.route("**/respond/**", answer_first)
    await page.goto(url(server, f"#thread={thread_id}"))
    card = page.get_by_test_id("approval-card")
    await card.get_by_test_id("reject").click()
    await expect(card.get_by_test_id("approval-status")).to_contain_text(
        "already answered", ignore_case=True
    )
    await expect(card.get_by_test_id("approval-status")).to_contain_text("by someone else")
    await expect(page.get_by_test_id("final-answer")).to_contain_text("Report sent")
    await expect(page.get_by_test_id("error-banner")).to_be_hidden()


async def test_the_page_resumes_a_dropped_stream(
    server: NodeProcess, page: Page, api: httpx.AsyncClient
) -> None:
    """The first event stream ends after 3 events; the page reconnects with Last-Event-ID: 3."""
    thread_id = await waiting_thread(api, "Notes on approval")
    # The server's own frames (CRLF line ends) for events 1 to 3, and a ping comment.
    raw = b""
    async with api.stream("GET", f"/threads/{thread_id}/events") as stream:
        async for chunk in stream.aiter_bytes():
            raw += chunk
            if b"id: 4\r\n" in raw:
                break
    first_three = raw[: raw.index(b"id: 4\r\n")] + b": ping\r\n\r\n"
    assert first_three.count(b"\r\n\r\n") == 4

    seen: list[str | None] = []

    async def drop_the_first(route: Route) -> None:
        seen.append((await route.request.all_headers()).get("last-event-id"))
        if len(seen) == 1:
            await route.fulfill(
                status=200, headers={"Content-Type": "text/event-stream"}, body=first_three
            )
        else:
            await route.continue_()

    await page.route("**/events", drop_the_first)
    await page.goto(url(server, f"#thread={thread_id}"))
    card = page.get_by_test_id("approval-card")
    await expect(card).to_be_visible()
    assert seen[:2] == [None, "3"]
    await expect(page.get_by_test_id("step")).to_have_count(4)  # none twice
    await expect(page.get_by_test_id("connection")).to_have_text("live")
    await card.get_by_test_id("approve").click()
    await expect(page.get_by_test_id("final-answer")).to_contain_text("Report sent")


async def test_a_run_cut_by_a_restart_is_shown_interrupted_and_runs_again(
    chromium: Path, tmp_path: Path
) -> None:
    command = [*ravi_command(), "serve", "--port", "0", "--token", TOKEN]
    command += ["--data-dir", str(tmp_path / "threads")]
    first = await start_node(command)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://{first.address}", headers=AUTH, timeout=10
        ) as client:
            started = await client.post("/threads", json={"content": "Notes on approvals"})
            thread_id = started.json()["thread_id"]
            await until_waiting(client, thread_id)
    finally:
        await first.kill()  # the monolith dies with the run waiting for its approval
    async with running_node(command) as server, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), headless=True)
        async with browser:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(url(server, f"#thread={thread_id}"))
            await expect(page.get_by_test_id("thread-status")).to_have_text(
                "interrupted", timeout=TIMEOUT_MS
            )
            await expect(page.get_by_test_id("conversation")).to_contain_text(
                "the server stopped while this run was in progress", timeout=TIMEOUT_MS
            )
            rerun = page.get_by_test_id("rerun")
            await expect(rerun).to_be_visible(timeout=TIMEOUT_MS)
            await screenshot(page, "interrupted.png")
            await rerun.click()
            card = page.get_by_test_id("approval-card").last
            await expect(card.get_by_test_id("approve")).to_be_visible(timeout=TIMEOUT_MS)
            await card.get_by_test_id("approve").click()
            await expect(page.get_by_test_id("final-answer").last).to_contain_text(
                "Report sent to team@example.com", timeout=TIMEOUT_MS
            )
            await expect(rerun).to_be_hidden(timeout=TIMEOUT_MS)


async def test_titles_come_from_the_server_in_a_second_browser(
    server: NodeProcess, browser: Browser, page: Page
) -> None:
    await page.goto(url(server))
    await page.get_by_test_id("task-input").fill("How do deadlines work?")
    await page.get_by_test_id("task-submit").click()
    await expect(page.get_by_test_id("thread-title")).to_have_text("How do deadlines work?")
    thread_id = await page.get_by_test_id("thread-item").first.get_attribute("data-thread-id")

    errors: list[str] = []
    async with await browser.new_context() as other:  # no sessionStorage in common
        second = await other.new_page()
        second.on("pageerror", lambda error: errors.append(str(error)))
        await second.goto(url(server, f"#thread={thread_id}"))
        item = second.get_by_test_id("thread-item")
        await expect(item).to_have_count(1)
        await expect(item).to_contain_text("How do deadlines work?")
        await expect(second.get_by_test_id("thread-title")).to_have_text("How do deadlines work?")
    assert not errors, errors


async def test_without_a_token_the_page_asks_for_it(server: NodeProcess, page: Page) -> None:
    await page.goto(f"http://{server.address}/")
    signin = page.get_by_test_id("signin")
    await expect(signin).to_be_visible()
    await expect(signin).to_contain_text("This page needs the server's token")
    await expect(page.get_by_test_id("task-input")).to_be_hidden()
    await expect(page.get_by_test_id("connection")).to_have_text("no token")
    assert "error" not in (await page.locator("body").inner_text()).lower()
    await screenshot(page, "no-token.png")

    await page.get_by_test_id("signin-token").fill(TOKEN)
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("agent-type")).to_have_text("assistant")
    await expect(signin).to_be_hidden()
    await expect(page.get_by_test_id("task-input")).to_be_visible()


async def test_a_wrong_token_is_said_so_and_the_right_one_leaves_the_address_bar(
    server: NodeProcess, page: Page
) -> None:
    await page.goto(f"http://{server.address}/?token=wrong#thread=x")
    await expect(page.get_by_test_id("signin-why")).to_contain_text("refused the token")
    assert "token=" not in page.url

    await page.goto(url(server))
    await expect(page.get_by_test_id("agent-type")).to_have_text("assistant")
    assert "token=" not in page.url, page.url
    await page.reload()  # the tab keeps the token: no need to open the printed address again
    await expect(page.get_by_test_id("agent-type")).to_have_text("assistant")
    await expect(page.get_by_test_id("signin")).to_be_hidden()
    await expect(page.get_by_test_id("connection")).to_have_text("connected")


async def test_changing_the_address_hash_switches_threads(
    server: NodeProcess, page: Page, api: httpx.AsyncClient
) -> None:
    first = (await api.post("/threads", json={"content": "Notes on restate"})).json()
    second = (await api.post("/threads", json={"content": "Notes on approvals"})).json()
    await page.goto(url(server, f"#thread={first['thread_id']}"))
    await expect(page.get_by_test_id("thread-title")).to_have_text("Notes on restate")
    await page.evaluate("id => { location.hash = `thread=${id}`; }", second["thread_id"])
    await expect(page.get_by_test_id("thread-title")).to_have_text("Notes on approvals")
    await expect(page.get_by_test_id("user-task")).to_contain_text("Notes on approvals")
    await page.go_back()
    await expect(page.get_by_test_id("thread-title")).to_have_text("Notes on restate")
    await page.evaluate("() => { location.hash = 'thread=nope'; }")
    await expect(page.get_by_test_id("error-banner")).to_contain_text("does not have")


async def test_working_names_what_the_run_is_doing(
    server: NodeProcess, page: Page, api: httpx.AsyncClient
) -> None:
    thread_id = await waiting_thread(api, "Notes on restate")
    await page.goto(url(server, f"#thread={thread_id}"))
    working = page.get_by_test_id("working")
    await expect(working).to_have_text("Waiting for your approval to run send_report…")

    # A tool that takes its time: the stream stops after the model asked for it.
    def frame(seq: int, kind: str, body: dict[str, Any]) -> str:
        event = {"thread_id": "slow", "seq": seq, "run_id": "r", "kind": kind, kind: body}
        return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(event)}\n\n"

    stream = frame(1, "started", {"content": "Look it up", "model": "scripted:demo"})
    stream += frame(2, "model_step", {"iteration": 1, "tool_calls": [{"tool": "look_up"}]})

    async def slow_tool(route: Route) -> None:
        await route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=stream)

    async def listed(route: Route) -> None:
        slow = {"thread_id": "slow", "title": "Look it up", "status": "running", "runs": 1}
        await route.fulfill(json={"threads": [slow]})

    await page.route("**/threads/slow/events", slow_tool)
    await page.route("**/threads", listed)
    await page.evaluate("() => { location.hash = 'thread=slow'; }")
    await expect(working.last).to_have_text("Running look_up…")


async def test_a_server_that_goes_away_is_shown_lost(browser: Browser) -> None:
    command = [*ravi_command(), "serve", "--port", "0", "--token", TOKEN, "--store", "memory"]
    errors: list[str] = []
    page = await new_page(browser, errors)
    server = await start_node(command)
    try:
        await page.goto(url(server))
        await expect(page.get_by_test_id("connection")).to_have_text("connected")
        await page.get_by_test_id("task-input").fill("Notes on approvals")
        await page.get_by_test_id("task-submit").click()
        await expect(page.get_by_test_id("approval-card")).to_be_visible()
        await expect(page.get_by_test_id("connection")).to_have_text("live")
    finally:
        await server.kill()
    connection = page.get_by_test_id("connection")
    await expect(connection).to_have_text("server lost", timeout=2 * TIMEOUT_MS)
    await expect(page.get_by_test_id("error-banner")).to_contain_text("Cannot reach the server")
    await screenshot(page, "server-lost.png")
    assert not errors, errors
