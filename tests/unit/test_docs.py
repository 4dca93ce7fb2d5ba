"""The code blocks of README.md and docs/ are code that runs (see tests/doc_blocks.py).

Here: every block is accounted for, the blocks the tests do not run are the
reviewed ones below, and each page's python blocks run as one program from a
folder of their own. tests/integration/test_doc_blocks.py runs the sh blocks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import doc_blocks
from tests.doc_blocks import Block, all_blocks, blocks
from tests.paths import REPO_ROOT

NOT_RUN = {
    ("README.md", "make demo   # run the main demo"): "tests/integration/test_newcomer.py",
    ("docs/scaling-out.md", "import asyncio"): "tests/restate/test_workflow_client.py",
    ("docs/deploy.md", "docker build -f deploy/docker/python.Dockerfile -t ravi-python:dev ."): (
        "make test-containers"
    ),
    (
        "docs/deploy.md",
        "export RAVI_TOKEN=$(openssl rand -hex 16) RAVI_SERVER_TOKEN=$(openssl rand -hex 16)",
    ): ("tests/containers/test_compose.py"),
    ("docs/deploy.md", "kustomize build deploy/k8s/overlays/dev | kubectl apply -f -"): (
        "tests/unit/test_deploy.py"
    ),
    ("docs/deploy.md", "kubectl -n ravi-dev scale deployment/writer --replicas=5"): (
        "tests/integration/test_discovery.py"
    ),
    ("docs/deploy.md", "# each writer pod"): "tests/integration/test_discovery.py",
    (
        "docs/performance.md",
        "make bench            # medians of 3 runs; BENCH_RUNS=5 make bench for more",
    ): ("benchmark"),
    ("docs/performance.md", "make bench-grpc      # bench/results/grpc.json"): "benchmark",
    ("docs/interop.md", "make build-rust"): "tests/interop/test_clients.py",
    (
        "docs/performance.md",
        "mkdir /tmp/ravi-45c2bb7 && git archive 45c2bb7 | tar -x -C /tmp/ravi-45c2bb7",
    ): ("benchmark"),
    (
        "docs/performance.md",
        ".venv/bin/python bench/interop_hops.py --runs 5 --save bench/results/interop.json",
    ): "benchmark",
    (
        "docs/performance.md",
        "make bench-lifecycle  # bench/results/lifecycle.json; "
        "needs the PostgreSQL of `make setup`",
    ): "benchmark",
    (
        "docs/performance.md",
        "git worktree add ../ravi-before 7a2e2d5   # main before passivation",
    ): ("benchmark"),
    ("docs/performance.md", "make bench-instructions"): "benchmark",
    (
        "docs/performance.md",
        ".venv/bin/python bench/run.py local --runs 21 --baseline ../ravi-before "
        "--only floor,ravi,baseline",
    ): "benchmark",
    ("docs/performance.md", "make bench-restate   # bench/results/restate.json"): "benchmark",
    ("docs/performance.md", "git worktree add ../ravi-before 41c7a1c"): "benchmark",
    (
        "docs/performance.md",
        "make bench-tracing      # medians of 5 interleaved runs "
        "(BENCH_RUNS=7 make bench-tracing for more)",
    ): "benchmark",
    (
        "docs/performance.md",
        "make bench-a2a   # medians of 5 interleaved runs; bench/results/a2a.json",
    ): "benchmark",
    (
        "docs/state.md",
        "ravi node --listen 0.0.0.0:50051 --setup myapp:setup --data-dir /var/lib/ravi   # SQLite",
    ): "tests/interop/test_state.py",
}
"""The blocks no test here runs, reviewed: (page, first line) -> what the reason must name.

