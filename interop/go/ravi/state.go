package ravi

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// StateTypeName is the payload type of saved agent state: a JSON object.
const StateTypeName = "google.protobuf.Struct"

// StateSaver is implemented by agent state (AgentType.NewState) that can be
// saved; SaveState returns a value that encoding/json encodes as a JSON
// object. State without it saves as {}.
type StateSaver interface {
	SaveState() (any, error)
}

// StateLoader is implemented by agent state that can be restored from the
// JSON object SaveState produced. State without it ignores loads.
type StateLoader interface {
	LoadState(data []byte) error
}

// inMailbox runs fn as the next message of inst, so it never runs alongside
// the agent's handlers.
func (n *Node) inMailbox(ctx context.Context, inst *instance, fn func() error) error {
	d := &delivery{
		ctx:  ctx,
		call: &Call{node: n, agent: inst.id, state: inst.state},
		handler: Handler{fn: func(context.Context, *Call, proto.Message) (proto.Message, error) {
			return nil, fn()
		}},
		done: make(chan outcome, 1),
	}
	if err := n.enqueueWait(ctx, inst, d); err != nil {
		return err
	}
	select {
	case o := <-d.done:
		return o.err
	case <-ctx.Done():
		return FromError(ctx.Err())
	}
}

func (n *Node) hostedInstance(ctx context.Context, id AgentID) (*instance, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	at := n.agentTypes[id.Type]
	n.mu.Unlock()
	if at == nil {
		return nil, reasonError(codes.NotFound, ReasonAgentTypeNotFound,
			fmt.Sprintf("node %s does not host agent type %q", n.id, id.Type),
			map[string]string{"agent_type": id.Type, "node_id": n.id})
	}
	return n.instance(ctx, at, id)
}

func (n *Node) saveState(ctx context.Context, req *meshv1.SaveStateRequest) (*meshv1.SaveStateResponse, error) {
	var insts []*instance
	if req.GetAgent() != nil {
		inst, err := n.hostedInstance(ctx, AgentIDOf(req.GetAgent()))
		if err != nil {
			return nil, err
		}
		insts = append(insts, inst)
	} else {
		n.mu.Lock()
		for _, inst := range n.instances {
			insts = append(insts, inst)
		}
		n.mu.Unlock()
		sort.Slice(insts, func(i, j int) bool { return insts[i].id.String() < insts[j].id.String() })
	}
	resp := &meshv1.SaveStateResponse{States: map[string]*meshv1.Payload{}}
	for _, inst := range insts {
		data := []byte("{}")
		if saver, ok := inst.state.(StateSaver); ok {
			err := n.inMailbox(ctx, inst, func() error {
				v, err := saver.SaveState()
				if err != nil {
					return err
				}
				if data, err = json.Marshal(v); err != nil {
					return err
				}
				if len(data) == 0 || data[0] != '{' {
					return fmt.Errorf("the state of %s is not a JSON object", inst.id)
				}
				return nil
			})
			if err != nil {
				return nil, handlerFailure(inst.id, err)
			}
		}
		resp.States[inst.id.String()] = &meshv1.Payload{Type: StateTypeName, ContentType: ContentTypeJSON, Data: data}
	}
	return resp, nil
}

func (n *Node) loadState(ctx context.Context, req *meshv1.LoadStateRequest) (*meshv1.LoadStateResponse, error) {
	keys := make([]string, 0, len(req.GetStates()))
	for k := range req.GetStates() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		id, err := ParseAgentID(key)
		if err != nil {
			return nil, err
		}
		inst, err := n.hostedInstance(ctx, id)
		if err != nil {
			return nil, err
		}
		p := req.GetStates()[key]
		if ct, err := contentType(p.GetContentType()); err != nil || ct != ContentTypeJSON {
			return nil, badPayload(fmt.Sprintf("the state of %s must be a JSON object (application/json)", id), p.GetType())
		}
		var obj map[string]json.RawMessage
		if !jsonDepthOK(p.GetData()) {
			return nil, badPayload(fmt.Sprintf("the state of %s nests deeper than %d arrays and objects", id, meshv1.MaxNestingDepth), p.GetType())
		}
		if err := json.Unmarshal(p.GetData(), &obj); err != nil || obj == nil {
			return nil, badPayload(fmt.Sprintf("the state of %s is not a JSON object", id), p.GetType())
		}
		if loader, ok := inst.state.(StateLoader); ok {
			if err := n.inMailbox(ctx, inst, func() error { return loader.LoadState(p.GetData()) }); err != nil {
				return nil, handlerFailure(inst.id, err)
			}
		}
	}
	return &meshv1.LoadStateResponse{}, nil
}

