"""Per-hop latency between the languages of the mesh, measured in one run.

Three nodes (Python, Go, Node) host a conformance agent each. For every ordered
pair (caller, callee) the client sends `Forward` to the caller's agent, which
sends `Echo` on to the callee's agent; the hop's cost is the median round trip
of that call minus the median of a direct `Echo` to the caller's agent.

    .venv/bin/python bench/interop_hops.py --save bench/results/interop.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from ravi import AgentId
from ravi.conformance.v1 import conformance_pb2 as conf
from ravi.integrations.runtime.grpc import GrpcRuntime
from ravi.mesh.v1 import types_pb2
from ravi.testing import NodeProcess, ravi_command, start_node

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = ("python", "go", "node")
AGENT = {language: f"conformance-{language}" for language in LANGUAGES}


def command(language: str, peers: list[str]) -> list[str]:
    flags = [f for p in peers for f in ("--peer", p)]
    listen = ["--listen", "127.0.0.1:0", "--node-id", language]
    if language == "python":
        return [
            *ravi_command(), "node", *listen, *flags, "--setup",
            "ravi.testing:conformance_setup", "--setup-arg", f"agent_type={AGENT[language]}",
        ]  # fmt: skip
    if language == "go":
        binary = ROOT / ".tools" / "bin" / "ravi-go"
        return [str(binary), "node", *listen, *flags, "--conformance-type", AGENT[language]]
    cli = ROOT / "interop" / "node" / "dist" / "src" / "cli.js"
    return ["node", str(cli), "node", *listen, *flags, "--conformance-type", AGENT[language]]


async def median_us(call: object, n: int) -> float:
    assert callable(call)
    for _ in range(20):
        await call()
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--save")
    args = parser.parse_args()
    nodes: dict[str, NodeProcess] = {}
    try:
        for language in LANGUAGES:
            nodes[language] = await start_node(
                command(language, [f"{n}={p.address}" for n, p in nodes.items()])
            )
        client = GrpcRuntime(remote_peers={n: p.address for n, p in nodes.items()})
        async with client:
            for agent_type in AGENT.values():
                await client.wait_until_ready(agent_type)
            await asyncio.sleep(1)  # every node learns the nodes that list it
            direct = {}
            for language in LANGUAGES:
                agent = AgentId(AGENT[language], "hops")

                async def echo(agent: AgentId = agent) -> None:
                    await client.send_message(conf.Echo(text="x"), agent)

                direct[language] = await median_us(echo, args.n)
            rows = []
            for caller in LANGUAGES:
                for callee in LANGUAGES:
                    forward = conf.Forward(
                        target=types_pb2.AgentId(type=AGENT[callee], key="hops-target"),
                        text="x",
                    )
                    agent = AgentId(AGENT[caller], "hops")

                    async def via(agent: AgentId = agent, forward: conf.Forward = forward) -> None:
                        await client.send_message(forward, agent)

                    total = await median_us(via, args.n)
                    rows.append(
                        {
                            "caller": caller,
                            "callee": callee,
                            "round_trip_us": round(total, 1),
                            "hop_us": round(total - direct[caller], 1),
                        }
                    )
    finally:
        for node in nodes.values():
            await node.stop()
    print("| caller -> callee | round trip via the caller (us) | the hop itself (us) |")
    print("|---|---|---|")
    for row in rows:
        print(
            f"| {row['caller']} -> {row['callee']} | {row['round_trip_us']:,.0f} "
            f"| {row['hop_us']:,.0f} |"
        )
    print(
        "\ndirect round trip from a Python client (us): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in direct.items())
    )
    if args.save:
        Path(args.save).write_text(  # noqa: ASYNC240 - once, after the measurement
            json.dumps({"direct_us": direct, "pairs": rows, "n": args.n}, indent=1) + "\n"
        )


if __name__ == "__main__":
    asyncio.run(main())
