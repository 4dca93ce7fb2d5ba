package ravi

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// AgentType describes one agent type a Node hosts.
type AgentType struct {
	// Name is the agent type (letters, digits, '_', '-', '.', ':').
	Name string
	// Handlers handle the message types the agents accept, one per type.
	Handlers []Handler
	// Reentrant agents handle their messages concurrently, and may be called
	// by a send they are waiting on; other agents handle one message at a time,
	// in order, and refuse such a call (REENTRANT_CALL).
	Reentrant bool
	// NewState, when set, creates the state of one agent instance when its
	// AgentID receives a message and has no active instance; handlers reach
	// it through Call.State or HandleMethod. A state implementing StateSaver
	// and StateLoader goes to the node's StateStore when the instance is
	// passivated (Options.IdleTimeout, Options.MaxActiveAgents) and comes
	// back when it is activated again.
	NewState func(id AgentID) any
	// Resident keeps the instances of the type active however idle they are
	// (a state implementing Resident decides per instance).
	Resident bool
	// Subscriptions subscribe the type to topics when it is registered: a
	// matching event goes to the agent whose key is the topic source.
	Subscriptions []Filter
}

// Handler handles one message type; build it with Handle, HandleMethod or
// HandleNoReply.
type Handler struct {
	msgType protoreflect.FullName
	fn      func(ctx context.Context, call *Call, msg proto.Message) (proto.Message, error)
}

// MessageType is the full name of the message type the handler handles.
func (h Handler) MessageType() string { return string(h.msgType) }

// Handle builds a Handler for messages of type Req. The handler returns its
// reply; a nil reply sends no result. Published events of type Req reach the
// same handler (call.Topic tells them apart) and their reply is dropped.
func Handle[Req, Resp proto.Message](fn func(ctx context.Context, call *Call, req Req) (Resp, error)) Handler {
	var zero Req
	if any(zero) == nil {
		panic("ravi.Handle: the request type must be a concrete message type such as *examplesv1.Task, not an interface")
	}
	return Handler{
		msgType: zero.ProtoReflect().Descriptor().FullName(),
		fn: func(ctx context.Context, call *Call, msg proto.Message) (proto.Message, error) {
			req, ok := msg.(Req)
			if !ok {
				return nil, &Error{Code: codes.Internal, Message: fmt.Sprintf("handler for %T got %T", zero, msg)}
			}
			resp, err := fn(ctx, call, req)
			if err != nil {
				return nil, err
			}
			return replyOf(resp), nil
		},
	}
}

// HandleNoReply builds a Handler for messages of type Req that returns no
// result.
func HandleNoReply[Req proto.Message](fn func(ctx context.Context, call *Call, req Req) error) Handler {
	return Handle(func(ctx context.Context, call *Call, req Req) (proto.Message, error) {
		return nil, fn(ctx, call, req)
	})
}

// HandleMethod builds a Handler that runs on the instance state S created by
// AgentType.NewState, so a method expression works:
//
//	ravi.HandleMethod((*Counter).Add) // func (c *Counter) Add(ctx, call, req *pb.Add) (*pb.Sum, error)
//
// The mailbox serialises the messages of one non-reentrant agent, so the
// method needs no lock for its instance's state.
func HandleMethod[S any, Req, Resp proto.Message](fn func(s S, ctx context.Context, call *Call, req Req) (Resp, error)) Handler {
	return Handle(func(ctx context.Context, call *Call, req Req) (proto.Message, error) {
		s, ok := call.State().(S)
		if !ok {
			var want S
			return nil, &Error{Code: codes.Internal, Message: fmt.Sprintf("agent %s has state %T, its handler wants %T", call.Agent(), call.State(), want)}
		}
		resp, err := fn(s, ctx, call, req)
		if err != nil {
			return nil, err
		}
		return replyOf(resp), nil
	})
}

func replyOf(m proto.Message) proto.Message {
	if m == nil || !m.ProtoReflect().IsValid() {
		return nil
	}
	return m
}

