"""Peers named by DNS: `dns:HOST:PORT` is a pool of nodes, resolved now and then."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

DNS_SCHEME = "dns:"
RESOLVE_TIMEOUT = 5.0

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolver maps a peer's DNS name and port to the "host:port" addresses of its nodes."""


@dataclass(frozen=True)
class PeerDiscovery:
    """PeerDiscovery says how peers named by DNS (`dns:HOST:PORT`) are found and kept current.

    A peer address written `dns:HOST:PORT` (or `dns:///HOST:PORT`) names a pool
    of nodes, such as a Kubernetes headless Service: each address the name
    resolves to becomes a peer of its own, so rendezvous hashing places keys
    across every node of the pool. The name is resolved again every `interval`
    seconds: new addresses are dialled, and an address that no longer resolves
    stops receiving new calls at once and is closed once the calls it is
    handling finished (or after `drain_timeout`). A resolution that fails keeps
    the addresses of the last one; a name that does not exist (NXDOMAIN, as a
    headless Service with no ready pod answers) has no address.

    Attributes:
        interval: seconds between two resolutions of each name.
        resolver: resolves (host, port) to "host:port" addresses; `resolve_dns`
            (the event loop's getaddrinfo) when None. Tests pass their own.
        drain_timeout: seconds the calls in flight to a dropped address get
            before its channel is closed.
    """

    interval: float = 10.0
    resolver: Resolver | None = None
    drain_timeout: float = 5.0


def dns_target(address: str) -> tuple[str, int] | None:
    """The (host, port) of a `dns:HOST:PORT` peer address; None for a plain HOST:PORT.

    Raises:
        ValueError: the address starts with `dns:` but names no host and port, or
            names a DNS server (`dns://SERVER/...`), which is not supported.
    """
    if not address.startswith(DNS_SCHEME):
        return None
    rest = address[len(DNS_SCHEME) :]
    if rest.startswith("//"):
        authority, _, rest = rest[2:].partition("/")
        if authority:
            raise ValueError(f"{address!r}: a DNS server in the address is not supported")
    host, _, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        raise ValueError(f"a DNS peer must be dns:HOST:PORT, got {address!r}")
    return host, int(port)


async def resolve_dns(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to now, as sorted "host:port" strings (getaddrinfo)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        if error.errno in _NO_ADDRESS:
            return []
        raise
    return sorted({_join(str(info[4][0]), port) for info in infos})


_NO_ADDRESS = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
