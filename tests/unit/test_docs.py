"""The examples in the docs run: each page's python blocks, in order, as one program."""

import re
import subprocess
import sys

import pytest

from tests.paths import REPO_ROOT

PAGES = [
    "README.md",
    "docs/concepts.md",
    "docs/scaling-out.md",
    "docs/agents.md",
    "docs/a2a.md",
]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", PAGES)
def test_python_examples_run(page: str) -> None:
    blocks = BLOCK.findall((REPO_ROOT / page).read_text())
    assert blocks, f"{page} has no python examples"
    program = "\n\n".join(blocks)
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


GO_OR_TS = re.compile(r"^```(?:go|ts)\n(.*?)^```", re.DOTALL | re.MULTILINE)
SOURCES = [
    "interop/go/agents/reviewer.go",
    "interop/go/cmd/ravi-go/main.go",
    "interop/node/src/agents/formatter.ts",
    "interop/node/src/cli.ts",
]


def test_go_and_node_examples_are_the_code_the_tests_build() -> None:
    sources = "\n".join((REPO_ROOT / path).read_text() for path in SOURCES)
    blocks = GO_OR_TS.findall((REPO_ROOT / "docs" / "interop.md").read_text())
    assert len(blocks) == 4
    for block in blocks:
        assert block in sources, f"docs/interop.md shows code that is not in {SOURCES}:\n{block}"


def test_the_a2a_page_shows_the_code_the_interop_tests_run() -> None:
    source = (REPO_ROOT / "interop" / "a2a-js" / "src" / "drive.ts").read_text()
    blocks = GO_OR_TS.findall((REPO_ROOT / "docs" / "a2a.md").read_text())
    assert len(blocks) == 2
    for block in blocks:
        assert block in source, f"docs/a2a.md shows code that is not in drive.ts:\n{block}"
