"""GrpcRuntime: agents on many machines and in many languages, over ravi.mesh.v1."""

from ravi.integrations.runtime.grpc._peers import PeerDiscovery
from ravi.integrations.runtime.grpc._runtime import GrpcRuntime
from ravi.integrations.runtime.grpc._security import TlsConfig

__all__ = ["GrpcRuntime", "PeerDiscovery", "TlsConfig"]
