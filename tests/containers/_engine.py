"""A private Docker engine for tests/containers, which leaves nothing behind.

dockerd (with its containerd) runs in a network namespace and a mount
namespace of its own, with its own socket, data root, exec root, cgroup parent
and daemon configuration, never the machine's default ones:

- network: `ip netns add` makes the namespace; slirp4netns gives it a user-mode
  uplink (outbound connections through the host's sockets, DNS on 10.0.2.3), so
  builds reach the package registries with no route, NAT rule or sysctl changed
  on the host. dockerd's bridges and iptables rules live in the namespace and
  go with it; a published port is reached from the host through a slirp4netns
  forward from a free loopback port (`Engine.forward`).
- mounts: dockerd starts in a private mount namespace with a tmpfs on /run
  (containerd and dockerd keep sockets at fixed places there), so its overlay
  mounts and runtime files never show on the host.

`Engine.stop` stops the daemon (SIGTERM, bounded), then removes every trace;
`leftovers` lists what would still be there. A run that died without stopping
(kill -9) is cleaned up by the next one (`reap_stale_runs`).

The engine itself (dockerd, containerd, runc, the CLI, compose and buildx) is
unpacked from Debian packages by tests/containers/install-engine.sh (`make
test-containers`), into a machine-level cache; `.tools/engine` links to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.paths import REPO_ROOT

ENGINE_LINK = REPO_ROOT / ".tools" / "engine"
"""Where `make test-containers` links the unpacked engine."""

SLIRP_DNS = "10.0.2.3"
"""slirp4netns' DNS forwarder, as seen from the namespace (and so from containers)."""

_PREFIX = "ravi-engine-"
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def cache_root() -> Path:
    """The machine-level cache of the container tests ($RAVI_CACHE, else ~/.cache/ravi)."""
    base = os.environ.get("RAVI_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "ravi"
    )
    return Path(base) / "containers"