Each such block carries `<!-- doc-test: not run: REASON -->`; a reason names
what runs it instead (another test, `make test-containers`), or says why it
cannot run here. Adding one is a decision for review, not a way to quieten
this test."""

PYTHON_PAGES = [
    page
    for page in doc_blocks.PAGES
    if any(b.language == "python" and b.not_run is None and not b.file for b in blocks(page))
    and not any(b.needs for b in blocks(page) if b.language == "python")
]


def test_every_block_is_code_the_tests_know() -> None:
    for block in all_blocks():
        assert block.language in doc_blocks.LANGUAGES, (
            f"{block.where()}: a block needs one of the languages {sorted(doc_blocks.LANGUAGES)} "
            f"(`text` for what is not code), got {block.language!r}"
        )
        known = ("not run", "file", "from the repository root", "each line serves", "needs", "info")
        for clause in block.clauses:
            assert clause.startswith(known), f"{block.where()}: unknown doc-test clause {clause!r}"


def test_the_blocks_not_run_are_the_reviewed_ones() -> None:
    skipped: dict[tuple[str, str], str] = {}
    for block in all_blocks():
        reason = block.not_run
        if reason is not None:
            assert reason.strip(), f"{block.where()}: `not run` needs a reason"
            skipped[(block.page, block.first_line)] = reason
    assert set(skipped) == set(NOT_RUN), (
        "the blocks marked `doc-test: not run` changed; review them and update NOT_RUN"
    )
    for key, reason in skipped.items():
        assert NOT_RUN[key] in reason, f"{key}: the reason must name {NOT_RUN[key]!r}: {reason}"


def test_runnable_blocks_dial_only_loopback() -> None:
    for block in all_blocks():
        if block.language in ("sh", "python") and block.not_run is None:
            foreign = doc_blocks.foreign_addresses(block.text)
            assert not foreign, (
                f"{block.where()}: a runnable block dials {foreign}: tests may only use "
                "loopback (mark the block `not run` with the reason, or write it for 127.0.0.1)"
            )


def test_every_page_is_checked() -> None:
    pages = {b.page for b in all_blocks()}
    assert {"README.md", "docs/agents.md", "docs/protocol.md", "docs/interop.md"} <= pages
    assert set(doc_blocks.PAGES) == {"README.md"} | {
        str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md")
    }


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_examples_run_from_a_folder_of_their_own(page: str, tmp_path: Path) -> None:
    doc_blocks.write_files(page, tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", doc_blocks.python_program(page)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr


SOURCES = [
    "interop/go/agents/reviewer.go",
    "interop/go/cmd/ravi-go/main.go",
    "interop/node/src/agents/formatter.ts",
    "interop/node/src/cli.ts",
]


def test_go_and_node_examples_are_the_code_the_tests_build() -> None:
    sources = "\n".join((REPO_ROOT / path).read_text() for path in SOURCES)
    code: list[Block] = [
        b for b in all_blocks() if b.language in ("go", "ts") and b.page != "docs/a2a.md"
    ]
    assert len(code) == 4
    for block in code:
        assert block.text in sources, f"{block.where()} shows code that is not in {SOURCES}"


def test_the_a2a_page_shows_the_code_the_interop_tests_run() -> None:
    source = (REPO_ROOT / "interop" / "a2a-js" / "src" / "drive.ts").read_text()
    code = [b for b in doc_blocks.blocks("docs/a2a.md") if b.language in ("go", "ts")]
    assert len(code) == 2
    for block in code:
        assert block.text in source, f"{block.where()} shows code that is not in drive.ts"


def test_servers_take_the_page_ports_not_their_fixed_defaults() -> None:
    ports = doc_blocks.Ports()
    # The flags are not swallowed by a trailing comment, quotes in it or not.
    serve = doc_blocks.on_the_page_ports("ravi serve --model m   # the demo's tools, '#'", ports)
    assert serve == f"ravi serve --model m --port {ports.port(8000)}"
    assert doc_blocks.on_the_page_ports("ravi serve --port 8001", ports) == "ravi serve --port 8001"
    assert doc_blocks.on_the_page_ports("ravi restate dev", ports) == (
        f"ravi restate dev --ingress-port {ports.port(8080)} --admin-port {ports.port(9070)} "
        f"--listen 127.0.0.1:{ports.port(9080)}"
    )
    assert doc_blocks.restate_env(ports)["RAVI_RESTATE_ADMIN"].endswith(f":{ports.port(9070)}")
