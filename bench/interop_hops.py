"""Per-hop latency between the languages of the mesh, every pair in one run.

Two nodes of every language of `interop/languages.toml` (Python, Go, Node) host
a conformance agent each, `hop-LANG-1` on the first and `hop-LANG-2` on the
second, and all peer with each other. For every ordered pair (caller, callee),
including a language with itself, a Python client sends `Forward` to the
caller's first node, whose agent sends `Echo` on to the callee's second node: a
real network hop between two processes. The hop's cost is the median round
trip of that call minus the median of a direct `Echo` to the caller's agent,
measured in the same round.

Rounds are interleaved: each of `--runs` rounds measures every pair and every
direct call (`-n` calls each, in a rotated order), and the figures are the
medians over the rounds of each round's p50 and of its ratio to
Python -> Python. DESIGN.md section 8 asks every pair's per-hop p50 to be within
1.3x of Python -> Python; the script exits 1 if one is not.

    .venv/bin/python bench/interop_hops.py --runs 5 --save bench/results/interop.json

With --tracing, every node and the client trace to a real Jaeger (sampled as
OTEL_TRACES_SAMPLER says, every trace by default): the traced cost of each hop.

    OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 \
        .venv/bin/python bench/interop_hops.py --tracing
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _workload import tracing

from ravi import AgentId
from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.integrations.runtime.grpc import GrpcRuntime
from ravi.mesh.v1 import types_pb2
from ravi.testing import NodeProcess, start_node

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.3
"""DESIGN.md section 8: every pair's per-hop p50 within 1.3x of Python -> Python."""


def languages() -> dict[str, dict[str, list[str]]]:
    entries = tomllib.loads((ROOT / "interop" / "languages.toml").read_text())
    entries.pop("clients", None)
    return entries


def command(
    entry: dict[str, list[str]], node_id: str, agent_type: str, peers: list[str]
) -> list[str]:
    def fill(text: str) -> str:
        return text.format(repo=ROOT, python=sys.executable, conformance_type=agent_type)

    argv = [fill(part) for part in entry["node"]]
    if argv[0] == "node":
        argv[0] = shutil.which("node") or "node"
    argv += ["--listen", "127.0.0.1:0", "--node-id", node_id]
    argv += [fill(part) for part in entry["conformance"]]
    for i, address in enumerate(peers):
        argv += ["--peer", f"p{i}={address}"]
    return argv


def agent(language: str, index: int) -> str:
    return f"hop-{language}-{index}"


async def p50_us(call: Callable[[], Awaitable[object]], n: int) -> float:
    for _ in range(20):
        await call()
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


async def measure(
    runs: int, n: int, env: dict[str, str] | None, interceptors: list[Any]
) -> dict[str, object]:
    entries = languages()
    names = list(entries)
    nodes: list[NodeProcess] = []
    try:
        for index in (1, 2):
            for language in names:
                argv = command(
                    entries[language],
                    f"{language}-{index}",
                    agent(language, index),
                    [node.address for node in nodes],
                )
                nodes.append(await start_node(argv, env=env))
        client = GrpcRuntime(
            remote_peers={node.node_id: node.address for node in nodes}, interceptors=interceptors
        )
        async with client:
            for language in names:
                for index in (1, 2):
                    await client.wait_until_ready(agent(language, index))
            await wait_for_full_mesh(client, names)
            return await rounds(client, names, runs, n)
    finally:
        for node in nodes:
            await node.stop()


async def wait_for_full_mesh(client: GrpcRuntime, names: list[str]) -> None:
    """Every caller agent reaches every callee agent (each node learned the others)."""
    for caller in names:
        for callee in names:
            forward = conf.Forward(
                target=types_pb2.AgentId(type=agent(callee, 2), key="warm"), text="warm"
            )
            for attempt in range(100):
                try:
                    await client.send_message(forward, AgentId(agent(caller, 1), "hops"), timeout=5)
                    break
                except Exception:
                    if attempt == 99:
                        raise
                    await asyncio.sleep(0.1)


async def rounds(client: GrpcRuntime, names: list[str], runs: int, n: int) -> dict[str, object]:
    pairs = [(caller, callee) for caller in names for callee in names]
    direct: dict[str, list[float]] = {language: [] for language in names}
    via: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    for run in range(runs):
        shift = run % len(pairs)
        for caller, callee in pairs[shift:] + pairs[:shift]:
            echo_to = AgentId(agent(caller, 1), "hops")

            async def echo(to: AgentId = echo_to) -> None:
                await client.send_message(conf.Echo(text="x"), to)

            forward = conf.Forward(
                target=types_pb2.AgentId(type=agent(callee, 2), key="hops"), text="x"
            )

            async def hop(to: AgentId = echo_to, message: conf.Forward = forward) -> None:
                await client.send_message(message, to)

            if callee == names[(names.index(caller) + run) % len(names)]:
                direct[caller].append(await p50_us(echo, n))
            via[caller, callee].append(await p50_us(hop, n))
    base = "python"
    rows = []
    for caller, callee in pairs:
        hops = [
            total - first for total, first in zip(via[caller, callee], direct[caller], strict=True)
        ]
        ratios = [
            value / (v - d) for value, v, d in zip(hops, via[base, base], direct[base], strict=True)
        ]
        rows.append(
            {
                "caller": caller,
                "callee": callee,
                "round_trip_us": round(statistics.median(via[caller, callee]), 1),
                "hop_us": round(statistics.median(hops), 1),
                "ratio_to_python_python": round(statistics.median(ratios), 3),
                "hop_us_per_run": [round(h, 1) for h in hops],
            }
        )
    return {
        "direct_us": {k: round(statistics.median(v), 1) for k, v in direct.items()},
        "pairs": rows,
        "runs": runs,
        "n": n,
    }


async def traced_measure(runs: int, n: int, traced: bool) -> dict[str, object]:
    async with tracing("client", traced) as (telemetry, endpoint):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint} if endpoint else None
        return await measure(runs, n, env, telemetry.interceptors if telemetry else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("-n", type=int, default=300, help="calls per measurement (default 300)")
    parser.add_argument("--save", help="write the results as JSON to this file")
    parser.add_argument("--tracing", action="store_true", help="every node traces to a Jaeger")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    result = asyncio.run(traced_measure(args.runs, args.n, args.tracing))
    rows = result["pairs"]
    assert isinstance(rows, list)
    print(f"medians of {args.runs} interleaved rounds, {args.n} calls each (load {load:.1f})\n")
    print(
        "| caller -> callee | round trip via the caller (us) | the hop (us) "
        "| hop / python -> python |"
    )
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['caller']} -> {row['callee']} | {row['round_trip_us']:,.0f} "
            f"| {row['hop_us']:,.0f} | {row['ratio_to_python_python']:.2f} |"
        )
    direct = result["direct_us"]
    assert isinstance(direct, dict)
    print(
        "\ndirect round trip from a Python client (us): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in direct.items())
    )
    worst = max(rows, key=lambda row: row["ratio_to_python_python"])
    ok = worst["ratio_to_python_python"] <= TARGET
    print(
        f"worst pair {worst['caller']} -> {worst['callee']}: "
        f"{worst['ratio_to_python_python']:.2f}x python -> python "
        f"(target <= {TARGET}x): {'ok' if ok else 'MISSED'}"
    )
    if args.save:
        result["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        result["machine"] = {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load": load,
        }
        Path(args.save).write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
