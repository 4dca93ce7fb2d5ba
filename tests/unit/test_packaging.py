"""The ravi distribution imports the same way installed editable and from a wheel.

The generated modules live in gen/python/ravi and import each other as
`ravi.mesh.v1...`; python/src/ravi/{mesh,examples} link to them (see
docs/development.md). These tests prove both install modes give one `ravi`
package that holds the hand-written and the generated modules.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.paths import REPO_ROOT

PROBE = """
import json, ravi, ravi.mesh.v1.agent_service_pb2 as svc, ravi.examples.v1.examples_pb2 as ex
from ravi.mesh.v1 import agent_service_pb2_grpc
print(json.dumps({"ravi": ravi.__file__, "svc": svc.__file__, "ex": ex.__file__,
                  "service": svc.DESCRIPTOR.services_by_name["AgentService"].full_name,
                  "stub": agent_service_pb2_grpc.AgentServiceStub.__name__}))
"""


def _probe(env: dict[str, str] | None = None) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
        cwd="/",
    )
    return dict(json.loads(result.stdout))


def test_editable_install_serves_generated_modules_from_gen() -> None:
    found = _probe()
    assert Path(found["ravi"]).is_relative_to(REPO_ROOT / "python" / "src")
    assert Path(found["svc"]).resolve().is_relative_to(REPO_ROOT / "gen" / "python")
    assert Path(found["ex"]).resolve().is_relative_to(REPO_ROOT / "gen" / "python")
    assert found["service"] == "ravi.mesh.v1.AgentService"


def test_wheel_holds_real_files_and_imports_without_the_source_tree(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=REPO_ROOT / "python",
        capture_output=True,
        timeout=120,
        check=True,
    )
    (wheel,) = tmp_path.glob("ravi-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        symlinks = [i.filename for i in archive.infolist() if (i.external_attr >> 28) == 0o12]
    assert {
        "ravi/__init__.py",
        "ravi/py.typed",
        "ravi/mesh/__init__.py",
        "ravi/mesh/v1/__init__.py",
        "ravi/mesh/v1/agent_service_pb2.py",
        "ravi/mesh/v1/agent_service_pb2.pyi",
        "ravi/mesh/v1/agent_service_pb2_grpc.py",
        "ravi/examples/v1/examples_pb2.py",
        "ravi/conformance/v1/conformance_pb2.py",
        "ravi/react/v1/react_pb2.py",
        "ravi/a2a/v1/a2a_pb2.py",
        "ravi/server/_static/index.html",
    } <= names
    assert symlinks == []

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-t", str(target), str(wheel)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    # PYTHONPATH entries precede the editable install's .pth entry on sys.path,
    # so the probe imports ravi from the wheel's files only.
    found = _probe({**os.environ, "PYTHONPATH": str(target)})
    for key in ("ravi", "svc", "ex"):
        assert Path(found[key]).is_relative_to(target), found[key]
    assert found["stub"] == "AgentServiceStub"


def test_cli_prints_version() -> None:
    from ravi import __version__

    result = subprocess.run(
        [str(Path(sys.executable).parent / "ravi"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == f"ravi {__version__}"
