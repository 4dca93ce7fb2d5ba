package ravi

import (
	"context"
	"maps"
	"runtime/debug"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc/codes"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"
)

// service implements ravi.mesh.v1.AgentService for a Node.
type service struct {
	meshv1.UnimplementedAgentServiceServer
	n *Node
}

func (s *service) Send(ctx context.Context, req *meshv1.SendRequest) (*meshv1.SendResponse, error) {
	ctx, cancel, err := answerBeforeDeadline(ctx, s.n.opts.DefaultTimeout)
	if err != nil {
		return nil, err
	}
	defer cancel()
	// A delivery keeps its publish span as parent (and link); a send is the RPC's child.
	if env := rpcTraceInto(ctx, req.GetEnvelope()); req.GetTopic() == nil && env != req.GetEnvelope() {
		req = proto.CloneOf(req)
		req.Envelope = env
	}
	resp, err := s.n.serveSend(ctx, req, incomingTrace(ctx))
	return resp, toStatusError(err)
}

// deadlineMargin is how long before a unary call's deadline its handler's
// context ends. grpc-go resets a stream whose deadline passes without a
// status (RST_STREAM CANCEL); ending the handler first lets the node answer
// DEADLINE_EXCEEDED, as every node does (agent_service.proto).
const deadlineMargin = 5 * time.Millisecond

// answerBeforeDeadline is the context a unary method runs in: the call's
// deadline less deadlineMargin, or the default timeout for a call without one.
// A call with no time left fails at once with DEADLINE_EXCEEDED.
func answerBeforeDeadline(ctx context.Context, fallback time.Duration) (context.Context, context.CancelFunc, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		ctx, cancel := context.WithTimeout(ctx, fallback)
		return ctx, cancel, nil
	}
	if time.Until(deadline) <= deadlineMargin {
		return nil, nil, status.Error(codes.DeadlineExceeded, "the call's deadline passed before it was handled")
	}
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(-deadlineMargin))
	return ctx, cancel, nil
}

// refuseSpentDeadlines answers a call with less than deadlineMargin left
// DEADLINE_EXCEEDED before grpc-go starts its deadline timer, which would
// otherwise reset the stream without a status.
func refuseSpentDeadlines(ctx context.Context, _ *tap.Info) (context.Context, error) {
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= deadlineMargin {
		return ctx, status.Error(codes.DeadlineExceeded, "the call's deadline passed before it was handled")
	}
	return ctx, nil
}

// serveSend handles a Send received from a caller (a unary Send or a
// Multiplex frame) and gives its failure the ErrorInfo metadata every reason
// carries (errors.proto); a failure decided by another node keeps its own.
func (n *Node) serveSend(ctx context.Context, req *meshv1.SendRequest, tc traceContext) (*meshv1.SendResponse, error) {
	resp, err := n.handleSend(ctx, req, tc, true)
	if err == nil {
		return resp, nil
	}
	e := FromError(err)
	if e.Reason == "" {
		return nil, e
	}
	md := maps.Clone(e.Metadata)
	if md == nil {
		md = map[string]string{}
	}
	setDefault(md, "node_id", n.id)
	if e.Reason != ReasonBadID {
		setDefault(md, "agent_type", req.GetRecipient().GetType())
	}
	if t := req.GetEnvelope().GetPayload().GetType(); t != "" {
		setDefault(md, "message_type", t)
	}
	return resp, &Error{Code: e.code(), Reason: e.Reason, Message: e.Message, Metadata: md}
}

func setDefault(md map[string]string, key, value string) {
	if _, ok := md[key]; !ok {
		md[key] = value
	}
}

func (s *service) Publish(ctx context.Context, req *meshv1.PublishRequest) (*meshv1.PublishResponse, error) {
	env := req.GetEnvelope()
	if tc := incomingTrace(ctx); tc.traceparent != "" && env.GetMetadata()["traceparent"] == "" {
		env = proto.CloneOf(env)
		if env.Metadata == nil {
			env.Metadata = map[string]string{}
		}
		env.Metadata["traceparent"] = tc.traceparent
		if tc.tracestate != "" {
			env.Metadata["tracestate"] = tc.tracestate
		}
	}
	if env != nil && env.GetMessageId() == "" {
		env = proto.CloneOf(env)
		env.MessageId = newMessageID()
	}
	resp, err := s.n.publish(ctx, req.GetTopic(), env, req.GetScope(), false)
	return resp, toStatusError(err)
}