def unavailable() -> str | None:
    """Why this machine cannot run a container engine at all, or None when it can."""
    if os.geteuid() != 0:
        return "dockerd needs root, and these tests run as an unprivileged user"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem, which dockerd's overlay2 storage needs"
    if not any(_CGROUP_ROOT.glob("*")):
        return "no cgroup filesystem is mounted at /sys/fs/cgroup"
    probe = subprocess.run(
        ["unshare", "--net", "--mount", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"network and mount namespaces cannot be created here: {probe.stderr.strip()}"
    return None


def installed_engine() -> Path:
    """The unpacked engine; fails with the command that installs it."""
    dockerd = ENGINE_LINK / "usr" / "sbin" / "dockerd"
    if not dockerd.is_file():
        raise RuntimeError(
            f"no container engine at {ENGINE_LINK}: run `make test-containers`, which installs it"
        )
    return ENGINE_LINK.resolve()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run(
    command: Sequence[str], *, timeout: float, check: bool = True, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_pids(name: str) -> list[int]:
    result = _run(["ip", "netns", "pids", name], timeout=10, check=False)
    return [int(pid) for pid in result.stdout.split()]


def _cgroup_dirs(parent: str) -> list[Path]:
    """The engine's cgroup folders, one per controller hierarchy (cgroup v1) or one (v2)."""
    return [path for path in _CGROUP_ROOT.glob(f"*/{parent}") if path.is_dir()] + [
        path for path in [_CGROUP_ROOT / parent] if path.is_dir()
    ]


def _cgroup_pids(parent: str) -> set[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs(parent):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in procs.read_text().split())
    return pids


def _remove_cgroups(parent: str) -> None:
    for top in _cgroup_dirs(parent):
        for folder in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _namespace_members(kind: str, inode: str) -> list[int]:
    """Processes in the namespace `inode` of `kind` (net, mnt)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "ns" / kind) == inode:
                members.append(int(entry.name))
    return members


_DOCKER_LINK = re.compile(r"docker\d*|br-[0-9a-f]{12}|veth[0-9a-f]{7}|tap\d+")


def host_state() -> dict[str, list[str]]:
    """What an engine would leave on the host by mistake: its firewall rules, links, folders.

    Only what dockerd and slirp4netns make (DOCKER chains, docker0, br-*, veth*,
    tap*, /run/docker, /run/containerd), so that other programs changing the
    host meanwhile do not count.
    """
    state: dict[str, list[str]] = {}
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            lines = _run([tool], timeout=30, check=False).stdout.splitlines()
            state[tool] = [line for line in lines if "docker" in line.lower()]
    links = _run(["ip", "-o", "link"], timeout=10).stdout.splitlines()
    names = (line.split(":")[1].strip().split("@")[0] for line in links)
    state["links"] = sorted(name for name in names if _DOCKER_LINK.fullmatch(name))
    state["runtime folders"] = sorted(
        str(p) for p in (Path("/run/docker"), Path("/run/containerd")) if p.exists()
    )
    return state


@dataclass
class Engine:
    """dockerd and its uplink, started by `start`, stopped (and cleaned up) by `stop`."""

    install: Path
    run_dir: Path
    _slirp: subprocess.Popen[bytes] | None = None
    _dockerd: subprocess.Popen[bytes] | None = None
    _namespaces: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The network namespace's name, and the cgroup parent's."""
        return f"{_PREFIX}{self.run_dir.name}"

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def cgroup_parent(self) -> str:
        return self.name

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of docker and docker compose, pointed at this engine only."""
        path = f"{self.install}/usr/bin:{self.install}/usr/sbin:{os.environ['PATH']}"
        return {
            **os.environ,
            "PATH": path,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(self.run_dir / "config"),
            "DOCKER_BUILDKIT": "1",
            "BUILDKIT_PROGRESS": "plain",
            "COMPOSE_ANSI": "never",
            **(extra or {}),
        }

    def docker(
        self,
        *arguments: str,
        timeout: float = 120,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the engine's docker CLI; raises with its output when it fails (check)."""
        return _run(
            [str(self.install / "usr" / "bin" / "docker"), *arguments],
            timeout=timeout,
            check=check,
            env=self.env(env),
            cwd=cwd,
        )

    # --- lifecycle -----------------------------------------------------------------

    def start(self, *, timeout: float = 120) -> None:
        self.run_dir.mkdir(parents=True)
        (self.run_dir / "owner").write_text(f"{os.getpid()} {self.name}\n")
        config = self.run_dir / "config" / "cli-plugins"
        config.mkdir(parents=True)
        for plugin in (self.install / "usr" / "libexec" / "docker" / "cli-plugins").iterdir():
            (config / plugin.name).symlink_to(plugin)
        (self.run_dir / "daemon.json").write_text(json.dumps({"features": {"buildkit": True}}))
        _run(["ip", "netns", "add", self.name], timeout=10)
        netns = f"/run/netns/{self.name}"
        self._uplink(netns, timeout)
        self._namespaces["net"] = f"net:[{os.stat(netns).st_ino}]"
        dockerd = [
            *("nsenter", f"--net={netns}", "unshare", "--mount", "--propagation", "private"),
            *("sh", "-c", 'mount -t tmpfs -o mode=0755 ravi-engine-run /run && exec "$@"', "sh"),
            str(self.install / "usr" / "sbin" / "dockerd"),
            *(
                "--host",
                f"unix://{self.socket}",
                "--config-file",
                str(self.run_dir / "daemon.json"),
            ),
            *("--data-root", str(self.run_dir / "data"), "--exec-root", str(self.run_dir / "exec")),
            *(
                "--pidfile",
                str(self.run_dir / "dockerd.pid"),
                "--cgroup-parent",
                self.cgroup_parent,
            ),
            *("--storage-driver", "overlay2", "--dns", SLIRP_DNS, "--log-level", "warn"),
            *("--userland-proxy-path", str(self.install / "usr" / "sbin" / "docker-proxy")),
        ]
        with (self.run_dir / "dockerd.log").open("wb") as log:
            self._dockerd = subprocess.Popen(
                dockerd,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while self.docker("version", check=False, timeout=30).returncode != 0:
            if self._dockerd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        self._namespaces["mnt"] = os.readlink(f"/proc/{self._dockerd.pid}/ns/mnt")

    def _uplink(self, netns: str, timeout: float) -> None:
        ready_read, ready_write = os.pipe()
        with (self.run_dir / "slirp4netns.log").open("wb") as log:
            self._slirp = subprocess.Popen(
                [
                    *("slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback"),
                    *("--netns-type=path", "--api-socket", str(self.run_dir / "slirp.sock")),
                    *("--ready-fd", str(ready_write), netns, "tap0"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(ready_write,),
                start_new_session=True,
            )
        os.close(ready_write)
        try:
            os.set_blocking(ready_read, True)
            deadline = time.monotonic() + timeout
            ready = b""
            while not ready and time.monotonic() < deadline and self._slirp.poll() is None:
                ready = os.read(ready_read, 1)
        finally:
            os.close(ready_read)
        if ready != b"1":
            raise RuntimeError(
                "slirp4netns did not start: "
                + (self.run_dir / "slirp4netns.log").read_text(errors="replace")
            )

    def forward(self, guest_port: int) -> int:
        """A free loopback port on the host that reaches `guest_port` of the engine's namespace."""
        for _ in range(5):  # another process may take the free port first
            host_port = free_port()
            request = {
                "execute": "add_hostfwd",
                "arguments": {
                    "proto": "tcp",
                    "host_addr": "127.0.0.1",
                    "host_port": host_port,
                    "guest_port": guest_port,
                },
            }
            with socket.socket(socket.AF_UNIX) as api:
                api.settimeout(10)
                api.connect(str(self.run_dir / "slirp.sock"))
                api.sendall(json.dumps(request).encode())
                api.shutdown(socket.SHUT_WR)
                reply = json.loads(api.recv(65536))
            if "return" in reply:
                return host_port
        raise RuntimeError(f"slirp4netns could not forward a port to {guest_port}: {reply}")

    def log_tail(self, lines: int = 40) -> str:
        log = self.run_dir / "dockerd.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, timeout: float = 60) -> list[str]:
        """Stop dockerd (SIGTERM) and the uplink, remove the namespace, cgroups and files.

        Returns what went wrong (a daemon that had to be killed); never raises,
        so that it may run from any teardown.
        """
        problems = []
        if self._dockerd is not None and self._dockerd.poll() is None:
            self._dockerd.send_signal(signal.SIGTERM)
            try:
                self._dockerd.wait(timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"dockerd ignored SIGTERM for {timeout} s:\n{self.log_tail()}")
                self._dockerd.kill()
                self._dockerd.wait()
        # Whatever dockerd left (container shims, their containers) is killed.
        for pid in {*_netns_pids(self.name), *_cgroup_pids(self.cgroup_parent)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                problems.append(f"process {pid} outlived dockerd")
        if self._slirp is not None and self._slirp.poll() is None:
            self._slirp.terminate()
            try:
                self._slirp.wait(10)
            except subprocess.TimeoutExpired:
                self._slirp.kill()
                self._slirp.wait()
        _run(["ip", "netns", "delete", self.name], timeout=10, check=False)
        _remove_cgroups(self.cgroup_parent)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return problems

    def leftovers(self) -> list[str]:
        """Everything of this engine still on the machine after `stop` (nothing, normally)."""
        found = [
            f"process {pid} in the engine's {kind} namespace"
            for kind, inode in self._namespaces.items()
            for pid in _namespace_members(kind, inode)
        ]
        if self.name in _run(["ip", "netns", "list"], timeout=10).stdout.split():
            found.append(f"network namespace {self.name}")
        found += [f"cgroup {path}" for path in _cgroup_dirs(self.cgroup_parent)]
        mounts = Path("/proc/self/mountinfo").read_text()
        found += [f"mount {line}" for line in mounts.splitlines() if str(self.run_dir) in line]
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if (
                    entry.name.isdigit()
                    and str(self.run_dir).encode() in (entry / "cmdline").read_bytes()
                ):
                    found.append(f"process {entry.name}: {(entry / 'cmdline').read_bytes()!r}")
        if self.run_dir.exists():
            found.append(f"folder {self.run_dir}")
        return found


@contextlib.contextmanager
def running_engine(install: Path, runs: Path) -> Iterator[Engine]:
    """An engine in a run folder under `runs`, stopped and removed on exit, also on failure."""
    reap_stale_runs(runs)
    engine = Engine(install, runs / f"{os.getpid()}-{time.time_ns() % 10**9}")
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


def reap_stale_runs(runs: Path) -> None:
    """Clean up after engines whose test process died without stopping them (kill -9)."""
    if not runs.is_dir():
        return
    for run_dir in runs.iterdir():
        owner = run_dir / "owner"
        try:
            pid, name = owner.read_text().split()
        except (OSError, ValueError):
            continue
        if _alive(int(pid)):
            continue
        for process in {*_netns_pids(name), *_cgroup_pids(name)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process, signal.SIGKILL)
        pidfile = run_dir / "dockerd.pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        for entry in Path("/proc").iterdir():  # slirp4netns names the run folder
            with contextlib.suppress(OSError, ProcessLookupError):
                if (
                    entry.name.isdigit()
                    and str(run_dir).encode() in (entry / "cmdline").read_bytes()
                ):
                    os.kill(int(entry.name), signal.SIGKILL)
        time.sleep(0.5)
        _run(["ip", "netns", "delete", name], timeout=10, check=False)
        _remove_cgroups(name)
        shutil.rmtree(run_dir, ignore_errors=True)
