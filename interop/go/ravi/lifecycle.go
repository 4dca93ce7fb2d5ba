package ravi

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc/codes"
)

// Agent lifecycles: an instance idle for Options.IdleTimeout, or the least
// recently used idle one beyond Options.MaxActiveAgents, is passivated (its
// state saved to the StateStore, the instance released), and its next
// message activates it again with its state loaded. An instance with a
// message queued or running, or whose type or state says Resident, stays.

// Defaults of the lifecycle options, shared with the Python and Node members
// through the contract's facts.
const (
	DefaultIdleTimeout     = meshv1.DefaultIdleTimeout
	DefaultMaxActiveAgents = meshv1.DefaultMaxActiveAgents
	DefaultCheckpoint      = meshv1.DefaultCheckpoint
	// CheckpointEachMessage saves an agent's state after every handled
	// message, before the reply goes out.
	CheckpointEachMessage = "each_message"
	// StateFile is the SQLite file of agent state in Options.DataDir.
	StateFile = "state.sqlite3"
)

// Resident is implemented by agent state that may ask to stay active
// however idle it is.
type Resident interface {
	Resident() bool
}

// The reasons a passivation is logged with.
const (
	reasonIdle     = "idle"
	reasonCapacity = "capacity"
	reasonStop     = "stop"
)

// lifecycleOptions fills in the defaults of the lifecycle options.
func lifecycleOptions(opts *Options) error {
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.MaxActiveAgents == 0 {
		opts.MaxActiveAgents = DefaultMaxActiveAgents
	}
	switch opts.Checkpoint {
	case "":
		opts.Checkpoint = DefaultCheckpoint
	case DefaultCheckpoint, CheckpointEachMessage:
	default:
		return fmt.Errorf("ravi: checkpoint must be one of %s, %s; got %q", DefaultCheckpoint, CheckpointEachMessage, opts.Checkpoint)
	}
	if opts.StateStore == nil {
		if opts.DataDir != "" {
			opts.StateStore = NewSQLiteStore(filepath.Join(opts.DataDir, StateFile))
		} else {
			opts.StateStore = NewMemoryStore()
		}
	}
	return nil
}

// stateful says whether instances of the type have state to save or load.
func stateful(state any) bool {
	_, saves := state.(StateSaver)
	_, loads := state.(StateLoader)
	return saves || loads
}

// instance returns the active instance of id, activating it (its state
// loaded from the store) when it has none.
func (n *Node) instance(ctx context.Context, at *agentType, id AgentID) (*instance, error) {
	for {
		n.mu.Lock()
		if inst := n.instances[id]; inst != nil {
			inst.lastUsed = time.Now()
			n.lru.MoveToFront(inst.elem)
			n.mu.Unlock()
			return inst, nil
		}
		wait := n.activating[id]
		if wait == nil {
			wait = n.leaving[id]
		}
		if wait != nil {
			// Another caller activates it, or its passivation is saving the
			// state this activation loads: wait for that first.
			n.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, FromError(ctx.Err())
			}
		}
		done := make(chan struct{})
		n.activating[id] = done
		n.mu.Unlock()
		inst, err := n.activate(ctx, at, id)
		n.mu.Lock()
		delete(n.activating, id)
		var victims []*instance
		if err == nil {
			inst.lastUsed = time.Now()
			inst.elem = n.lru.PushFront(inst)
			n.instances[id] = inst
			n.active[id.Type]++
			victims = n.evictLocked()
		}
		n.mu.Unlock()
		close(done)
		for _, v := range victims {
			n.letGo(v, reasonCapacity)
		}
		return inst, err
	}
}

