package ravi

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// streamBuffer is how many events a Subscribe stream may fall behind before
// it ends with RESOURCE_EXHAUSTED (the subscriber then knows it missed some).
const streamBuffer = 1024

// An in-process publish that leaves a stream backedUp events or more behind
// waits for its writer to take some, up to catchUpWait (see catchUp).
const (
	backedUp    = 256
	catchUpWait = 2 * time.Millisecond
)

// outStream is one Subscribe stream open on this node.
type outStream struct {
	subscriberID string
	filters      []Filter
	events       chan *meshv1.Event
	info         chan struct{}
	overflow     chan struct{}
	overflowed   atomic.Bool
	// taken is signalled each time the writer takes an event.
	taken chan struct{}
}

func newOutStream(subscriberID string, filters []Filter) *outStream {
	return &outStream{
		subscriberID: subscriberID,
		filters:      filters,
		events:       make(chan *meshv1.Event, streamBuffer),
		info:         make(chan struct{}, 1),
		overflow:     make(chan struct{}, 1),
		taken:        make(chan struct{}, 1),
	}
}

// tookOne tells a publisher waiting in catchUp that the writer took an event.
func (s *outStream) tookOne() {
	select {
	case s.taken <- struct{}{}:
	default:
	}
}

func (s *outStream) infoChanged() {
	select {
	case s.info <- struct{}{}:
	default:
	}
}

// offer queues ev, or marks the stream overflowed.
func (s *outStream) offer(ev *meshv1.Event) bool {
	if s.overflowed.Load() {
		return false
	}
	select {
	case s.events <- ev:
		return true
	default:
		s.overflowed.Store(true)
		select {
		case s.overflow <- struct{}{}:
		default:
		}
		return false
	}
}

// publishFrom publishes msg on topic as from's agent (nil: from outside any
// agent), in a publish span.
func (n *Node) publishFrom(ctx context.Context, from *Call, topic TopicID, msg proto.Message, opts []CallOption) (*meshv1.PublishResponse, error) {
	o := collect(opts)
	ctx, cancel := n.callContext(ctx, o)
	defer cancel()
	messageID := o.messageID
	if messageID == "" {
		messageID = newMessageID()
	}
	ctx, span := n.tr.start(parentContext(ctx, from, o), "publish "+topic.Type, trace.SpanKindProducer, func() []attribute.KeyValue {
		attrs := []attribute.KeyValue{
			attrOperation.String("publish"),
			attrDestination.String(topic.Type),
			attrTopicSource.String(topic.Source),
			attrMessageID.String(messageID),
		}
		if msg != nil {
			attrs = append(attrs, attrMessageType.String(TypeName(msg)))
		}
		return attrs
	})
	defer span.End()
	payload, err := o.encode(msg)
	if err != nil {
		fail(span, err)
		return nil, err
	}
	env := &meshv1.Envelope{
		MessageId:      messageID,
		Payload:        payload,
		Metadata:       maps.Clone(o.metadata),
		IdempotencyKey: o.idempotencyKey,
	}
	env.Metadata = injectInto(ctx, env.Metadata)
	if from != nil {
		env.Sender = from.agent.Proto()
	}
	resp, err := n.publish(ctx, topic.Proto(), env, o.scope, false)
	if err != nil {
		e := FromError(err)
		fail(span, e)
		return nil, e
	}
	if resp.GetStreamDeliveries() > 0 {
		n.catchUp(topic.Type)
	}
	return resp, nil
}

// catchUp waits while a stream on topicType is backed up, until its writer
// has taken enough events or catchUpWait has passed. A loop of publishes
// queues events faster than a writer sends them, one per message: without
// the wait the loop would end a stream whose subscriber keeps up. The bound
// is per publish, as on the Python and Node nodes: a writer that is only
// descheduled falls one event further behind per publish that gives up on
// it, and a subscriber that cannot take 500 events a second still falls
// behind and is ended, holding each publish up to catchUpWait until then.
func (n *Node) catchUp(topicType string) {
	behind := n.backedUpStream(topicType)
	if behind == nil {
		return
	}
	timer := time.NewTimer(catchUpWait)
	defer timer.Stop()
	for behind != nil {
		select {
		case <-behind.taken:
		case <-timer.C:
			return
		}
		behind = n.backedUpStream(topicType)
	}
}

func (n *Node) backedUpStream(topicType string) *outStream {
	n.mu.Lock()
	defer n.mu.Unlock()
	for s := range n.streams {
		if len(s.events) >= backedUp && !s.overflowed.Load() && anyMatches(s.filters, topicType) {
			return s
		}
	}
	return nil
}

// publish delivers a published message to the node's matching subscribers
// (except its sender; subscribed types hosted elsewhere get it through the
// node hosting them) and, unless the scope is NODE or the event came from a
// peer's stream, queues it on every matching Subscribe stream.
func (n *Node) publish(ctx context.Context, topicP *meshv1.TopicId, env *meshv1.Envelope, scope meshv1.PublishScope, fromPeer bool) (*meshv1.PublishResponse, error) {
	topic := TopicIDOf(topicP)
	if err := topic.Validate(); err != nil {
		return nil, err
	}
	if env.GetPayload() == nil {
		return nil, badPayload("the envelope carries no payload", "")
	}
	if _, err := contentType(env.GetPayload().GetContentType()); err != nil {
		return nil, err
	}
	resp := &meshv1.PublishResponse{}

	n.mu.Lock()
	var agentTypes []string
	for _, s := range n.subs {
		if s.filter.Matches(topic.Type) && !slices.Contains(agentTypes, s.agentType) {
			agentTypes = append(agentTypes, s.agentType)
		}
	}
	n.mu.Unlock()
	if len(agentTypes) > 0 {
		msg, err := decodePayload(n.types, env.GetPayload())
		if err != nil {
			return nil, err
		}
		if resp.LocalDeliveries, err = n.deliverLocal(ctx, topic, topicP, env, msg, agentTypes, true); err != nil {
			return nil, err
		}
	}

	if fromPeer || scope == meshv1.PublishScope_PUBLISH_SCOPE_NODE {
		return resp, nil
	}
	ev := &meshv1.Event{Topic: topicP, Envelope: env, OriginNodeId: n.id}
	n.mu.Lock()
	defer n.mu.Unlock()
	for s := range n.streams {
		if !anyMatches(s.filters, topic.Type) {
			continue
		}
		if s.offer(ev) {
			resp.StreamDeliveries++
		} else {
			n.log.Warn("subscriber fell behind; its stream ends", "subscriber", s.subscriberID, "topic", topic.String())
		}
	}
	return resp, nil
}

