"""The languages of the mesh, from interop/languages.toml: how the suites start each one's node."""

from __future__ import annotations

import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.paths import REPO_ROOT

MANIFEST = REPO_ROOT / "interop" / "languages.toml"


@dataclass(frozen=True)
class Language:
    """One language's entry of interop/languages.toml."""

    name: str
    node: tuple[str, ...]
    conformance: tuple[str, ...]
    demo: tuple[str, ...]
    built: str
    short: str

    def command(
        self,
        node_id: str,
        *extra: str,
        listen: str = "127.0.0.1:0",
        conformance_type: str | None = None,
        demo: bool = False,
        peers: tuple[str, ...] = (),
    ) -> list[str]:
        """A node of this language: its id, listen address, conformance agent and peers."""
        command = [*self._expand(self.node), "--listen", listen, "--node-id", node_id]
        if conformance_type is not None:
            command += self._expand(self.conformance, conformance_type=conformance_type)
        if demo:
            command += self._expand(self.demo)
        for i, address in enumerate(peers):
            command += ["--peer", f"p{i}={address}"]
        return [*command, *extra]

    def available(self) -> bool:
        """Whether the node is built (`make build`)."""
        return not self.built or Path(self._fill(self.built)).exists()

    def _expand(self, arguments: tuple[str, ...], **values: str) -> list[str]:
        expanded = [self._fill(argument, **values) for argument in arguments]
        if expanded and expanded[0] == "node":
            expanded[0] = shutil.which("node") or "node"
        return expanded

    @staticmethod
    def _fill(text: str, **values: str) -> str:
        return text.format(repo=REPO_ROOT, python=sys.executable, **values)


def _load() -> dict[str, Language]:
    entries = tomllib.loads(MANIFEST.read_text())
    return {
        name: Language(
            name=name,
            node=tuple(entry["node"]),
            conformance=tuple(entry["conformance"]),
            demo=tuple(entry["demo"]),
            built=entry["built"],
            short=entry["short"],
        )
        for name, entry in entries.items()
    }


LANGUAGES: dict[str, Language] = _load()
"""Every language of the mesh, by name, the reference implementation (Python) first."""
