"""Runtimes that need infrastructure: GrpcRuntime (a gRPC mesh) and RestateRuntime."""
