package ravi

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
)

// StoredState is what a StateStore answers for one agent on activation.
type StoredState struct {
	// State is the JSON object last saved; nil when nothing was saved yet.
	State []byte
	// Version is the version of State, 0 when nothing was saved; the next
	// save names it, so a write over a newer one is refused.
	Version int64
	// HeldBy is set by a shared store, instead of the fields above, when
	// another live node holds the agent: that node must let it go first.
	HeldBy string
}

// StateStore keeps the state of passivated agents, one versioned record per
// AgentID: the same interface, tables and JSON as the Python and Node
// members' stores (docs/state.md), so nodes of every language can share one
// PostgreSQL database. A save names the version it read or last wrote; a
// store refuses any other version, or, when shared, a node that no longer
// holds the agent, with STALE_STATE (ABORTED). Implementations are safe for
// concurrent use.
type StateStore interface {
	// Open prepares the store (connects, creates tables) for the node holder.
	Open(ctx context.Context, holder string) error
	// Load returns the stored state of id; a shared store also claims it for
	// this node.
	Load(ctx context.Context, id AgentID) (StoredState, error)
	// Save writes state over version and returns the new version; release
	// lets the agent go (passivation, stop).
	Save(ctx context.Context, id AgentID, state []byte, version int64, release bool) (int64, error)
	// Close releases connections and, in a shared store, the node's lease.
	Close(ctx context.Context) error
}

// OpenStore returns the store a URL names: "memory", "sqlite:PATH" or
// "postgresql://..." (the same URLs as ravi node's --state-store).
func OpenStore(url string) (StateStore, error) {
	switch {
	case url == "memory" || url == "memory:":
		return NewMemoryStore(), nil
	case strings.HasPrefix(url, "sqlite:"):
		path := strings.TrimPrefix(url, "sqlite:")
		path = strings.TrimPrefix(path, "//")
		if path == "" {
			return nil, fmt.Errorf("ravi: %q names no file: write sqlite:PATH", url)
		}
		return NewSQLiteStore(path), nil
	case strings.HasPrefix(url, "postgresql://") || strings.HasPrefix(url, "postgres://"):
		return NewPostgresStore(url), nil
	}
	return nil, fmt.Errorf("ravi: unknown state store %q: use memory, sqlite:PATH or postgresql://USER@HOST/DB", url)
}

// MemoryStore keeps agent state in this process: the default. State
// survives passivation, not the process.
type MemoryStore struct {
	mu      sync.Mutex
	holder  string
	records map[AgentID]memoryRecord
}

type memoryRecord struct {
	version int64
	state   []byte
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{records: map[AgentID]memoryRecord{}}
}

// Open records the holder's name for error messages.
func (s *MemoryStore) Open(_ context.Context, holder string) error {
	s.mu.Lock()
	s.holder = holder
	s.mu.Unlock()
	return nil
}

// Load returns the record of id.
func (s *MemoryStore) Load(_ context.Context, id AgentID) (StoredState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.records[id]
	if !ok {
		return StoredState{}, nil
	}
	return StoredState{State: r.state, Version: r.version}, nil
}

// Save writes state over version.
func (s *MemoryStore) Save(_ context.Context, id AgentID, state []byte, version int64, _ bool) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	current := s.records[id].version
	if current != version {
		return 0, staleState(id, version, fmt.Sprintf("version %d", current), s.holder)
	}
	s.records[id] = memoryRecord{version: version + 1, state: append([]byte(nil), state...)}
	return version + 1, nil
}

// Close keeps the records for a node started again.
func (s *MemoryStore) Close(context.Context) error { return nil }

// Len is the number of agents with saved state.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

func staleState(id AgentID, version int64, found, holder string) *Error {
	return &Error{
		Code:   codes.Aborted,
		Reason: ReasonStaleState,
		Message: fmt.Sprintf("the state of %s was not saved: this node (%q) had version %d, the store has %s; "+
			"another node took the agent over, so this copy is discarded", id, holder, version, found),
		Metadata: map[string]string{"agent_type": id.Type, "node_id": holder},
	}
}