// Call is what a handler knows about the message it handles, and how it
// talks to other agents as its own agent.
type Call struct {
	node        *Node
	agent       AgentID
	sender      *meshv1.AgentId
	topic       *meshv1.TopicId
	messageID   string
	metadata    map[string]string
	chain       []*meshv1.AgentId
	traceparent string
	spanCtx     trace.SpanContext // of the handle or deliver span
	state       any
	deadline    time.Time // of the handling; zero when none
}

// Agent is the id of the agent handling the message.
func (c *Call) Agent() AgentID { return c.agent }

// NodeID is the id of the node hosting the agent.
func (c *Call) NodeID() string { return c.node.id }

// Sender is the sending agent; ok is false for a message from outside any
// agent.
func (c *Call) Sender() (id AgentID, ok bool) {
	if c.sender == nil {
		return AgentID{}, false
	}
	return AgentIDOf(c.sender), true
}

// Topic is the topic of a published event; ok is false for a direct send.
func (c *Call) Topic() (topic TopicID, ok bool) {
	if c.topic == nil {
		return TopicID{}, false
	}
	return TopicIDOf(c.topic), true
}

// MessageID is the id of the message.
func (c *Call) MessageID() string { return c.messageID }

// Metadata is the envelope metadata (do not modify it).
func (c *Call) Metadata() map[string]string { return c.metadata }

// CallChain lists the agents blocked waiting for this message's reply,
// outermost first.
func (c *Call) CallChain() []AgentID {
	out := make([]AgentID, len(c.chain))
	for i, id := range c.chain {
		out[i] = AgentIDOf(id)
	}
	return out
}

// Traceparent is the W3C trace context the message arrived with, if any. The
// handler's ctx carries the node's span around the handler (handle or
// deliver), which parents the sends and publishes the handler makes.
func (c *Call) Traceparent() string { return c.traceparent }

// State is the instance state created by AgentType.NewState (nil without).
func (c *Call) State() any { return c.state }

// Send sends msg to another agent as this agent and waits for the reply. The
// send carries ctx's deadline (pass the handler's ctx; the handling's own
// deadline bounds it in any case), the trace context of its send span (a
// child of ctx's span, else of the handler's span) and the call chain
// extended with this agent.
func (c *Call) Send(ctx context.Context, to AgentID, msg proto.Message, opts ...CallOption) (*Reply, error) {
	return c.node.send(ctx, c, to, msg, opts)
}

// Publish publishes msg on topic as this agent: to the node's own subscribers
// (except this agent) and to every matching Subscribe stream.
func (c *Call) Publish(ctx context.Context, topic TopicID, msg proto.Message, opts ...CallOption) error {
	_, err := c.node.publishFrom(ctx, c, topic, msg, opts)
	return err
}

func (c *Call) outgoingChain() []*meshv1.AgentId {
	chain := make([]*meshv1.AgentId, 0, len(c.chain)+1)
	for _, id := range c.chain {
		chain = append(chain, proto.CloneOf(id))
	}
	return append(chain, c.agent.Proto())
}

// Reply is the answer to a Send.
type Reply struct {
	// Message is the decoded reply; nil when the handler returned nothing.
	Message proto.Message
	// Payload is the reply as it travelled; nil when there was none.
	Payload *meshv1.Payload
	// NodeID is the id of the node whose agent handled the message.
	NodeID string
}

// Sender is anything that sends a message to an agent: a *Call (as its
// agent), a *Node (from outside any agent) or a *Client.
type Sender interface {
	Send(ctx context.Context, to AgentID, msg proto.Message, opts ...CallOption) (*Reply, error)
}

// Ask sends msg through s and returns the reply as a Resp. A reply of another
// type, or none, is an INTERNAL *Error.
func Ask[Resp proto.Message](ctx context.Context, s Sender, to AgentID, msg proto.Message, opts ...CallOption) (Resp, error) {
	var zero Resp
	reply, err := s.Send(ctx, to, msg, opts...)
	if err != nil {
		return zero, err
	}
	resp, ok := reply.Message.(Resp)
	if !ok {
		got := "no result"
		if reply.Payload != nil {
			got = reply.Payload.GetType()
		}
		return zero, &Error{Code: codes.Internal, Message: fmt.Sprintf("%s answered with %s, want %s", to, got, zero.ProtoReflect().Descriptor().FullName())}
	}
	return resp, nil
}