func (n *Node) activate(ctx context.Context, at *agentType, id AgentID) (*instance, error) {
	var state any
	if at.newState != nil {
		state = at.newState(id)
	}
	inst := &instance{id: id, typ: at, state: state}
	if !stateful(state) {
		return inst, nil
	}
	select {
	case <-n.storeOpen:
	case <-ctx.Done():
		return nil, FromError(ctx.Err())
	}
	if n.storeErr != nil {
		return nil, &Error{Code: codes.Unavailable, Message: "the state store is not available: " + n.storeErr.Error()}
	}
	delay := 5 * time.Millisecond
	for {
		stored, err := n.opts.StateStore.Load(ctx, id)
		if err != nil {
			return nil, err
		}
		if stored.HeldBy == "" {
			inst.version = stored.Version
			if loader, ok := state.(StateLoader); ok && stored.State != nil {
				if err := loader.LoadState(stored.State); err != nil {
					return nil, handlerFailure(id, err)
				}
			}
			return inst, nil
		}
		// Another node holds the agent while it hands it over (saving its
		// state first): wait, as long as the call may.
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, &Error{Code: codes.Unavailable,
				Message:  fmt.Sprintf("%s is held by node %q, which did not let it go before the deadline", id, stored.HeldBy),
				Metadata: map[string]string{"agent_type": id.Type, "node_id": stored.HeldBy}}
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}

// retireLocked takes inst out of the node if nothing is queued or running in
// it (and, unless forced, it is not resident); called with n.mu held.
func (n *Node) retireLocked(inst *instance, force bool) bool {
	if !force && (inst.typ.resident || isResident(inst.state)) {
		return false
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if inst.pending > 0 || inst.retired {
		return false
	}
	inst.retired = true
	n.dropLocked(inst)
	return true
}

func (n *Node) dropLocked(inst *instance) {
	if n.instances[inst.id] == inst {
		delete(n.instances, inst.id)
		n.lru.Remove(inst.elem)
		n.active[inst.id.Type]--
	}
}

func isResident(state any) bool {
	r, ok := state.(Resident)
	return ok && r.Resident()
}

// evictLocked retires the least recently used idle instances beyond
// MaxActiveAgents; the caller saves them (letGo) without n.mu.
func (n *Node) evictLocked() []*instance {
	bound := n.opts.MaxActiveAgents
	if bound < 0 {
		return nil
	}
	var victims []*instance
	for e := n.lru.Back(); e != nil && n.lru.Len() > bound; {
		inst := e.Value.(*instance)
		e = e.Prev()
		if n.retireLocked(inst, false) {
			victims = append(victims, inst)
			n.leaving[inst.id] = make(chan struct{})
		}
	}
	return victims
}

// letGo saves a retired instance's state (releasing it in a shared store)
// and wakes the activations of its agent that waited for it.
func (n *Node) letGo(inst *instance, reason string) {
	defer func() {
		n.mu.Lock()
		if ch := n.leaving[inst.id]; ch != nil {
			close(ch)
			delete(n.leaving, inst.id)
		}
		n.mu.Unlock()
	}()
	if !stateful(inst.state) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.opts.DefaultTimeout)
	defer cancel()
	if err := n.save(ctx, inst, true); err != nil {
		n.log.Warn("agent state not saved", "agent", inst.id.String(), "on", reason, "err", err)
	}
}

// save writes inst's state to the store over its version.
func (n *Node) save(ctx context.Context, inst *instance, release bool) error {
	inst.saveMu.Lock()
	defer inst.saveMu.Unlock()
	if inst.version < 0 {
		return staleState(inst.id, inst.version, "a newer copy", n.id)
	}
	data := []byte("{}")
	if saver, ok := inst.state.(StateSaver); ok {
		v, err := saver.SaveState()
		if err != nil {
			return handlerFailure(inst.id, err)
		}
		if data, err = json.Marshal(v); err != nil || len(data) == 0 || data[0] != '{' {
			return &Error{Code: codes.InvalidArgument, Message: fmt.Sprintf("the state of %s is not a JSON object", inst.id)}
		}
	}
	version, err := n.opts.StateStore.Save(ctx, inst.id, data, inst.version, release)
	if err != nil {
		return err
	}
	inst.version = version
	return nil
}

// checkpoint saves a running instance's state after a message (Checkpoint
// "each_message"). When the store refused the write, or its outcome is
// unknown, the instance is discarded: the next message loads the agent from
// the store afresh.
func (n *Node) checkpoint(ctx context.Context, inst *instance) error {
	if !stateful(inst.state) {
		return nil
	}
	err := n.save(ctx, inst, false)
	if err == nil || CodeOf(err) == codes.InvalidArgument {
		return err
	}
	inst.saveMu.Lock()
	inst.version = -1
	inst.saveMu.Unlock()
	n.mu.Lock()
	inst.mu.Lock()
	inst.retired = true
	inst.mu.Unlock()
	n.dropLocked(inst)
	n.mu.Unlock()
	return err
}

// sweep passivates the instances idle for IdleTimeout, every quarter of it,
// until the node stops.
func (n *Node) sweep() {
	defer n.peerWG.Done()
	tick := time.NewTicker(n.opts.IdleTimeout / 4)
	defer tick.Stop()
	for {
		select {
		case <-n.stopCh:
			return
		case now := <-tick.C:
			var idle []*instance
			n.mu.Lock()
			for e := n.lru.Back(); e != nil; {
				inst := e.Value.(*instance)
				e = e.Prev()
				if now.Sub(inst.lastUsed) < n.opts.IdleTimeout {
					break // the rest were used more recently
				}
				if n.retireLocked(inst, false) {
					idle = append(idle, inst)
					n.leaving[inst.id] = make(chan struct{})
				}
			}
			n.mu.Unlock()
			for _, inst := range idle {
				n.letGo(inst, reasonIdle)
			}
		}
	}
}

// saveAll saves every instance when the node stops, then closes the store.
func (n *Node) saveAll(ctx context.Context) {
	n.mu.Lock()
	var all []*instance
	for e := n.lru.Front(); e != nil; e = e.Next() {
		all = append(all, e.Value.(*instance))
	}
	for _, inst := range all {
		n.dropLocked(inst)
		n.leaving[inst.id] = make(chan struct{})
	}
	n.mu.Unlock()
	for _, inst := range all {
		n.letGo(inst, reasonStop)
	}
	if err := n.opts.StateStore.Close(ctx); err != nil {
		n.log.Warn("closing the state store failed", "err", err)
	}
}

// ActiveAgents returns the active (not passivated) instances per hosted
// agent type.
func (n *Node) ActiveAgents() map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]int, len(n.typeOrder))
	for _, name := range n.typeOrder {
		out[name] = n.active[name]
	}
	return out
}
