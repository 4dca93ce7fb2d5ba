package agents

import (
	"context"
	"encoding/json"

	conformancev1 "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
)

// CounterType is the default agent type of the counter agent.
const CounterType = "counter"

// CounterAgentType returns the counter agent of
// proto/ravi/conformance/v1/conformance.proto under the type name (default
// CounterType): its state, the ids of the increments it applied, goes to the
// node's state store, so a test can tell a lost increment from a doubled one
// across passivation, kills and restarts, as with the Python and Node nodes.
func CounterAgentType(name string) ravi.AgentType {
	if name == "" {
		name = CounterType
	}
	return ravi.AgentType{
		Name:     name,
		NewState: func(ravi.AgentID) any { return &Counter{} },
		Handlers: []ravi.Handler{
			ravi.HandleMethod((*Counter).Count),
			ravi.HandleMethod((*Counter).Read),
		},
	}
}

// Counter is the state of one counter agent.
type Counter struct {
	IDs []string `json:"ids"`
}

// Count applies one increment.
func (c *Counter) Count(_ context.Context, call *ravi.Call, req *conformancev1.Count) (*conformancev1.Counted, error) {
	c.IDs = append(c.IDs, req.GetId())
	return &conformancev1.Counted{Total: uint64(len(c.IDs)), NodeId: call.NodeID()}, nil
}

// Read answers with the increments held.
func (c *Counter) Read(_ context.Context, call *ravi.Call, _ *conformancev1.ReadCount) (*conformancev1.Counted, error) {
	return &conformancev1.Counted{Total: uint64(len(c.IDs)), NodeId: call.NodeID(), Ids: c.IDs}, nil
}

// SaveState returns the increments as {"ids": [...]}.
func (c *Counter) SaveState() (any, error) {
	if c.IDs == nil {
		return map[string]any{"ids": []string{}}, nil
	}
	return c, nil
}

// LoadState restores what SaveState returned (by any language's node).
func (c *Counter) LoadState(data []byte) error {
	return json.Unmarshal(data, c)
}
