package ravi

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// traceContext is the W3C trace context of a call.
type traceContext struct {
	traceparent string
	tracestate  string
}

func incomingTrace(ctx context.Context) traceContext {
	md, _ := metadata.FromIncomingContext(ctx)
	first := func(k string) string {
		if v := md.Get(k); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	return traceContext{traceparent: first("traceparent"), tracestate: first("tracestate")}
}

// merge returns the metadata a handler sees: the envelope's, plus the trace
// context of the call where the envelope has none.
func (t traceContext) merge(md map[string]string) map[string]string {
	if t.traceparent == "" && t.tracestate == "" {
		return md
	}
	out := make(map[string]string, len(md)+2)
	if t.traceparent != "" {
		out["traceparent"] = t.traceparent
	}
	if t.tracestate != "" {
		out["tracestate"] = t.tracestate
	}
	maps.Copy(out, md)
	return out
}

func (t traceContext) outgoing(ctx context.Context) context.Context {
	if t.traceparent == "" {
		return ctx
	}
	kv := []string{"traceparent", t.traceparent}
	if t.tracestate != "" {
		kv = append(kv, "tracestate", t.tracestate)
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// handleSend handles a Send, from a caller (received: a unary Send or a
// Multiplex frame, forwarded when the type is not hosted here) or from one of
// the node's agents or its Send method (routed to the peer hosting the type),
// following the ordered checks of docs/protocol.md. tc is the trace context of
// the gRPC call, used where the envelope carries none.
func (n *Node) handleSend(ctx context.Context, req *meshv1.SendRequest, tc traceContext, received bool) (*meshv1.SendResponse, error) {
	to := AgentIDOf(req.GetRecipient())
	if err := to.Validate(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	at := n.agentTypes[to.Type]
	n.mu.Unlock()
	if at == nil {
		if received {
			return n.forward(ctx, req, tc)
		}
		return n.sendToPeer(ctx, req, nil)
	}
	env := req.GetEnvelope()
	if req.GetTopic() != nil {
		msg, err := decodePayload(n.types, env.GetPayload())
		if err != nil {
			return nil, err
		}
		return n.handleTopicSend(ctx, at, req, msg, tc.merge(env.GetMetadata()))
	}
	messageID := env.GetMessageId()
	if messageID == "" {
		messageID = newMessageID()
	}
	ctx, span := n.tr.start(extractParent(ctx, env.GetMetadata(), tc), "handle "+to.Type, trace.SpanKindServer, func() []attribute.KeyValue {
		attrs := []attribute.KeyValue{
			attrOperation.String("process"),
			attrAgentType.String(to.Type),
			attrAgentKey.String(to.Key),
			attrMessageType.String(env.GetPayload().GetType()),
			attrMessageID.String(messageID),
		}
		if s := env.GetSender(); s != nil {
			attrs = append(attrs, attrSender.String(AgentIDOf(s).String()))
		}
		return attrs
	})
	defer span.End()
	resp, err := n.handleLocal(ctx, at, to, req, tc, messageID, span.SpanContext())
	fail(span, err)
	return resp, err
}

// handleLocal runs the handler of a Send to an agent type hosted here.
func (n *Node) handleLocal(ctx context.Context, at *agentType, to AgentID, req *meshv1.SendRequest, tc traceContext, messageID string, spanCtx trace.SpanContext) (*meshv1.SendResponse, error) {
	env := req.GetEnvelope()
	msg, err := decodePayload(n.types, env.GetPayload())
	if err != nil {
		return nil, err
	}
	if !at.reentrant && slices.ContainsFunc(env.GetCallChain(), func(id *meshv1.AgentId) bool { return AgentIDOf(id) == to }) {
		return nil, reasonError(codes.FailedPrecondition, ReasonReentrantCall,
			fmt.Sprintf("%s is waiting on this call (call chain %s); delivering it would deadlock", to, chainString(env.GetCallChain(), to)),
			map[string]string{"agent_type": to.Type, "node_id": n.id})
	}
	msgType := TypeName(msg)
	h, ok := at.handlers[msgType]
	if !ok {
		return nil, reasonError(codes.Unimplemented, ReasonNoHandler,
			noHandlerMessage(at, to.Type, msgType),
			map[string]string{"agent_type": to.Type, "message_type": msgType, "node_id": n.id})
	}
	metadata := tc.merge(env.GetMetadata())
	call := &Call{
		node:        n,
		agent:       to,
		sender:      env.GetSender(),
		messageID:   messageID,
		metadata:    metadata,
		chain:       env.GetCallChain(),
		traceparent: metadata["traceparent"], // the envelope's, else the gRPC metadata's
		spanCtx:     spanCtx,
	}
	call.deadline, _ = ctx.Deadline()
	d := &delivery{ctx: ctx, call: call, msg: msg, handler: h, done: make(chan outcome, 1)}
	for {
		inst, err := n.instance(ctx, at, to)
		if err != nil {
			return nil, err
		}
		call.state = inst.state
		if err = n.enqueue(inst, d); err != errRetired {
			if err != nil {
				return nil, err
			}
			break
		}
	}
	select {
	case o := <-d.done:
		if err := ctx.Err(); err != nil {
			// The handler ended because the call did: report the call's end.
			return nil, FromError(err)
		}
		if o.err != nil {
			return nil, o.err
		}
		resp := &meshv1.SendResponse{NodeId: n.id}
		if o.reply != nil {
			if resp.Result, err = EncodePayload(o.reply); err != nil {
				return nil, err
			}
		}
		return resp, nil
	case <-ctx.Done():
		return nil, FromError(ctx.Err())
	}
}

func chainString(chain []*meshv1.AgentId, to AgentID) string {
	s := ""
	for _, id := range chain {
		s += AgentIDOf(id).String() + " -> "
	}
	return s + to.String()
}

// handleTopicSend delivers a Send with a topic: a published message handed
// over by the node where it was published, for the subscribed agent type this
// node hosts. It answers at once, with no result.
func (n *Node) handleTopicSend(ctx context.Context, at *agentType, req *meshv1.SendRequest, msg proto.Message, metadata map[string]string) (*meshv1.SendResponse, error) {
	topic := TopicIDOf(req.GetTopic())
	if err := topic.Validate(); err != nil {
		return nil, err
	}
	env := proto.CloneOf(req.GetEnvelope())
	env.Metadata = metadata
	if env.GetMessageId() == "" {
		env.MessageId = newMessageID()
	}
	if _, err := n.deliverLocal(ctx, topic, req.GetTopic(), env, msg, []string{at.name}, false); err != nil {
		return nil, err
	}
	return &meshv1.SendResponse{NodeId: n.id}, nil
}

// forward sends req, received by this node for a type it does not host, on
// to the peer chosen for its recipient, in a forward span.
func (n *Node) forward(ctx context.Context, req *meshv1.SendRequest, tc traceContext) (*meshv1.SendResponse, error) {
	hops := int64(req.GetRoute().GetHopCount()) + 1
	ctx, span := n.tr.start(extractParent(ctx, req.GetEnvelope().GetMetadata(), tc), "forward "+req.GetRecipient().GetType(), trace.SpanKindInternal, func() []attribute.KeyValue {
		return []attribute.KeyValue{attrRouteHopCount.Int64(hops)}
	})
	defer span.End()
	resp, err := n.sendToPeer(ctx, req, span)
	fail(span, err)
	return resp, err
}

// sendToPeer sends req to the peer chosen for its recipient, refusing a loop
// or a request that was forwarded too often. The request carries the trace
// context of ctx's span (in its envelope and in the gRPC metadata); span,
// when set, learns the peer chosen.
func (n *Node) sendToPeer(ctx context.Context, req *meshv1.SendRequest, span trace.Span) (*meshv1.SendResponse, error) {
	to := AgentIDOf(req.GetRecipient())
	route := req.GetRoute()
	if slices.Contains(route.GetVisitedNodeIds(), n.id) {
		return nil, reasonError(codes.FailedPrecondition, ReasonForwardingLoop,
			fmt.Sprintf("the send to %s already passed through node %s (route %s)", to, n.id, strings.Join(route.GetVisitedNodeIds(), " -> ")),
			map[string]string{"node_id": n.id, "agent_type": to.Type})
	}
	if route.GetHopCount() >= HopLimit {
		return nil, reasonError(codes.FailedPrecondition, ReasonHopLimitExceeded,
			fmt.Sprintf("the send to %s was forwarded %d times (limit %d)", to, route.GetHopCount(), HopLimit),
			map[string]string{"node_id": n.id, "agent_type": to.Type})
	}
	p, peerID := n.choosePeer(to, route.GetVisitedNodeIds())
	if p == nil {
		return nil, n.noRoute(to.Type, route.GetVisitedNodeIds())
	}
	defer p.mux.finished()
	if span != nil && span.IsRecording() {
		span.SetAttributes(attrRouteNextNode.String(peerID))
	}
	fwd := proto.CloneOf(req)
	fwd.Route = &meshv1.Route{
		HopCount:       route.GetHopCount() + 1,
		VisitedNodeIds: append(slices.Clone(route.GetVisitedNodeIds()), n.id),
	}
	if fwd.Envelope != nil {
		fwd.Envelope.Metadata = injectInto(ctx, fwd.Envelope.Metadata)
	}
	// The envelope carries ctx's trace context (and, on a unary fallback, the
	// client's interceptor puts it in the gRPC metadata).
	resp, err := p.mux.send(ctx, fwd)
	if err != nil {
		return nil, n.peerError(p, peerID, err)
	}
	return resp, nil
}

// noRoute is why no peer takes a call for agentType: the peers that hosted it
// are unreachable now (UNAVAILABLE / PEER_UNAVAILABLE), or none ever did
// (NOT_FOUND / AGENT_TYPE_NOT_FOUND). Peers in exclude do not count.
func (n *Node) noRoute(agentType string, exclude []string) error {
	addresses := n.unreachableHosting(agentType, exclude)
	if len(addresses) > 0 {
		list := strings.Join(addresses, ", ")
		return reasonError(codes.Unavailable, ReasonPeerUnavailable,
			fmt.Sprintf("every node hosting agent type %q is unreachable (%s)", agentType, list),
			map[string]string{"agent_type": agentType, "node_id": n.id, "peer_address": list})
	}
	return reasonError(codes.NotFound, ReasonAgentTypeNotFound,
		n.notHostedMessage(agentType),
		map[string]string{"agent_type": agentType, "node_id": n.id})
}

// peerError maps a failed call to a peer: the peer's own ravi errors pass
// through; a transport failure is UNAVAILABLE / PEER_UNAVAILABLE, decided by
// this node.
func (n *Node) peerError(p *peer, peerID string, err error) error {
	e := FromError(err)
	if e.Code == codes.Unavailable && e.Reason == "" {
		return reasonError(codes.Unavailable, ReasonPeerUnavailable,
			fmt.Sprintf("peer %s (node %s at %s) is unavailable: %s", p.name, peerID, p.address, e.Message),
			map[string]string{"node_id": n.id, "peer_address": p.address})
	}
	return e
}

// send sends msg to an agent as from's agent (nil: from outside any agent),
// in a send span.
func (n *Node) send(ctx context.Context, from *Call, to AgentID, msg proto.Message, opts []CallOption) (*Reply, error) {
	o := collect(opts)
	ctx, cancel := n.callContext(ctx, o)
	defer cancel()
	if from != nil && !from.deadline.IsZero() {
		var cancelHandling context.CancelFunc
		ctx, cancelHandling = context.WithDeadline(ctx, from.deadline)
		defer cancelHandling()
	}
	messageID := o.messageID
	if messageID == "" {
		messageID = newMessageID()
	}
	ctx, span := n.tr.start(parentContext(ctx, from, o), "send "+to.Type, trace.SpanKindClient, func() []attribute.KeyValue {
		attrs := []attribute.KeyValue{
			attrOperation.String("send"),
			attrDestination.String(to.Type),
			attrAgentType.String(to.Type),
			attrAgentKey.String(to.Key),
			attrMessageID.String(messageID),
		}
		if msg != nil {
			attrs = append(attrs, attrMessageType.String(TypeName(msg)))
		}
		return attrs
	})
	defer span.End()
	reply, err := n.sendTraced(ctx, from, to, msg, o, messageID)
	if err != nil {
		fail(span, err)
		return nil, err
	}
	return reply, nil
}

func (n *Node) sendTraced(ctx context.Context, from *Call, to AgentID, msg proto.Message, o callOptions, messageID string) (*Reply, error) {
	payload, err := o.encode(msg)
	if err != nil {
		return nil, err
	}
	env := &meshv1.Envelope{
		MessageId:      messageID,
		Payload:        payload,
		Metadata:       injectInto(ctx, o.metadata),
		IdempotencyKey: o.idempotencyKey,
	}
	if from != nil {
		env.Sender = from.agent.Proto()
		env.CallChain = from.outgoingChain()
	}
	resp, err := n.handleSend(ctx, &meshv1.SendRequest{Recipient: to.Proto(), Envelope: env}, traceContext{}, false)
	if err != nil {
		return nil, FromError(err)
	}
	reply, err := decodeReply(n.types, resp)
	if err != nil {
		return nil, FromError(err)
	}
	return reply, nil
}

func decodeReply(types TypeResolver, resp *meshv1.SendResponse) (*Reply, error) {
	reply := &Reply{NodeID: resp.GetNodeId(), Payload: resp.GetResult()}
	if resp.GetResult() == nil {
		return reply, nil
	}
	m, err := decodePayload(types, resp.GetResult())
	if err != nil {
		return nil, err
	}
	reply.Message = m
	return reply, nil
}

// callContext applies the call's timeout, or the default one when ctx has no
// deadline.
func (n *Node) callContext(ctx context.Context, o callOptions) (context.Context, context.CancelFunc) {
	return withTimeout(ctx, o.timeout, n.opts.DefaultTimeout)
}

func withTimeout(ctx context.Context, timeout, fallback time.Duration) (context.Context, context.CancelFunc) {
	if timeout > 0 {
		return context.WithTimeout(ctx, timeout)
	}
	if _, ok := ctx.Deadline(); !ok && fallback > 0 {
		return context.WithTimeout(ctx, fallback)
	}
	return context.WithCancel(ctx)
}
