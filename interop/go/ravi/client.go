package ravi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// Client calls one node's AgentService. It is safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	svc     meshv1.AgentServiceClient
	timeout time.Duration
	types   TypeResolver
}

// ClientOption configures a Client.
type ClientOption func(*clientOptions)

type clientOptions struct {
	token    string
	maxBytes int
	timeout  time.Duration
	dial     []grpc.DialOption
}

// WithToken sends "authorization: Bearer <token>" with every call.
func WithToken(token string) ClientOption { return func(o *clientOptions) { o.token = token } }

// WithMaxMessageBytes bounds the messages the client sends and receives
// (default 4 MiB).
func WithMaxMessageBytes(n int) ClientOption { return func(o *clientOptions) { o.maxBytes = n } }

// WithDefaultTimeout is the deadline of unary calls whose context has none
// (default 60 s, DefaultTimeout).
func WithDefaultTimeout(d time.Duration) ClientOption {
	return func(o *clientOptions) { o.timeout = d }
}

// WithDialOptions adds gRPC dial options (TLS credentials replace the default
// plaintext; otelgrpc stats handlers; ...).
func WithDialOptions(opts ...grpc.DialOption) ClientOption {
	return func(o *clientOptions) { o.dial = append(o.dial, opts...) }
}

// Dial creates a client of the node at addr (host:port). The connection is
// made lazily, on the first call.
func Dial(addr string, opts ...ClientOption) (*Client, error) {
	o := clientOptions{maxBytes: DefaultMaxMessageBytes, timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.maxBytes), grpc.MaxCallSendMsgSize(o.maxBytes)),
	}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer(o.token)))
	}
	dial = append(dial, grpc.WithChainUnaryInterceptor(traceUnary))
	dial = append(dial, o.dial...)
	conn, err := grpc.NewClient(addr, dial...)
	if err != nil {
		return nil, fmt.Errorf("ravi: dial %s: %w", addr, err)
	}
	return &Client{conn: conn, svc: meshv1.NewAgentServiceClient(conn), timeout: o.timeout, types: protoregistry.GlobalTypes}, nil
}

// Conn is the client's gRPC connection (for health checks, reflection, ...).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Service is the generated AgentService client over the same connection.
func (c *Client) Service() meshv1.AgentServiceClient { return c.svc }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// unaryContext applies the call's timeout and puts its trace context (that of
// WithTraceparent, else of ctx's span) in the gRPC metadata; it returns that
// trace context for the envelope.
func (c *Client) unaryContext(ctx context.Context, o callOptions) (context.Context, context.CancelFunc, traceContext) {
	ctx, cancel := withTimeout(ctx, o.timeout, c.timeout)
	tc := traceContext{traceparent: o.traceparent}
	if tc.traceparent == "" {
		tc = traceOf(ctx)
	}
	return tc.outgoing(ctx), cancel, tc
}

// Send sends msg to the agent to, from outside any agent, and waits for the
// reply. Failures are *Error values.
func (c *Client) Send(ctx context.Context, to AgentID, msg proto.Message, opts ...CallOption) (*Reply, error) {
	o := collect(opts)
	payload, err := o.encode(msg)
	if err != nil {
		return nil, err
	}
	resp, err := c.SendPayload(ctx, to, payload, opts...)
	if err != nil {
		return nil, err
	}
	return decodeReply(c.types, resp)
}

// SendPayload sends an already encoded payload (for example JSON of a type
// this program does not know) and returns the raw response.
func (c *Client) SendPayload(ctx context.Context, to AgentID, payload *meshv1.Payload, opts ...CallOption) (*meshv1.SendResponse, error) {
	o := collect(opts)
	ctx, cancel, tc := c.unaryContext(ctx, o)
	defer cancel()
	resp, err := c.svc.Send(ctx, &meshv1.SendRequest{Recipient: to.Proto(), Envelope: o.envelope(payload, tc)})
	if err != nil {
		return nil, FromError(err)
	}
	return resp, nil
}

