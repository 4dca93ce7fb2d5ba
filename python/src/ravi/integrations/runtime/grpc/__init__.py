"""GrpcRuntime: agents on many machines and in many languages, over ravi.mesh.v1.

This package is the gRPC transport of the mesh node (`ravi._mesh`): grpc.aio
channels and server, the Multiplex stream, status mapping, health,
reflection and TLS. Routing, forwarding and serving live in the mesh node.
"""

from ravi._mesh.discovery import PeerDiscovery
from ravi.integrations.runtime.grpc._options import GrpcRuntimeOptions
from ravi.integrations.runtime.grpc._runtime import GrpcRuntime

__all__ = ["GrpcRuntime", "GrpcRuntimeOptions", "PeerDiscovery"]