func (s *service) Subscribe(req *meshv1.SubscribeRequest, stream meshv1.AgentService_SubscribeServer) error {
	n := s.n
	release, err := n.holdStream(stream.Context())
	if err != nil {
		return err
	}
	defer release()
	var filters []Filter
	for _, f := range req.GetFilters() {
		if filter, ok := FilterOf(f); ok {
			filters = append(filters, filter)
		}
	}
	out := newOutStream(req.GetSubscriberId(), filters)
	n.addStream(out)
	defer n.removeStream(out)
	send := func(info *meshv1.NodeInfo) error {
		return stream.Send(&meshv1.SubscribeResponse{Kind: &meshv1.SubscribeResponse_Node{Node: info}})
	}
	if err := send(n.Info()); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-n.stopCh:
			return nil // the node is stopping: the stream ends normally
		case <-out.info:
			if err := send(n.Info()); err != nil {
				return err
			}
		case ev := <-out.events:
			out.tookOne()
			if err := stream.Send(&meshv1.SubscribeResponse{Kind: &meshv1.SubscribeResponse_Event{Event: ev}}); err != nil {
				return err
			}
		case <-out.overflow:
			// Send what was queued, then end: the subscriber learns it missed
			// events.
			for len(out.events) > 0 {
				if err := stream.Send(&meshv1.SubscribeResponse{Kind: &meshv1.SubscribeResponse_Event{Event: <-out.events}}); err != nil {
					return err
				}
			}
			return status.Errorf(codes.ResourceExhausted, "subscriber %q fell more than %d events behind; events were dropped", req.GetSubscriberId(), streamBuffer)
		}
	}
}

func (s *service) Describe(ctx context.Context, req *meshv1.DescribeRequest) (*meshv1.DescribeResponse, error) {
	if req.GetCaller() != nil {
		s.n.learnPeer(req.GetCaller())
	}
	return &meshv1.DescribeResponse{Node: s.n.Info()}, nil
}

func (s *service) ResolvePromise(_ context.Context, req *meshv1.ResolvePromiseRequest) (*meshv1.ResolvePromiseResponse, error) {
	resp, err := s.n.serveResolvePromise(req)
	return resp, toStatusError(err)
}

func (s *service) SaveState(ctx context.Context, req *meshv1.SaveStateRequest) (*meshv1.SaveStateResponse, error) {
	ctx, cancel, err := answerBeforeDeadline(ctx, s.n.opts.DefaultTimeout)
	if err != nil {
		return nil, err
	}
	defer cancel()
	resp, err := s.n.saveState(ctx, req)
	return resp, toStatusError(err)
}

func (s *service) LoadState(ctx context.Context, req *meshv1.LoadStateRequest) (*meshv1.LoadStateResponse, error) {
	ctx, cancel, err := answerBeforeDeadline(ctx, s.n.opts.DefaultTimeout)
	if err != nil {
		return nil, err
	}
	defer cancel()
	resp, err := s.n.loadState(ctx, req)
	return resp, toStatusError(err)
}

// holdStream counts a Subscribe stream against its caller (one client
// connection, by its remote address): at most DefaultMaxStreamsPerCaller are
// open at once (agent_service.proto). release gives the place back.
func (n *Node) holdStream(ctx context.Context) (release func(), err error) {
	caller := "unknown"
	if p, ok := grpcpeer.FromContext(ctx); ok && p.Addr != nil {
		caller = p.Addr.String()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.streamsByCaller == nil {
		n.streamsByCaller = map[string]int{}
	}
	held := n.streamsByCaller[caller]
	if held >= meshv1.DefaultMaxStreamsPerCaller {
		return nil, status.Errorf(codes.ResourceExhausted, "%s holds %d Subscribe streams on this node already (at most %d per caller)", caller, held, meshv1.DefaultMaxStreamsPerCaller)
	}
	n.streamsByCaller[caller] = held + 1
	n.openStreams++
	n.streamPeak = max(n.streamPeak, n.openStreams)
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.streamsByCaller[caller] <= 1 {
			delete(n.streamsByCaller, caller)
		} else {
			n.streamsByCaller[caller]--
		}
		n.openStreams--
		n.releaseAfterBurst()
	}, nil
}

// streamBurst is the number of open Subscribe streams past which a node hands
// their memory back to the system once most of them have closed.
const streamBurst = 1000

// releaseAfterBurst returns the memory of a burst of closed streams to the
// system at once. The Go runtime keeps freed heap for reuse and scavenges it
// back only slowly, so without this a node that served thousands of streams
// stayed at their high-water mark for minutes after they had closed (issue
// 15; tests/conformance/test_stream_memory.py). It runs once per burst: when
// the open streams fall to a quarter of a peak of at least streamBurst.
// n.mu is held.
func (n *Node) releaseAfterBurst() {
	if n.streamPeak < streamBurst || n.openStreams > n.streamPeak/4 {
		return
	}
	n.streamPeak = n.openStreams
	go debug.FreeOSMemory()
}