// deliverLocal hands a published message to the agents of agentTypes whose
// key is the topic source, skipping its sender. With remote, an agent type
// this node does not host goes to the node hosting it, as a Send with the
// topic set. It returns the number of local deliveries; a mailbox that stays
// full until ctx is done fails it with MAILBOX_FULL.
func (n *Node) deliverLocal(ctx context.Context, topic TopicID, topicP *meshv1.TopicId, env *meshv1.Envelope, msg proto.Message, agentTypes []string, remote bool) (uint32, error) {
	var delivered uint32
	msgType := TypeName(msg)
	for _, agentType := range agentTypes {
		id := AgentID{Type: agentType, Key: topic.Source}
		if env.GetSender() != nil && AgentIDOf(env.GetSender()) == id {
			continue
		}
		n.mu.Lock()
		at := n.agentTypes[agentType]
		n.mu.Unlock()
		if at == nil {
			if remote {
				go n.deliverRemote(id, topicP, env)
			} else {
				n.log.Warn("a subscription names an agent type that is not registered", "agent_type", agentType, "topic", topic.String())
			}
			continue
		}
		h, ok := at.handlers[msgType]
		if !ok {
			n.log.Warn("subscriber has no handler for the event", "agent_type", agentType, "message_type", msgType, "topic", topic.String())
			continue
		}
		dctx, cancel := context.WithTimeout(n.baseCtx, n.opts.DefaultTimeout)
		call := &Call{
			node:        n,
			agent:       id,
			sender:      env.GetSender(),
			topic:       topicP,
			messageID:   env.GetMessageId(),
			metadata:    env.GetMetadata(),
			traceparent: env.GetMetadata()["traceparent"],
		}
		call.deadline, _ = dctx.Deadline()
		if err := n.deliverTo(ctx, at, id, &delivery{ctx: dctx, cancel: cancel, call: call, msg: msg, handler: h}); err != nil {
			cancel()
			return delivered, err
		}
		delivered++
	}
	return delivered, nil
}

// deliverTo queues a published message for the instance of id, activating
// it when it has none, or anew when it was passivated meanwhile.
func (n *Node) deliverTo(ctx context.Context, at *agentType, id AgentID, d *delivery) error {
	for {
		inst, err := n.instance(ctx, at, id)
		if err != nil {
			return err
		}
		d.call.state = inst.state
		if err = n.enqueueWait(ctx, inst, d); err != errRetired {
			return err
		}
	}
}

// enqueueWait queues d, waiting for room in a full mailbox until ctx is done
// (back-pressure for publishers).
func (n *Node) enqueueWait(ctx context.Context, inst *instance, d *delivery) error {
	delay := 500 * time.Microsecond
	for {
		err := n.enqueue(inst, d)
		var re *Error
		if err == nil || !errors.As(err, &re) || re.Reason != ReasonMailboxFull {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return &Error{Code: codes.ResourceExhausted, Reason: ReasonMailboxFull, Metadata: re.Metadata,
				Message: fmt.Sprintf("mailbox of %s stayed full (%d messages) until the publish deadline", inst.id, n.opts.MailboxCapacity)}
		case <-t.C:
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}

// deliverRemote hands a published message for an agent type hosted
// elsewhere to the node hosting it, in the background.
func (n *Node) deliverRemote(id AgentID, topicP *meshv1.TopicId, env *meshv1.Envelope) {
	ctx, cancel := context.WithTimeout(n.baseCtx, n.opts.DefaultTimeout)
	defer cancel()
	req := &meshv1.SendRequest{Recipient: id.Proto(), Envelope: env, Topic: topicP}
	// The event's trace context goes on in the envelope and the gRPC metadata.
	ctx = extractParent(ctx, env.GetMetadata(), traceContext{})
	if _, err := n.sendToPeer(ctx, req, nil); err != nil {
		n.log.Warn("could not deliver a published message", "agent", id.String(), "topic", TopicIDOf(topicP).String(), "message_type", env.GetPayload().GetType(), "err", err)
	}
}

// deliverPeerEvent delivers an event from a peer's stream to the node's own
// subscribers only.
func (n *Node) deliverPeerEvent(ev *meshv1.Event) {
	if ev.GetOriginNodeId() == n.id {
		return
	}
	ctx, cancel := context.WithTimeout(n.baseCtx, n.opts.DefaultTimeout)
	defer cancel()
	if _, err := n.publish(ctx, ev.GetTopic(), ev.GetEnvelope(), meshv1.PublishScope_PUBLISH_SCOPE_NODE, true); err != nil {
		n.log.Error("cannot deliver an event from a peer", "origin", ev.GetOriginNodeId(), "topic", TopicIDOf(ev.GetTopic()).String(), "err", err)
	}
}

func (n *Node) addStream(s *outStream) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.streams[s] = struct{}{}
}

func (n *Node) removeStream(s *outStream) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.streams, s)
}
