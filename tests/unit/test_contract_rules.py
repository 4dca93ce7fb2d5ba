"""The contract's buf rules: lint with COMMENTS, and breaking changes caught.

The breaking check of `make lint` compares proto/ with the image of the last
released contract; these tests prove it catches a breaking edit by applying
several to a copy of the contract.
"""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.paths import BUF, REPO_ROOT

FACTS = REPO_ROOT / "proto" / "ravi" / "mesh" / "v1" / "contract.toml"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


RELEASES = sorted((REPO_ROOT / "proto" / "releases").glob("ravi-v*.json"))
RELEASE = max(RELEASES, key=lambda path: _version(path.stem.removeprefix("ravi-v")))


def _buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def contract_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO_ROOT / "proto", tmp_path / "proto")
    shutil.copy(REPO_ROOT / "buf.yaml", tmp_path / "buf.yaml")
    return tmp_path


def _edit(root: Path, relative: str, pattern: str, replacement: str) -> None:
    path = root / "proto" / relative
    text = path.read_text()
    edited, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1, f"pattern {pattern!r} not found in {relative}"
    path.write_text(edited)


def test_the_latest_release_is_the_one_make_lint_checks_against() -> None:
    dry_run = subprocess.run(
        ["make", "-n", "lint-proto"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert f"breaking --against proto/releases/{RELEASE.name}" in dry_run.stdout


def test_the_recorded_version_is_the_released_contract_or_a_newer_one(tmp_path: Path) -> None:
    # The version every language reports comes from contract.toml (make gen). A
    # released version names exactly the contract of its image; a contract that
    # changed since carries a newer version until `make release-contract`.
    recorded = tomllib.loads(FACTS.read_text())["version"]
    latest = RELEASE.stem.removeprefix("ravi-v")
    assert _version(recorded) >= _version(latest)
    if recorded == latest:
        image = tmp_path / "image.json"
        result = _buf("build", "--exclude-source-info", "-o", str(image), cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr
        assert json.loads(image.read_text()) == json.loads(RELEASE.read_text()), (
            f"proto/ changed since contract {latest} was released: record a new version "
            "in proto/ravi/mesh/v1/contract.toml"
        )


@pytest.mark.parametrize("release", RELEASES, ids=lambda path: path.stem)
def test_current_contract_is_compatible_with_every_release(
    contract_copy: Path, release: Path
) -> None:
    result = _buf("breaking", "--against", str(release), cwd=contract_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("relative", "pattern", "replacement", "expected"),
    [
        (
            "ravi/mesh/v1/types.proto",
            r"^  string key = 2;$",
            "  reserved 2;",
            'Previously present field "2" with name "key" on message "AgentId" was deleted',
        ),
        (
            "ravi/mesh/v1/types.proto",
            r"^  bytes data = 3;$",
            "  string data = 3;",
            'changed type from "bytes" to "string"',
        ),
        (
            "ravi/mesh/v1/agent_service.proto",
            r"^  rpc Publish\(PublishRequest\)",
            "  rpc PublishMessage(PublishRequest)",
            'Previously present RPC "Publish" on service "AgentService" was deleted',
        ),
        (
            "ravi/mesh/v1/errors.proto",
            r"ERROR_REASON_NO_HANDLER = 2;",
            "ERROR_REASON_NO_HANDLER = 12;",
            'Previously present enum value "2" on enum "ErrorReason" was deleted',
        ),
    ],
    ids=["deleted-field", "changed-type", "renamed-rpc", "renumbered-enum-value"],
)
def test_breaking_edit_is_caught(
    contract_copy: Path, relative: str, pattern: str, replacement: str, expected: str
) -> None:
    _edit(contract_copy, relative, pattern, replacement)
    result = _buf("breaking", "--against", str(RELEASE), cwd=contract_copy)
    assert result.returncode != 0
    assert expected in result.stdout


def test_undocumented_element_fails_lint(contract_copy: Path) -> None:
    _edit(
        contract_copy,
        "ravi/mesh/v1/types.proto",
        r"^  // source identifies where the events come from \(for example a conversation\n"
        r"  // id\); must be non-empty.\n",
        "",
    )
    result = _buf("lint", cwd=contract_copy)
    assert result.returncode != 0
    assert 'Field "source" should have a non-empty comment for documentation' in result.stdout


def test_comment_ignores_are_disallowed(contract_copy: Path) -> None:
    _edit(
        contract_copy,
        "ravi/mesh/v1/types.proto",
        r"^  // source identifies where the events come from \(for example a conversation\n"
        r"  // id\); must be non-empty.\n",
        "  // buf:lint:ignore COMMENT_FIELD\n",
    )
    result = _buf("lint", cwd=contract_copy)
    assert result.returncode != 0
