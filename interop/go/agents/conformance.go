package agents

import (
	"context"
	"errors"
	"time"

	conformancev1 "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	"google.golang.org/grpc/codes"
)

// ConformanceType is the default agent type of the conformance agent.
const ConformanceType = "conformance"

// ConformanceTopic is the topic type the conformance agent subscribes to.
const ConformanceTopic = "conformance.events"

// ConformanceAgentType returns the conformance agent of
// proto/ravi/conformance/v1/conformance.proto under the type name (default
// ConformanceType). Every AgentID has its own Conformance state: agents of
// the same type share nothing across keys.
func ConformanceAgentType(name string) ravi.AgentType {
	if name == "" {
		name = ConformanceType
	}
	return ravi.AgentType{
		Name:     name,
		NewState: func(ravi.AgentID) any { return &Conformance{} },
		Handlers: []ravi.Handler{
			ravi.HandleMethod((*Conformance).Echo),
			ravi.HandleMethod((*Conformance).Fail),
			ravi.HandleMethod((*Conformance).Sleep),
			ravi.HandleMethod((*Conformance).Forward),
			ravi.HandleMethod((*Conformance).Report),
		},
		Subscriptions: []ravi.Filter{ravi.TopicType(ConformanceTopic)},
	}
}

// Conformance is the state of one conformance agent.
type Conformance struct {
	events    []string
	cancelled []string
}

// Echo answers with what the agent received; an Echo published on
// conformance.events is remembered instead.
func (c *Conformance) Echo(_ context.Context, call *ravi.Call, req *conformancev1.Echo) (*conformancev1.Echoed, error) {
	if _, ok := call.Topic(); ok {
		c.events = append(c.events, req.GetText())
		return nil, nil
	}
	out := &conformancev1.Echoed{
		Text:      req.GetText(),
		Agent:     call.Agent().Proto(),
		NodeId:    call.NodeID(),
		Language:  ravi.Language,
		Metadata:  call.Metadata(),
		MessageId: call.MessageID(),
	}
	if sender, ok := call.Sender(); ok {
		out.Sender = sender.Proto()
	}
	return out, nil
}

// Fail fails with the code asked for: 0 is an ordinary Go error (UNKNOWN /
// HANDLER_FAILED, exception_type "*errors.errorString").
func (c *Conformance) Fail(_ context.Context, _ *ravi.Call, req *conformancev1.Fail) (*conformancev1.Echoed, error) {
	if req.GetCode() == 0 {
		return nil, errors.New(req.GetMessage())
	}
	return nil, &ravi.Error{Code: codes.Code(req.GetCode()), Message: req.GetMessage()}
}

// Sleep waits, and remembers the tag when it is cancelled while waiting.
func (c *Conformance) Sleep(ctx context.Context, _ *ravi.Call, req *conformancev1.Sleep) (*conformancev1.Slept, error) {
	t := time.NewTimer(time.Duration(req.GetMillis()) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return &conformancev1.Slept{Tag: req.GetTag()}, nil
	case <-ctx.Done():
		c.cancelled = append(c.cancelled, req.GetTag())
		return nil, ctx.Err()
	}
}

// Forward sends an Echo to the target with the caller's deadline and call
// chain, and returns its answer.
func (c *Conformance) Forward(ctx context.Context, call *ravi.Call, req *conformancev1.Forward) (*conformancev1.Echoed, error) {
	return ravi.Ask[*conformancev1.Echoed](ctx, call, ravi.AgentIDOf(req.GetTarget()), &conformancev1.Echo{Text: req.GetText()})
}

// Report answers with what the agent observed.
func (c *Conformance) Report(context.Context, *ravi.Call, *conformancev1.Report) (*conformancev1.Observed, error) {
	return &conformancev1.Observed{
		Events:    append([]string(nil), c.events...),
		Cancelled: append([]string(nil), c.cancelled...),
	}, nil
}
