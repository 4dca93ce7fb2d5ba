package ravi_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/ravi-mesh/ravi/interop/go/agents"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const testTimeout = 15 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func quietLogger() *slog.Logger {
	if os.Getenv("RAVI_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startNode starts a node with opts and the given agent types, stopped at the
// end of the test.
func startNode(t *testing.T, opts ravi.Options, types ...ravi.AgentType) *ravi.Node {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	if opts.GracePeriod == 0 {
		opts.GracePeriod = 2 * time.Second
	}
	n, err := ravi.NewNode(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range types {
		if err := n.Register(at); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop() })
	return n
}

func conformanceNode(t *testing.T, id string, opts ravi.Options, extra ...ravi.AgentType) *ravi.Node {
	t.Helper()
	opts.NodeID = id
	return startNode(t, opts, append([]ravi.AgentType{agents.ConformanceAgentType("")}, extra...)...)
}

func dial(t *testing.T, addr string, opts ...ravi.ClientOption) *ravi.Client {
	t.Helper()
	c, err := ravi.Dial(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// wantError checks err's code and reason, and returns it as a *ravi.Error.
func wantError(t *testing.T, err error, code codes.Code, reason string) *ravi.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s %s", ravi.CodeName(code), reason)
	}
	e := ravi.FromError(err)
	if ravi.CodeOf(e) != code || e.Reason != reason {
		t.Fatalf("got %v, want %s %s", err, ravi.CodeName(code), reason)
	}
	return e
}

// wantStatus checks a raw gRPC error: code, and an ErrorInfo with the ravi
// domain and reason (none when reason is "").
func wantStatus(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("not a status: %v", err)
	}
	if st.Code() != code {
		t.Fatalf("code %s, want %s (%v)", st.Code(), code, err)
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	switch {
	case reason == "" && info != nil:
		t.Fatalf("unexpected ErrorInfo %v", info)
	case reason != "" && info == nil:
		t.Fatalf("no ErrorInfo in %v", err)
	case reason != "" && (info.GetDomain() != ravi.ErrorDomain || info.GetReason() != reason):
		t.Fatalf("ErrorInfo %v, want domain %s reason %s", info, ravi.ErrorDomain, reason)
	}
}

// waitFor waits until cond holds, re-checking whenever n's routing table
// changes.
func waitFor(t *testing.T, ctx context.Context, n *ravi.Node, what string, cond func() bool) {
	t.Helper()
	for {
		ch := n.RoutesChanged()
		if cond() {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s; peers %+v", what, n.Peers())
		case <-ch:
		}
	}
}

func streamingTo(n *ravi.Node, nodeID string) func() bool {
	return func() bool {
		for _, p := range n.Peers() {
			if p.NodeID == nodeID && p.Streaming {
				return true
			}
		}
		return false
	}
}

// eventually polls cond (for state a test cannot be told about, such as an
// event delivered over a peer's stream).
func eventually(t *testing.T, ctx context.Context, what string, cond func() (bool, error)) {
	t.Helper()
	delay := 5 * time.Millisecond
	for {
		ok, err := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s (last error: %v)", what, err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}

func isCode(err error, code codes.Code) bool {
	var e *ravi.Error
	return errors.As(err, &e) && ravi.CodeOf(e) == code
}

func referenceScore(nodeID, agentType, key string) uint64 {
	sum := sha256.Sum256([]byte(nodeID + "\x00" + agentType + "\x00" + key))
	return binary.BigEndian.Uint64(sum[:8])
}
