"""When the container tests skip: only where no engine can run at all, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.containers import _engine


def test_without_root_no_engine_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_engine.os, "geteuid", lambda: 1000)
    reason = _engine.unavailable()
    assert reason == "dockerd needs root, and these tests run as an unprivileged user"


def test_a_missing_engine_names_the_command_that_installs_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_engine, "ENGINE_LINK", tmp_path)
    with pytest.raises(RuntimeError, match="run `make test-containers`"):
        _engine.installed_engine()