// Publish publishes msg on topic (scope PUBLISH_SCOPE_MESH unless WithScope
// says otherwise).
func (c *Client) Publish(ctx context.Context, topic TopicID, msg proto.Message, opts ...CallOption) (*meshv1.PublishResponse, error) {
	o := collect(opts)
	payload, err := o.encode(msg)
	if err != nil {
		return nil, err
	}
	return c.PublishPayload(ctx, topic, payload, opts...)
}

// PublishPayload publishes an already encoded payload.
func (c *Client) PublishPayload(ctx context.Context, topic TopicID, payload *meshv1.Payload, opts ...CallOption) (*meshv1.PublishResponse, error) {
	o := collect(opts)
	ctx, cancel, tc := c.unaryContext(ctx, o)
	defer cancel()
	resp, err := c.svc.Publish(ctx, &meshv1.PublishRequest{Topic: topic.Proto(), Envelope: o.envelope(payload, tc), Scope: o.scope})
	if err != nil {
		return nil, FromError(err)
	}
	return resp, nil
}

// Describe returns the node's description.
func (c *Client) Describe(ctx context.Context) (*meshv1.NodeInfo, error) {
	ctx, cancel, _ := c.unaryContext(ctx, callOptions{})
	defer cancel()
	resp, err := c.svc.Describe(ctx, &meshv1.DescribeRequest{})
	if err != nil {
		return nil, FromError(err)
	}
	return resp.GetNode(), nil
}

// Subscription is an open Subscribe stream.
type Subscription struct {
	stream meshv1.AgentService_SubscribeClient
	cancel context.CancelFunc
	// Node is the node's latest description (the first stream message, then
	// every update).
	Node *meshv1.NodeInfo
}

// Subscribe opens a Subscribe stream with filters and returns once the
// subscription is active (the node sent its description). The stream lives
// until ctx is done or Close.
func (c *Client) Subscribe(ctx context.Context, subscriberID string, filters ...Filter) (*Subscription, error) {
	ctx, cancel := context.WithCancel(ctx)
	req := &meshv1.SubscribeRequest{SubscriberId: subscriberID}
	for _, f := range filters {
		req.Filters = append(req.Filters, f.Proto())
	}
	stream, err := c.svc.Subscribe(ctx, req)
	if err != nil {
		cancel()
		return nil, FromError(err)
	}
	first, err := stream.Recv()
	if err != nil {
		cancel()
		return nil, FromError(err)
	}
	node := first.GetNode()
	if node == nil {
		cancel()
		return nil, errors.New("ravi: the first Subscribe message is not a NodeInfo")
	}
	return &Subscription{stream: stream, cancel: cancel, Node: node}, nil
}

// Next returns the next event, keeping node descriptions in s.Node.
func (s *Subscription) Next() (*meshv1.Event, error) {
	for {
		msg, err := s.stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		if err != nil {
			return nil, FromError(err)
		}
		if node := msg.GetNode(); node != nil {
			s.Node = node
			continue
		}
		return msg.GetEvent(), nil
	}
}

// Recv returns the next stream message, a node description or an event, as
// it arrives (it does not update s.Node).
func (s *Subscription) Recv() (*meshv1.SubscribeResponse, error) {
	msg, err := s.stream.Recv()
	if errors.Is(err, io.EOF) {
		return nil, io.EOF
	}
	if err != nil {
		return nil, FromError(err)
	}
	return msg, nil
}

// Close ends the stream.
func (s *Subscription) Close() { s.cancel() }

// envelope builds the envelope of a Client's call; it carries tc unless the
// metadata has a traceparent already.
func (o callOptions) envelope(payload *meshv1.Payload, tc traceContext) *meshv1.Envelope {
	env := &meshv1.Envelope{MessageId: o.messageID, Payload: payload, Metadata: o.metadata, IdempotencyKey: o.idempotencyKey}
	if env.MessageId == "" {
		env.MessageId = newMessageID()
	}
	if tc.traceparent != "" && o.metadata["traceparent"] == "" {
		env.Metadata = tc.merge(o.metadata)
	}
	return env
}
