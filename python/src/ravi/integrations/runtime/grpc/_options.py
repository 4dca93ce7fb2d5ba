"""GrpcRuntimeOptions: every setting of a node, in one place.

The `ravi node` command line and its TOML file are derived from these fields
(`ravi._options`): the field `default_timeout` is the flag `--default-timeout`
and the key `default_timeout`, with this field's default and help. The
defaults shared by every language come from the contract's facts
(`proto/ravi/mesh/v1/contract.toml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ravi._options import option
from ravi.integrations.runtime.grpc._security import TlsConfig
from ravi.mesh.v1 import contract


@dataclass(frozen=True, kw_only=True)
class GrpcRuntimeOptions:
    """GrpcRuntimeOptions configures a GrpcRuntime; every zero value is a useful default.

    Pass it as `GrpcRuntime(host, port, remote_peers, options=GrpcRuntimeOptions(...))`.
    Each field is also a `ravi node` flag (`node_id` is `--node-id`) and a key
    of its `--config` TOML file, with the same meaning.
    """

    node_id: str | None = field(
        default=None,
        metadata=option("This node's id in the mesh (default: the advertised or listen address)."),
    )
    advertise: str | None = field(
        default=None,
        metadata=option("The address peers dial to reach this node, when not the listen address."),
    )
    token: str | None = field(
        default=None,
        metadata=option(
            "Bearer token every caller must present (also sent to peers unless --peer-token).",
            envvar="RAVI_TOKEN",
        ),
    )
    peer_token: str | None = field(
        default=None, metadata=option("Bearer token to present to peers.")
    )
    health_without_auth: bool = field(
        default=False, metadata=option("Answer health checks without a token.")
    )
    tls_cert: Path | None = field(
        default=None, metadata=option("Serve TLS with this certificate (PEM).")
    )
    tls_key: Path | None = field(default=None, metadata=option("The TLS private key (PEM)."))
    tls_client_ca: Path | None = field(
        default=None, metadata=option("Require client certificates from this CA (mutual TLS).")
    )
    peer_tls_ca: Path | None = field(
        default=None, metadata=option("Dial peers with TLS, trusting this CA.")
    )
    peer_tls_cert: Path | None = field(
        default=None, metadata=option("Present this certificate to peers (mutual TLS).")
    )
    peer_tls_key: Path | None = field(
        default=None, metadata=option("The private key of --peer-tls-cert.")
    )
    peer_tls_server_name: str | None = field(
        default=None,
        metadata=option(
            "The name peers' certificates must carry, when it is not the dialled host "
            "(dns: peers are dialled by IP)."
        ),
    )
    default_timeout: float = field(
        default=contract.DEFAULT_TIMEOUT_SECONDS,
        metadata=option("Seconds a send may take when it names no timeout."),
    )
    mailbox_capacity: int = field(
        default=contract.DEFAULT_MAILBOX_CAPACITY,
        metadata=option("Messages queued or running per agent instance at most."),
    )
    max_message_bytes: int = field(
        default=contract.DEFAULT_MAX_MESSAGE_BYTES,
        metadata=option("The largest message the node sends or accepts."),
    )
    grace_period: float = field(
        default=contract.DEFAULT_GRACE_PERIOD_SECONDS,
        metadata=option("Seconds calls in flight get to finish when the node stops."),
    )

    def __post_init__(self) -> None:
        if self.default_timeout <= 0:
            raise ValueError(f"default_timeout must be positive, got {self.default_timeout}")
        if self.mailbox_capacity < 1:
            raise ValueError(f"mailbox_capacity must be at least 1, got {self.mailbox_capacity}")
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, got {self.max_message_bytes}")
        if self.grace_period < 0:
            raise ValueError(f"grace_period must not be negative, got {self.grace_period}")

    def server_tls(self) -> TlsConfig | None:
        """The TLS the node serves with, if any."""
        if not (self.tls_cert or self.tls_key or self.tls_client_ca):
            return None
        return TlsConfig(cert_file=self.tls_cert, key_file=self.tls_key, ca_file=self.tls_client_ca)

    def peer_tls(self) -> TlsConfig | None:
        """The TLS the node dials its peers with, if any."""
        if not (self.peer_tls_ca or self.peer_tls_cert or self.peer_tls_key):
            return None
        return TlsConfig(
            cert_file=self.peer_tls_cert,
            key_file=self.peer_tls_key,
            ca_file=self.peer_tls_ca,
            server_name=self.peer_tls_server_name,
        )
