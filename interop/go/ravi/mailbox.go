package ravi

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// instance is one agent (an AgentID) with its state and mailbox. A
// non-reentrant instance runs one delivery at a time, in arrival order, on a
// goroutine that exists while the mailbox is not empty; a reentrant one runs
// each delivery on its own goroutine.
type instance struct {
	id    AgentID
	typ   *agentType
	state any

	mu      sync.Mutex
	queue   []*delivery
	running bool
	pending int // queued or running
}

type delivery struct {
	ctx     context.Context
	cancel  context.CancelFunc // publications own their context
	call    *Call
	msg     proto.Message
	handler Handler
	done    chan outcome // nil for publications
}

type outcome struct {
	reply proto.Message
	err   error
}

// instance returns the instance of id, creating it (and its state) the first
// time.
func (n *Node) instance(at *agentType, id AgentID) *instance {
	n.mu.Lock()
	inst := n.instances[id]
	n.mu.Unlock()
	if inst != nil {
		return inst
	}
	n.instMu.Lock()
	defer n.instMu.Unlock()
	n.mu.Lock()
	inst = n.instances[id]
	n.mu.Unlock()
	if inst != nil {
		return inst
	}
	var state any
	if at.newState != nil {
		state = at.newState(id)
	}
	inst = &instance{id: id, typ: at, state: state}
	n.mu.Lock()
	n.instances[id] = inst
	n.mu.Unlock()
	return inst
}

// enqueue queues d, or fails with MAILBOX_FULL when capacity deliveries are
// queued or running already.
func (n *Node) enqueue(inst *instance, d *delivery) error {
	inst.mu.Lock()
	if inst.pending >= n.opts.MailboxCapacity {
		inst.mu.Unlock()
		return &Error{
			Code:     codes.ResourceExhausted,
			Reason:   ReasonMailboxFull,
			Message:  fmt.Sprintf("mailbox of %s is full (%d messages)", inst.id, n.opts.MailboxCapacity),
			Metadata: map[string]string{"agent_type": inst.id.Type, "node_id": n.id},
		}
	}
	inst.pending++
	if inst.typ.reentrant {
		inst.mu.Unlock()
		go func() {
			n.run(inst, d)
			inst.mu.Lock()
			inst.pending--
			inst.mu.Unlock()
		}()
		return nil
	}
	inst.queue = append(inst.queue, d)
	start := !inst.running
	inst.running = true
	inst.mu.Unlock()
	if start {
		go n.drain(inst)
	}
	return nil
}

func (n *Node) drain(inst *instance) {
	for {
		inst.mu.Lock()
		if len(inst.queue) == 0 {
			inst.running = false
			inst.mu.Unlock()
			return
		}
		d := inst.queue[0]
		inst.queue[0] = nil
		inst.queue = inst.queue[1:]
		inst.mu.Unlock()
		n.run(inst, d)
		inst.mu.Lock()
		inst.pending--
		inst.mu.Unlock()
	}
}

// run runs one delivery's handler, turning a panic into a HANDLER_FAILED
// error. A call whose caller is gone before it starts is skipped.
func (n *Node) run(inst *instance, d *delivery) {
	if d.cancel != nil {
		defer d.cancel()
	}
	if err := d.ctx.Err(); err != nil {
		if d.done != nil {
			d.done <- outcome{err: err}
		}
		return
	}
	ctx := d.ctx
	var span trace.Span
	if d.done == nil {
		// A published message: the deliver span, a child of the event's
		// span and linked to it, parents what the handler does.
		ctx, span = n.startDeliver(ctx, d.call, d.msg)
		defer span.End()
	}
	reply, err := func() (reply proto.Message, err error) {
		defer func() {
			if v := recover(); v != nil {
				n.log.Error("handler panicked", "agent", inst.id.String(), "panic", v, "stack", string(debug.Stack()))
				err = panicError{value: v}
			}
		}()
		return d.handler.fn(ctx, d.call, d.msg)
	}()
	if err != nil {
		err = handlerFailure(inst.id, err)
		if span != nil {
			fail(span, err)
		}
	}
	if d.done != nil {
		d.done <- outcome{reply: reply, err: err}
		return
	}
	if err != nil {
		topic, _ := d.call.Topic()
		n.log.Error("subscriber failed", "agent", inst.id.String(), "topic", topic.String(), "message_type", TypeName(d.msg), "err", err)
	}
}

// startDeliver starts the deliver span of a published message's handler.
func (n *Node) startDeliver(ctx context.Context, call *Call, msg proto.Message) (context.Context, trace.Span) {
	var opts []trace.SpanStartOption
	if parent := remoteSpanContext(call.metadata); parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: parent}))
	}
	ctx, span := n.tr.start(ctx, "deliver "+call.agent.Type, trace.SpanKindConsumer, func() []attribute.KeyValue {
		topic, _ := call.Topic()
		return []attribute.KeyValue{
			attrOperation.String("process"),
			attrAgentType.String(call.agent.Type),
			attrAgentKey.String(call.agent.Key),
			attrTopicType.String(topic.Type),
			attrTopicSource.String(topic.Source),
			attrMessageType.String(TypeName(msg)),
			attrMessageID.String(call.messageID),
		}
	}, opts...)
	call.spanCtx = span.SpanContext()
	return ctx, span
}
