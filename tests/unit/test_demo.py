"""`ravi demo` runs the task through every agent and prints the conversation."""

import subprocess

from tests.paths import REPO_ROOT, VENV_PYTHON


def test_demo_prints_the_conversation_and_an_approved_answer() -> None:
    result = subprocess.run(
        [str(VENV_PYTHON.parent / "ravi"), "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO_ROOT,
    )
    out = result.stdout
    assert "ravi demo on LocalRuntime" in out
    stages = [line.split("]")[0].strip(" [") for line in out.splitlines() if "] " in line]
    assert stages == ["search", "search", "write", "review", "write", "review", "done"]
    assert "changes requested by reviewer/default (python): cite the sources" in out
    assert "approved by reviewer/default (python)" in out
    assert "Sources: concepts.md:" in out
    assert "answer (5 hops" in out
