package ravi

import (
	"context"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// service implements ravi.mesh.v1.AgentService for a Node.
type service struct {
	meshv1.UnimplementedAgentServiceServer
	n *Node
}

func (s *service) Send(ctx context.Context, req *meshv1.SendRequest) (*meshv1.SendResponse, error) {
	ctx, cancel := withTimeout(ctx, 0, s.n.opts.DefaultTimeout)
	defer cancel()
	// A delivery keeps its publish span as parent (and link); a send is the RPC's child.
	if env := rpcTraceInto(ctx, req.GetEnvelope()); req.GetTopic() == nil && env != req.GetEnvelope() {
		req = proto.CloneOf(req)
		req.Envelope = env
	}
	resp, err := s.n.handleSend(ctx, req, incomingTrace(ctx), true)
	return resp, toStatusError(err)
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
	ctx, cancel := withTimeout(ctx, 0, s.n.opts.DefaultTimeout)
	defer cancel()
	resp, err := s.n.saveState(ctx, req)
	return resp, toStatusError(err)
}

func (s *service) LoadState(ctx context.Context, req *meshv1.LoadStateRequest) (*meshv1.LoadStateResponse, error) {
	ctx, cancel := withTimeout(ctx, 0, s.n.opts.DefaultTimeout)
	defer cancel()
	resp, err := s.n.loadState(ctx, req)
	return resp, toStatusError(err)
}
