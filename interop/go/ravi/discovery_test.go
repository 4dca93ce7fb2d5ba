package ravi_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ravi-mesh/ravi/interop/go/agents"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
)

// A pool of writer nodes behind one DNS name, as the pods of a Kubernetes
// headless Service are (tests/integration/test_discovery.py does the same with
// Python nodes): four nodes on 127.0.0.2 to 127.0.0.5, all on one port, and a
// front node that peers with dns:writers.test:PORT through a resolver the test
// controls. The test "scales the Deployment" by changing what the name
// resolves to.

const poolName = "writers.test"

var poolHosts = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}

// freePortOnAll is a port free on every one of hosts.
func freePortOnAll(t *testing.T, hosts []string) int {
	t.Helper()
	for range 50 {
		first, err := net.Listen("tcp", hosts[0]+":0")
		if err != nil {
			t.Skipf("cannot listen on %s: %v", hosts[0], err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		held := []net.Listener{first}
		ok := true
		for _, h := range hosts[1:] {
			l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", h, port))
			if err != nil {
				ok = false
				break
			}
			held = append(held, l)
		}
		for _, l := range held {
			_ = l.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no port is free on every pool host")
	return 0
}

// pool is what the name resolves to now; the test changes it.
type pool struct {
	t         *testing.T
	port      int
	mu        sync.Mutex
	answer    []string
	err       error
	questions atomic.Int32
}

func (p *pool) scale(replicas int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.answer = nil
	for _, h := range poolHosts[:replicas] {
		p.answer = append(p.answer, fmt.Sprintf("%s:%d", h, p.port))
	}
}

func (p *pool) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = err
}

func (p *pool) resolve(_ context.Context, host string, port int) ([]string, error) {
	if host != poolName || port != p.port {
		p.t.Errorf("resolved %s:%d", host, port)
	}
	p.questions.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.answer), p.err
}

func writerID(host string) string { return "writer@" + host }

// hostingWriter waits until front routes "writer" to exactly the nodes of want.
func hostingWriter(t *testing.T, ctx context.Context, front *ravi.Node, want []string) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	waitFor(t, ctx, front, fmt.Sprintf("writer hosted by %v", want), func() bool {
		var got []string
		for _, p := range front.Peers() {
			if slices.Contains(p.AgentTypes, "writer") {
				got = append(got, p.NodeID)
			}
		}
		slices.Sort(got)
		return slices.Equal(got, want) && len(front.Peers()) == len(want)
	})
}

// winners is where rendezvous hashing puts each key among nodes.
func winners(nodes []string, keys []string) map[string]string {
	out := map[string]string{}
	for _, k := range keys {
		best := nodes[0]
		for _, n := range nodes[1:] {
			if ravi.RendezvousScore(n, "writer", k) > ravi.RendezvousScore(best, "writer", k) {
				best = n
			}
		}
		out[k] = best
	}
	return out
}

func placement(t *testing.T, ctx context.Context, front *ravi.Node, keys []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range keys {
		echoed, err := echoVia(ctx, front, ravi.AgentID{Type: "writer", Key: k}, k)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		out[k] = echoed.GetNodeId()
	}
	return out
}

// steadyLoad calls every key, round and round, until stop is called; stop
// returns the failures.
func steadyLoad(ctx context.Context, front *ravi.Node, keys []string) (stop func() []string) {
	var (
		mu       sync.Mutex
		failures []string
		wg       sync.WaitGroup
		calls    atomic.Int32
	)
	done := make(chan struct{})
	for w := range 8 {
		wg.Go(func() {
			for i := w; ; i += 8 {
				select {
				case <-done:
					return
				default:
				}
				k := keys[i%len(keys)]
				if _, err := echoVia(ctx, front, ravi.AgentID{Type: "writer", Key: k}, k); err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s: %v", k, err))
					mu.Unlock()
				}
				calls.Add(1)
			}
		})
	}
	return func() []string {
		close(done)
		wg.Wait()
		if calls.Load() == 0 {
			return []string{"no call was made"}
		}
		return failures
	}
}

