"""`ravi demo` runs the task through every agent and prints the conversation."""

import subprocess

import pytest

from tests.paths import REPO_ROOT, VENV_PYTHON


def run_demo(*args: str) -> str:
    result = subprocess.run(
        [str(VENV_PYTHON.parent / "ravi"), "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO_ROOT,
    )
    return result.stdout


def stages(out: str) -> list[str]:
    return [line.split("]")[0].strip(" [") for line in out.splitlines() if line.startswith("  [")]


def test_demo_prints_the_conversation_and_an_approved_answer() -> None:
    out = run_demo()
    assert "ravi demo on LocalRuntime" in out
    assert stages(out) == ["search", "search", "write", "review", "write", "review", "done"]
    assert "changes requested: cite the sources you used  <- reviewer/default (python)" in out
    assert "approved: clear, sourced and short: approved  <- reviewer/default (python)" in out
    assert "Sources: concepts.md:" in out
    assert "answer (5 hops" in out


@pytest.mark.integration
def test_mesh_demo_crosses_nodes_and_languages_and_reports_each_hop() -> None:
    out = run_demo("--mesh")
    assert stages(out) == [
        "search", "search", "write", "review", "write", "review", "format", "done",
    ]  # fmt: skip
    assert "<- searcher/docs on node-a (python)" in out
    assert "<- writer/demo-1 on node-b (python)" in out
    assert "<- reviewer/default (go)" in out
    assert "formatted by formatter/default (node)  <- reviewer/default (go)" in out
    assert "as markdown  <- formatter/demo-1 (node)" in out
    for node in ("node-a", "node-b", "node-go", "node-js"):
        assert f"stopped {node} (exit 0)" in out
    assert "## How does ravi keep the messages of one agent in order" in out
    table = out.split("per-hop latency")[1].splitlines()[3:]
    assert len([row for row in table if row.strip()]) == 6
