"""The mesh node, independent of any transport (see docs/development.md, "The map").

    node.py       MeshNode: the AgentHost, routing, forwarding, fan-out, serving
    peers.py      Peers: peers kept connected, the routing table, rendezvous placement
    streams.py    Streams: the Subscribe streams this node serves
    transport.py  the seam: PeerTransport (to a peer), NodeHandler (from a server)
    discovery.py  PeerDiscovery: peers named by DNS
    codec.py      the contract codec: ravi types to and from ravi.mesh.v1 messages

A transport (`ravi.integrations.runtime.grpc`) implements `PeerTransport` and
serves a `NodeHandler`; the mesh never imports it.
"""
