package ravi

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// instance is one agent (an AgentID) with its state and mailbox. A
// non-reentrant instance runs one delivery at a time, in arrival order, on a
// goroutine that exists while the mailbox is not empty; a reentrant one runs
// each delivery on its own goroutine. Instances come and go (lifecycle.go):
// a passivated one is retired, and a delivery that finds it so activates its
// agent again.
type instance struct {
	id    AgentID
	typ   *agentType
	state any

	mu      sync.Mutex
	queue   []*delivery
	running bool
	pending int // queued or running
	retired bool

	// Under Node.mu: the least recently used order and the last message.
	elem     *list.Element
	lastUsed time.Time

	saveMu  sync.Mutex // serialises the saves of one instance
	version int64      // of its state in the store, as loaded or last saved; -1 once stale
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

// errRetired says the instance was passivated between its lookup and the
// delivery: the caller looks the agent up again, which activates it anew.
var errRetired = errors.New("ravi: the agent instance was passivated")

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
	if inst.retired {
		inst.mu.Unlock()
		return errRetired
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
	if err == nil && n.checkpointEach {
		// Saved before the reply goes out: an acknowledged message is durable.
		if err = n.checkpoint(ctx, inst); err != nil {
			reply = nil
		}
	}
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
