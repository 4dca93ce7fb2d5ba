"""Where ravi finds what it does not install itself: the tools `make` builds, and its docs.

A wheel installs the `ravi` package alone. The demo's Go and Node nodes,
Jaeger, restate-server and the Markdown files the demo searches live in a ravi
checkout, where `make` builds and installs them. The commands find that
checkout from `$RAVI_HOME`, or else from where this package was installed from
(an editable install, as `make setup` makes, points into the checkout), and
never from the current folder: they work from any folder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ravi._cli_errors import UsageError

HOME_ENV = "RAVI_HOME"


def checkout() -> Path | None:
    """The ravi checkout: `$RAVI_HOME`, or the one this package's source lives in."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    # An editable install: python/src/ravi/_home.py, three levels under the root.
    root = Path(__file__).resolve().parents[3]
    return root if _is_checkout(root) else None


def _is_checkout(folder: Path) -> bool:
    return (folder / "Makefile").is_file() and (folder / "proto" / "ravi" / "mesh").is_dir()


def _home(what: str) -> Path:
    home = checkout()
    if home is None:
        raise UsageError(
            f"{what} comes with a ravi checkout and this ravi is not installed from one: "
            f"set {HOME_ENV} to a checkout where `make build` ran"
        )
    if not _is_checkout(home):
        raise UsageError(f"{HOME_ENV}={home} is not a ravi checkout (no Makefile, no proto/)")
    return home


@dataclass(frozen=True)
class Tool:
    """Something `make` puts into the checkout: where, and the target that makes it."""

    what: str
    path: str
    target: str
    made: str = "built"

    def find(self) -> Path:
        """Its path in the checkout, or a UsageError saying what is missing and how to make it."""
        home = _home(self.what)
        found = home / self.path
        if not found.exists():
            raise UsageError(
                f"{self.what} is not {self.made}: {found} is missing; "
                f"run `make {self.target}` in {home}"
            )
        return found

    def missing(self) -> str | None:
        """Why the tool cannot be used, or None when it can."""
        try:
            self.find()
        except UsageError as error:
            return str(error)
        return None


GO_NODE = Tool("the Go node (ravi-go)", ".tools/bin/ravi-go", "build-go")
NODE_NODE = Tool("the Node node (ravi-node)", "interop/node/dist/src/cli.js", "build-node")
JAEGER = Tool("Jaeger", ".tools/bin/jaeger", "jaeger")
JAEGER_CONFIG = Tool("Jaeger's configuration", "tools/jaeger.yaml", "jaeger")
RESTATE_SERVER = Tool(
    "restate-server",
    "tools/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server",
    "restate-server",
    "installed",
)


def docs() -> Path:
    """The Markdown files of the checkout, which the demo's searcher searches by default."""
    folder = _home("the docs the demo searches (the default of --docs)") / "docs"
    if not folder.is_dir():
        raise UsageError(f"{folder} is missing: pass --docs DIR, a folder of Markdown files")
    return folder


def node_program() -> str | None:
    """Why the Node node cannot run here (no `node` on PATH), or None."""
    if shutil.which("node") is None:
        return "the Node node needs Node.js 20 (`node`) on PATH, and it is not there"
    return NODE_NODE.missing()