// CallOption adjusts one Send or Publish.
type CallOption func(*callOptions)

type callOptions struct {
	timeout        time.Duration
	metadata       map[string]string
	messageID      string
	idempotencyKey string
	json           bool
	traceparent    string
	scope          meshv1.PublishScope
}

func collect(opts []CallOption) callOptions {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithTimeout bounds the call (the earlier of it and ctx's deadline wins).
func WithTimeout(d time.Duration) CallOption { return func(o *callOptions) { o.timeout = d } }

// WithMetadata sets envelope metadata (keys lower case).
func WithMetadata(md map[string]string) CallOption {
	return func(o *callOptions) { o.metadata = maps.Clone(md) }
}

// WithMessageID sets the envelope's message id (a fresh one by default).
func WithMessageID(id string) CallOption { return func(o *callOptions) { o.messageID = id } }

// WithIdempotencyKey sets the envelope's idempotency key.
func WithIdempotencyKey(k string) CallOption { return func(o *callOptions) { o.idempotencyKey = k } }

// WithJSON encodes the payload in the canonical protobuf JSON mapping instead
// of binary protobuf.
func WithJSON() CallOption { return func(o *callOptions) { o.json = true } }

// WithTraceparent sets the W3C traceparent of a call: the parent of a node's
// send or publish span (instead of ctx's span or the handler's), or what a
// Client's call carries (instead of ctx's span).
func WithTraceparent(tp string) CallOption { return func(o *callOptions) { o.traceparent = tp } }

// WithScope sets the scope of a Publish made through a Client or a Node
// (PUBLISH_SCOPE_MESH by default).
func WithScope(s meshv1.PublishScope) CallOption { return func(o *callOptions) { o.scope = s } }

func (o callOptions) encode(msg proto.Message) (*meshv1.Payload, error) {
	if msg == nil {
		return nil, badPayload("no message to send", "")
	}
	if o.json {
		return EncodePayloadJSON(msg)
	}
	return EncodePayload(msg)
}

// Filter selects topics by type: exactly (TopicType) or by prefix
// (TopicPrefix).
type Filter struct {
	// Value is the topic type or prefix.
	Value string
	// Prefix says Value is a prefix.
	Prefix bool
}

// TopicType matches topics whose type is t.
func TopicType(t string) Filter { return Filter{Value: t} }

// TopicPrefix matches topics whose type starts with p.
func TopicPrefix(p string) Filter { return Filter{Value: p, Prefix: true} }

// Matches reports whether a topic of type topicType matches f.
func (f Filter) Matches(topicType string) bool {
	if f.Prefix {
		return len(topicType) >= len(f.Value) && topicType[:len(f.Value)] == f.Value
	}
	return topicType == f.Value
}

// Proto returns the ravi.mesh.v1.TopicFilter form of f.
func (f Filter) Proto() *meshv1.TopicFilter {
	if f.Prefix {
		return &meshv1.TopicFilter{Kind: &meshv1.TopicFilter_TopicTypePrefix{TopicTypePrefix: f.Value}}
	}
	return &meshv1.TopicFilter{Kind: &meshv1.TopicFilter_TopicType{TopicType: f.Value}}
}

func (f Filter) String() string {
	if f.Prefix {
		return f.Value + "*"
	}
	return f.Value
}

// FilterOf converts a ravi.mesh.v1.TopicFilter; ok is false when no kind is
// set.
func FilterOf(p *meshv1.TopicFilter) (f Filter, ok bool) {
	switch k := p.GetKind().(type) {
	case *meshv1.TopicFilter_TopicType:
		return TopicType(k.TopicType), true
	case *meshv1.TopicFilter_TopicTypePrefix:
		return TopicPrefix(k.TopicTypePrefix), true
	}
	return Filter{}, false
}

func anyMatches(filters []Filter, topicType string) bool {
	return slices.ContainsFunc(filters, func(f Filter) bool { return f.Matches(topicType) })
}
