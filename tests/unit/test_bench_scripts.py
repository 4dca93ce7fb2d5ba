"""Benchmarks that back a claim in the docs still run (their figures are measured, not tested)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.paths import REPO_ROOT


def test_the_span_benchmark_runs_and_reports_both_paths() -> None:
    # docs/performance.md's "SDK path against ravi's direct path" comes from
    # this script; a renamed call once left it failing unnoticed.
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "tracing_spans.py"), "--n", "600"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["bench"] == "tracing_spans"
    for field in ("sdk_span_us", "sdk_encode_us", "ravi_span_encoded_us", "sdk_over_ravi"):
        assert row[field] > 0, row
