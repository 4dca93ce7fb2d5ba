"""The sh blocks of README.md and docs/ run as a reader runs them, in a terminal of their own.

Each page's sh blocks run in order as one session in a fresh folder (the
repository root only for the blocks that say so), with `ravi` and the tools on
PATH, on free loopback ports; the servers a block needs but does not start
come from fixtures (tests/doc_blocks.py explains the rules). A page whose
python blocks need a server runs them here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ravi.testing import RestateServer, ravi_command, running_node
from tests import doc_blocks
from tests.doc_blocks import Block, Ports, blocks
from tests.paths import REPO_ROOT, RESTATE_SERVER

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# A model the docs name is never called by these runs; the key only lets it be built.
OPENAI = {"OPENAI_API_KEY": "sk-docs-test-not-used", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}


def _runnable(block: Block, language: str) -> bool:
    return block.language == language and block.not_run is None and not block.file


def _shell_pages() -> list[object]:
    return [
        pytest.param(page, marks=[pytest.mark.restate] if _needs(page, "restate-server") else [])
        for page in doc_blocks.PAGES
        if any(_runnable(b, "sh") for b in blocks(page))
    ]


def _needs(page: str, what: str) -> bool:
    return any(need.startswith(what) for b in blocks(page) for need in b.needs)


@contextlib.asynccontextmanager
async def reader(page: str, tmp_path: Path) -> AsyncIterator[tuple[Path, Ports, dict[str, str]]]:
    """A reader's folder with the page's files, its ports, and what its blocks need.

    Yields the folder, the page's ports and the environment that points at
    what was started.
    """
    folder = tmp_path / "reader"
    folder.mkdir()
    doc_blocks.write_files(page, folder)
    ports = Ports()
    env: dict[str, str] = {**OPENAI}
    async with contextlib.AsyncExitStack() as stack:
        for need in sorted({n for b in blocks(page) for n in b.needs}):
            if need == "restate-server":
                server = RestateServer(
                    RESTATE_SERVER,
                    folder.parent / f"{folder.name}-restate",
                    ports={
                        "RESTATE_INGRESS__BIND_PORT": ports.port(8080),
                        "RESTATE_ADMIN__BIND_PORT": ports.port(9070),
                        "RESTATE_BIND_PORT": doc_blocks.free_port(),
                    },
                )
                await server.start()
                stack.push_async_callback(server.stop)
                env["RAVI_RESTATE_INGRESS"] = server.ingress_url
                env["RAVI_RESTATE_ADMIN"] = server.admin_url
            elif need.startswith("assistant-node "):
                address = ports.address(need.removeprefix("assistant-node ").strip())
                command = [*ravi_command(), "node", "--listen", address]
                command += ["--setup", "ravi.server:demo_setup"]
                await stack.enter_async_context(running_node(command))
            else:
                raise AssertionError(f"{page}: no fixture gives {need!r}")
        yield folder, ports, env


@pytest.mark.parametrize("page", _shell_pages())
async def test_shell_blocks_run_as_written(page: str, tmp_path: Path) -> None:
    async with reader(page, tmp_path) as (folder, ports, extra):
        env = doc_blocks.shell_env(
            folder, {**doc_blocks.jaeger_env(ports), **doc_blocks.restate_env(ports), **extra}
        )
        async with doc_blocks.session(folder, env, ports) as terminal:
            for block in blocks(page):
                if not _runnable(block, "sh"):
                    continue
                terminal.folder = (
                    REPO_ROOT if block.clause("from the repository root") is not None else folder
                )
                for line in doc_blocks.commands(ports.apply(block.text)):
                    if block.clause("each line serves") is not None:
                        await terminal.serve_and_stop(doc_blocks.on_the_page_ports(line, ports))
                    elif (started := doc_blocks.background(line)) is not None:
                        await terminal.start(doc_blocks.on_the_page_ports(started, ports))
                    else:
                        await terminal.run(line)


def _python_pages_with_servers() -> list[object]:
    return [
        pytest.param(page, marks=[pytest.mark.restate])
        for page in doc_blocks.PAGES
        if any(_runnable(b, "python") and b.needs for b in blocks(page))
    ]


@pytest.mark.parametrize("page", _python_pages_with_servers())
async def test_python_examples_that_need_a_server_run(page: str, tmp_path: Path) -> None:
    async with reader(page, tmp_path) as (folder, ports, extra):
        program = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ports.apply(doc_blocks.python_program(page)),
            cwd=folder,
            env=doc_blocks.shell_env(folder, extra),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(program.communicate(), 180)
        finally:
            if program.returncode is None:
                program.kill()
                await program.wait()
    assert program.returncode == 0, output.decode(errors="replace")
