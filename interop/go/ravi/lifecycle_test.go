package ravi_test

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	conformancev1 "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	"github.com/ravi-mesh/ravi/interop/go/agents"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	"google.golang.org/grpc/codes"
)

func count(t *testing.T, ctx context.Context, n *ravi.Node, key, id string) *conformancev1.Counted {
	t.Helper()
	counted, err := ravi.Ask[*conformancev1.Counted](ctx, n, ravi.AgentID{Type: agents.CounterType, Key: key}, &conformancev1.Count{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	return counted
}

func until(t *testing.T, ctx context.Context, what string, check func() bool) {
	t.Helper()
	eventually(t, ctx, what, func() (bool, error) { return check(), nil })
}

func TestAnIdleAgentIsPassivatedAndComesBackWithItsState(t *testing.T) {
	ctx := testContext(t)
	store := ravi.NewMemoryStore()
	n := startNode(t, ravi.Options{IdleTimeout: 50 * time.Millisecond, StateStore: store}, agents.CounterAgentType(""))
	count(t, ctx, n, "a", "one")
	if got := n.ActiveAgents()[agents.CounterType]; got != 1 {
		t.Fatalf("active %d, want 1", got)
	}
	until(t, ctx, "passivated", func() bool { return n.ActiveAgents()[agents.CounterType] == 0 && store.Len() == 1 })
	if got := count(t, ctx, n, "a", "two").GetTotal(); got != 2 {
		t.Fatalf("total %d after activation, want 2", got)
	}
	info := n.Info()
	if got := info.GetAgentTypes()[0].GetActiveInstances(); got != 1 {
		t.Fatalf("Describe says %d active, want 1", got)
	}
}

func TestBeyondMaxActiveAgentsTheLeastRecentlyUsedGoes(t *testing.T) {
	ctx := testContext(t)
	store := ravi.NewMemoryStore()
	n := startNode(t, ravi.Options{MaxActiveAgents: 3, StateStore: store}, agents.CounterAgentType(""))
	for _, key := range []string{"a", "b", "c", "a", "d"} {
		count(t, ctx, n, key, key)
	}
	until(t, ctx, "b saved", func() bool { return store.Len() == 1 })
	if got, _ := store.Load(ctx, ravi.AgentID{Type: agents.CounterType, Key: "b"}); got.Version != 1 {
		t.Fatalf("b (the least recently used) was not the one saved: %+v", got)
	}
	if got := n.ActiveAgents()[agents.CounterType]; got != 3 {
		t.Fatalf("active %d, want 3", got)
	}
	if got := count(t, ctx, n, "b", "b2").GetTotal(); got != 2 {
		t.Fatalf("b came back with total %d, want 2", got)
	}
}

func TestManyKeysStayBounded(t *testing.T) {
	ctx := testContext(t)
	n := startNode(t, ravi.Options{MaxActiveAgents: 100}, agents.ConformanceAgentType(""))
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 20000 {
		if _, err := n.Send(ctx, ravi.AgentID{Type: agents.ConformanceType, Key: fmt.Sprint("k", i)}, &conformancev1.Echo{Text: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := n.ActiveAgents()[agents.ConformanceType]; got > 100 {
		t.Fatalf("active %d, want at most 100", got)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 8<<20 {
		t.Fatalf("the heap grew %d bytes for 20,000 keys", grown)
	}
}

func TestEachMessageCheckpointsAndStaleCopiesAreRefused(t *testing.T) {
	ctx := testContext(t)
	path := filepath.Join(t.TempDir(), "state.sqlite3")
	opts := func(id string) ravi.Options {
		return ravi.Options{NodeID: id, Checkpoint: ravi.CheckpointEachMessage, StateStore: ravi.NewSQLiteStore(path)}
	}
	first := startNode(t, opts("first"), agents.CounterAgentType(""))
	second := startNode(t, opts("second"), agents.CounterAgentType(""))
	count(t, ctx, first, "k", "1")
	if got := count(t, ctx, second, "k", "2").GetTotal(); got != 2 {
		t.Fatalf("second loaded what first saved: total %d, want 2", got)
	}
	_, err := first.Send(ctx, ravi.AgentID{Type: agents.CounterType, Key: "k"}, &conformancev1.Count{Id: "stale"})
	wantError(t, err, codes.Aborted, ravi.ReasonStaleState)
	if got := count(t, ctx, first, "k", "3").GetTotal(); got != 3 {
		t.Fatalf("first reloaded after the refusal: total %d, want 3", got)
	}
}

func TestAStoppedNodeSavesAndANewOneLoads(t *testing.T) {
	ctx := testContext(t)
	dir := t.TempDir()
	n, err := ravi.NewNode(ravi.Options{DataDir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Register(agents.CounterAgentType("")); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	count(t, ctx, n, "k", "1")
	count(t, ctx, n, "k", "2")
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	again := startNode(t, ravi.Options{DataDir: dir}, agents.CounterAgentType(""))
	if got := count(t, ctx, again, "k", "3").GetTotal(); got != 3 {
		t.Fatalf("total %d after a restart, want 3", got)
	}
}

func TestResidentAgentsStay(t *testing.T) {
	ctx := testContext(t)
	resident := agents.CounterAgentType("pinned")
	resident.Resident = true
	n := startNode(t, ravi.Options{IdleTimeout: 20 * time.Millisecond}, resident, agents.CounterAgentType(""))
	if _, err := n.Send(ctx, ravi.AgentID{Type: "pinned", Key: "p"}, &conformancev1.Count{Id: "1"}); err != nil {
		t.Fatal(err)
	}
	count(t, ctx, n, "gone", "1")
	until(t, ctx, "the other passivated", func() bool { return n.ActiveAgents()[agents.CounterType] == 0 })
	if got := n.ActiveAgents()["pinned"]; got != 1 {
		t.Fatalf("resident agent passivated: active %d", got)
	}
}

func TestLifecycleOptionsAreChecked(t *testing.T) {
	if _, err := ravi.NewNode(ravi.Options{Checkpoint: "sometimes"}); err == nil {
		t.Fatal("a bad checkpoint was accepted")
	}
	for _, url := range []string{"mysql://x", "sqlite:"} {
		if _, err := ravi.OpenStore(url); err == nil {
			t.Fatalf("%s was accepted", url)
		}
	}
	n, err := ravi.NewNode(ravi.Options{StateStore: ravi.NewPostgresStore("postgresql://ravi@127.0.0.1:1/x"), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Start()
	wantError(t, err, codes.Unavailable, "")
}
