"""The examples in the docs run: each page's python blocks, in order, as one program."""

import re
import subprocess
import sys

import pytest

from tests.paths import REPO_ROOT

PAGES = ["README.md", "docs/concepts.md", "docs/scaling-out.md"]
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
