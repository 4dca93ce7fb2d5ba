"""Where the repository and its bootstrapped tools are, for tests and fixtures."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = Path(sys.executable)
BUF = REPO_ROOT / "tools" / "node_modules" / ".bin" / "buf"
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
RESTATE_SERVER = (
    REPO_ROOT
    / "tools"
    / "node_modules"
    / "@restatedev"
    / "restate-server-linux-x64"
    / "bin"
    / "restate-server"
)
