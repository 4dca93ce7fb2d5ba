"""A real PostgreSQL server for tests: a fresh cluster in a folder, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ravi.testing._processes import exited, free_port, retry_taken_ports, since, terminate

_USER = "ravi"
_DATABASE = "postgres"


def postgres_bin_dir() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, postgres), if installed.

    `RAVI_POSTGRES_BIN` names it explicitly; otherwise Debian's newest
    /usr/lib/postgresql/N/bin, else the folder of an `initdb` on PATH.
    """
    named = os.environ.get("RAVI_POSTGRES_BIN")
    if named:
        return Path(named)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class PostgresServer:
    """A PostgreSQL server process on 127.0.0.1 with its cluster and log in `base_dir`.

    PostgreSQL refuses to run as root: when this process is root, the server
    runs as the `postgres` system user (which Debian's package creates) and
    owns `base_dir`, which that user must be able to reach. `fsync` is off
    unless `durable`: a test kills the nodes that use the server, never the
    server itself, and a loaded machine starts and serves faster without it.
    """

    bin_dir: Path
    base_dir: Path
    port: int = 0
    durable: bool = False
    process: asyncio.subprocess.Process | None = None
    log: Path | None = None
    _user: dict[str, Any] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        """The URL a client connects with (trust authentication, loopback only)."""
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{_DATABASE}"

    async def start(self, *, timeout: float = 60.0) -> None:
        """Create the cluster (first time only), start the server, wait until it accepts."""
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            self._user = {"user": account.pw_uid, "group": account.pw_gid}
            os.chown(self.base_dir, account.pw_uid, account.pw_gid)
        cluster = self.base_dir / "cluster"
        self.log = self.base_dir / "postgres.log"
        if not (cluster / "PG_VERSION").exists():
            await self._run(
                self.bin_dir / "initdb",
                "--pgdata",
                str(cluster),
                "--username",
                _USER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-instructions",
                *(() if self.durable else ("--no-sync",)),
            )
        picked = not self.port

        async def attempt() -> None:
            if picked:
                self.port = free_port()
            await self._serve(cluster, timeout)

        await retry_taken_ports(attempt, retry=picked)

    async def _serve(self, cluster: Path, timeout: float) -> None:
        assert self.log is not None
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={cluster}"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        with self.log.open("ab") as log:
            written = log.tell()
            self.process = await asyncio.create_subprocess_exec(
                str(self.bin_dir / "postgres"),
                "-D",
                str(cluster),
                "-p",
                str(self.port),
                *settings,
                stdout=log,
                stderr=log,
                start_new_session=True,
                **self._user,
            )
        try:
            async with asyncio.timeout(timeout):
                while not await self._accepts():
                    if self.process.returncode is not None:
                        raise exited("postgres", self.process.returncode, since(self.log, written))
                    await asyncio.sleep(0.05)
        except BaseException:
            await self.kill()
            raise

    async def _run(self, *command: Path | str) -> None:
        process = await asyncio.create_subprocess_exec(
            *map(str, command),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            **self._user,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        if process.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {output.decode(errors='replace')}")

    async def _accepts(self) -> bool:
        import asyncpg  # noqa: PLC0415 - the postgres extra, needed only here

        try:
            connection = await asyncpg.connect(self.dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await connection.close()
        return True

    async def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        self.process = None

    async def stop(self, *, timeout: float = 15.0) -> None:
        """Stop the server (fast shutdown: SIGINT ends open sessions; SIGKILL after `timeout`)."""
        await terminate(self.process, signal.SIGINT, timeout)
        self.process = None


@contextlib.asynccontextmanager
async def running_postgres(*, durable: bool = False) -> AsyncIterator[PostgresServer]:
    """Run a fresh PostgreSQL server on a free loopback port until the block ends.

    Its cluster lives in a new temporary folder, removed afterwards.

    Args:
        durable: keep fsync on (off by default, see `PostgresServer`).

    Raises:
        RuntimeError: PostgreSQL's server programs are not installed (`make setup`
            installs Debian's postgresql-15), or the server did not start.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None or not (bin_dir / "postgres").exists():
        raise RuntimeError(
            "PostgreSQL is not installed: `make setup` installs Debian's postgresql-15 "
            "(or set RAVI_POSTGRES_BIN to the folder of initdb and postgres)"
        )
    with tempfile.TemporaryDirectory(prefix="ravi-pg-") as base_dir:
        server = PostgresServer(bin_dir, Path(base_dir), durable=durable)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
