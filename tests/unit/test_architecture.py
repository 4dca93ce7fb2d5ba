"""The layers of python/src/ravi, as import rules (grimp builds the graph).

Every import counts: module level, inside functions, and under TYPE_CHECKING,
because each is a dependency someone has to understand.
"""

from __future__ import annotations

import grimp
import pytest

RESTATE = "ravi.integrations.runtime.restate"
GRPC = "ravi.integrations.runtime.grpc"
MESH = "ravi._mesh"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(
        "ravi", include_external_packages=True, exclude_type_checking_imports=False, cache_dir=None
    )


def _ravi_modules(graph: grimp.ImportGraph) -> list[str]:
    return sorted(m for m in graph.modules if m == "ravi" or m.startswith("ravi."))


def test_no_module_imports_itself_through_others(graph: grimp.ImportGraph) -> None:
    cycles = []
    for module in _ravi_modules(graph):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported == module or not imported.startswith("ravi"):
                continue
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert cycles == []


def test_the_type_checking_imports_are_in_the_graph(graph: grimp.ImportGraph) -> None:
    # BaseAgent names BaseRuntime under TYPE_CHECKING only: the rule above sees it.
    assert "ravi.runtime._base" in graph.find_modules_directly_imported_by("ravi._agent")


def test_restate_never_reaches_the_grpc_package(graph: grimp.ImportGraph) -> None:
    assert graph.find_shortest_chains(importer=RESTATE, imported=GRPC, as_packages=True) == set()


def test_the_mesh_node_knows_no_transport(graph: grimp.ImportGraph) -> None:
    # ravi.errors maps errors to and from gRPC status (the one place that does);
    # the mesh itself imports no grpc module and reaches no transport package.
    chains = graph.find_shortest_chains(
        importer=MESH, imported="ravi.integrations", as_packages=True
    )
    assert chains == set()
    for module in graph.find_descendants(MESH) | {MESH}:
        imported = graph.find_modules_directly_imported_by(module)
        assert not {m for m in imported if m.split(".")[0].startswith("grpc")}, module


def test_runtimes_import_no_particular_agent(graph: grimp.ImportGraph) -> None:
    runtimes = ("ravi.runtime", MESH, GRPC, f"{RESTATE}._runtime", f"{RESTATE}._context")
    for runtime in runtimes:
        for agents in ("ravi.agents", "ravi.models", "ravi.tools", "ravi.server"):
            chains = graph.find_shortest_chains(importer=runtime, imported=agents, as_packages=True)
            assert chains == set(), f"{runtime} reaches {agents}: {chains}"
