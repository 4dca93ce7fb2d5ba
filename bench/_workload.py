"""The shared definition of the local workloads (DESIGN.md section 8).

Message: a dataclass with a 100-character string and an int; the echo handler
returns it. Every benchmark script prints one JSON object on its last line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

TEXT = "x" * 100


@dataclass
class Ping:
    text: str
    seq: int


def percentile_us(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def emit(bench: str, row: dict[str, float]) -> None:
    print(json.dumps({"bench": bench, **{k: round(v, 1) for k, v in row.items()}}))


def now_ns() -> int:
    return time.perf_counter_ns()