func TestDNSPeersArePoolsScaledOutAndIn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	port := freePortOnAll(t, append([]string{"127.0.0.1"}, poolHosts...))
	for _, h := range poolHosts {
		startNode(t, ravi.Options{NodeID: writerID(h), ListenAddr: fmt.Sprintf("%s:%d", h, port)}, agents.ConformanceAgentType("writer"))
	}
	p := &pool{t: t, port: port}
	p.scale(2)
	front := startNode(t, ravi.Options{
		NodeID:          "front",
		Peers:           map[string]string{"writers": fmt.Sprintf("dns:%s:%d", poolName, port)},
		PeerDNSInterval: 50 * time.Millisecond,
		Resolver:        p.resolve,
	})
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprintf("doc-%d", i)
	}
	two := []string{writerID(poolHosts[0]), writerID(poolHosts[1])}
	four := []string{writerID(poolHosts[0]), writerID(poolHosts[1]), writerID(poolHosts[2]), writerID(poolHosts[3])}
	hostingWriter(t, ctx, front, two)
	for _, peer := range front.Peers() {
		if peer.Group != "writers" || !strings.HasPrefix(peer.Name, "writers/127.0.0.") {
			t.Fatalf("a pool member: %+v", peer)
		}
	}
	before := placement(t, ctx, front, keys)
	if want := winners(two, keys); !maps.Equal(before, want) {
		t.Fatalf("placement among two differs from rendezvous")
	}

	stop := steadyLoad(ctx, front, keys)
	p.scale(4)
	hostingWriter(t, ctx, front, four)
	if failures := stop(); len(failures) > 0 {
		t.Fatalf("scaling out failed calls: %v", failures[:min(5, len(failures))])
	}
	after := placement(t, ctx, front, keys)
	if !maps.Equal(after, winners(four, keys)) {
		t.Fatal("placement among four differs from rendezvous")
	}
	moved := 0
	for _, k := range keys {
		if after[k] != before[k] {
			moved++
			if slices.Contains(two, after[k]) {
				t.Fatalf("%s moved between old nodes", k)
			}
		}
	}
	if moved < len(keys)*35/100 || moved > len(keys)*65/100 {
		t.Fatalf("%d of %d keys moved scaling 2 -> 4", moved, len(keys))
	}

	stop = steadyLoad(ctx, front, keys)
	p.scale(2)
	hostingWriter(t, ctx, front, two)
	if failures := stop(); len(failures) > 0 {
		t.Fatalf("scaling in failed calls: %v", failures[:min(5, len(failures))])
	}
	if !maps.Equal(placement(t, ctx, front, keys), before) {
		t.Fatal("keys did not return to their first nodes")
	}

	// A failing lookup keeps the pool; a name that does not exist empties it.
	p.fail(errors.New("the DNS server did not answer"))
	asked := p.questions.Load()
	eventually(t, ctx, "two more lookups", func() (bool, error) { return p.questions.Load() >= asked+2, nil })
	hostingWriter(t, ctx, front, two)
	p.fail(nil)
	p.scale(0)
	hostingWriter(t, ctx, front, nil)
}

func TestDNSPeerSyntax(t *testing.T) {
	for address, want := range map[string]string{
		"dns:writers:50051":       "writers 50051",
		"dns:///writers:50051":    "writers 50051",
		"dns:[::1]:7":             "::1 7",
		"dns:localhost:0":         "localhost 0",
		"writers:50051":           "plain",
		"dns://8.8.8.8/writers:1": "error",
		"dns:writers":             "error",
		"dns::1":                  "error",
		"dns:writers:http":        "error",
	} {
		host, port, ok, err := ravi.DNSTarget(address)
		got := fmt.Sprintf("%s %d", host, port)
		switch {
		case err != nil:
			got = "error"
		case !ok:
			got = "plain"
		}
		if got != want {
			t.Errorf("%s: %s, want %s", address, got, want)
		}
	}
	if _, err := ravi.NewNode(ravi.Options{Peers: map[string]string{"w": "dns://8.8.8.8/w:1"}}); err == nil {
		t.Fatal("a DNS server in a peer address was accepted")
	}
}

func TestResolveDNSUsesTheSystemResolver(t *testing.T) {
	ctx := testContext(t)
	got, err := ravi.ResolveDNS(ctx, "localhost", 4)
	if err != nil || !slices.Contains(got, "127.0.0.1:4") {
		t.Fatalf("localhost: %v %v", got, err)
	}
}