// promise is a named value a handler may wait for (Call.WaitFor).
type promise struct {
	done    chan struct{}
	value   proto.Message
	waiters int
}

func (n *Node) promiseLocked(name string) *promise {
	p := n.promises[name]
	if p == nil {
		p = &promise{done: make(chan struct{})}
		n.promises[name] = p
	}
	return p
}

// resolveLocal resolves a promise on this node; waiting says a handler was
// waiting for it. A promise resolved already is ALREADY_EXISTS.
func (n *Node) resolveLocal(name string, value proto.Message) (waiting bool, err error) {
	if name == "" {
		return false, &Error{Code: codes.InvalidArgument, Message: "a promise needs a name"}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.promiseLocked(name)
	select {
	case <-p.done:
		return false, &Error{Code: codes.AlreadyExists, Message: fmt.Sprintf("promise %q is resolved already", name)}
	default:
	}
	p.value = value
	close(p.done)
	return p.waiters > 0, nil
}

// ResolvePromise resolves the named promise on this node and on every peer
// it is connected to (one of them may hold the waiting handler); each keeps
// the value for a handler that waits later. A value that is not a message
// can travel as a structpb.Value. It fails with ALREADY_EXISTS when the
// promise was resolved already here or on a peer.
func (n *Node) ResolvePromise(ctx context.Context, name string, value proto.Message) error {
	_, err := n.resolveLocal(name, value)
	already := CodeOf(err) == codes.AlreadyExists
	if err != nil && !already {
		return err
	}
	payload, err := EncodePayload(value)
	if err != nil {
		return err
	}
	n.mu.Lock()
	var peers []*peer
	for _, p := range n.sortedPeersLocked() {
		if p.info != nil {
			peers = append(peers, p)
		}
	}
	n.mu.Unlock()
	ctx, cancel := withTimeout(ctx, 0, n.opts.DefaultTimeout)
	defer cancel()
	for _, p := range peers {
		_, err := p.client.svc.ResolvePromise(ctx, &meshv1.ResolvePromiseRequest{Name: name, Value: payload})
		switch CodeOf(err) {
		case codes.OK, codes.Unimplemented:
		case codes.AlreadyExists:
			already = true
		default:
			n.log.Warn("a peer could not resolve the promise", "peer", p.name, "promise", name, "err", err)
		}
	}
	if already {
		return &Error{Code: codes.AlreadyExists, Message: fmt.Sprintf("promise %q is resolved already", name)}
	}
	return nil
}

// WaitFor waits until the named promise is resolved (on this node, or by a
// ResolvePromise call from anywhere) and returns its value.
func (c *Call) WaitFor(ctx context.Context, name string) (proto.Message, error) {
	return c.node.waitForPromise(ctx, name)
}

func (n *Node) waitForPromise(ctx context.Context, name string) (proto.Message, error) {
	n.mu.Lock()
	p := n.promiseLocked(name)
	p.waiters++
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		p.waiters--
		n.mu.Unlock()
	}()
	select {
	case <-p.done:
		return p.value, nil
	case <-ctx.Done():
		e := FromError(ctx.Err())
		return nil, &Error{Code: e.Code, Message: fmt.Sprintf("waiting for promise %q: %s", name, e.Message)}
	}
}

func (n *Node) serveResolvePromise(req *meshv1.ResolvePromiseRequest) (*meshv1.ResolvePromiseResponse, error) {
	value, err := decodePayload(n.types, req.GetValue())
	if err != nil {
		return nil, err
	}
	waiting, err := n.resolveLocal(req.GetName(), value)
	if err != nil {
		return nil, err
	}
	return &meshv1.ResolvePromiseResponse{Waiting: waiting}, nil
}
