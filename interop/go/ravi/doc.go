// Package ravi is the Go member of the ravi agent mesh: a Node hosts agent
// types and serves the ravi.mesh.v1.AgentService contract over gRPC, and a
// Client calls any node, in any language.
//
// A Node gives every agent instance (an AgentID: a type and a key) its own
// mailbox: messages to one agent are handled one at a time, in order, while
// distinct agents run concurrently. Handlers are typed:
//
//	node.Register(ravi.AgentType{
//		Name: "reviewer",
//		Handlers: []ravi.Handler{
//			ravi.Handle(func(ctx context.Context, call *ravi.Call, req *examplesv1.ReviewRequest) (*examplesv1.ReviewVerdict, error) {
//				return &examplesv1.ReviewVerdict{Approved: true}, nil
//			}),
//		},
//	})
//
// The handler's ctx carries the caller's remaining deadline and is cancelled
// when the deadline passes or the caller goes away. A handler fails a call with
// a chosen gRPC status code by returning a *ravi.Error (its Reason, if set,
// travels in a google.rpc.ErrorInfo with domain ravi.mesh.v1; without one the
// status has no ErrorInfo, as with Python's ravi errors). Any other error fails
// the call with UNKNOWN and reason HANDLER_FAILED, with ErrorInfo metadata
// exception_type, the error's Go type as %T prints it (for example
// "*errors.errorString"), and exception_message; a panic is reported the same
// way with exception_type "panic". Errors received from other nodes come back
// as *ravi.Error with their code, reason and metadata (FromError).
//
// Nodes peer with each other as docs/protocol.md ("Mesh behaviour") describes:
// each node calls Describe on its peers and keeps a Subscribe stream open to
// each, routes a Send for a type it does not host to the peer chosen by
// rendezvous hashing, and pushes published events on the matching streams.
// A node serves every AgentService RPC: Send, Publish, Subscribe, Describe,
// Multiplex (Sends multiplexed on one stream), ResolvePromise (Call.WaitFor) and
// SaveState/LoadState (agent state implementing StateSaver/StateLoader). It
// sends to each peer over one Multiplex stream, as Python nodes do (unary Send
// only to a peer that answers Multiplex with UNIMPLEMENTED).
//
// A Node traces with OpenTelemetry as docs/operations.md ("Tracing") says:
// spans "send", "handle", "publish", "deliver" and "forward" from
// Options.TracerProvider (default the global provider, a no-op unless one is
// installed), with the W3C trace context of each send and publish carried in
// Envelope.metadata and in the gRPC metadata of unary calls. A handler's ctx
// carries its handle or deliver span.
//
// gRPC server and dial options (Options.ServerOptions, Options.DialOptions,
// WithDialOptions) are passed through, so instrumentation such as OpenTelemetry's
// otelgrpc stats handlers can be added without changing this package.
package ravi
