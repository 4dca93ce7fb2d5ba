package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ravi-mesh/ravi/interop/go/ravi"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ravi-go-cli")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "ravi-go")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building ravi-go:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// nodeProcess is a running "ravi-go node".
type nodeProcess struct {
	cmd    *exec.Cmd
	addr   string
	stderr *bytes.Buffer
	stdout *bytes.Buffer // the lines after the first, complete once copied is closed
	copied chan struct{}
	done   chan error
}

var serving = regexp.MustCompile(`^ravi-go node (\S+) serving on (127\.0\.0\.1:\d+)$`)

func startNodeProcess(t *testing.T, nodeID string, args ...string) *nodeProcess {
	t.Helper()
	return startNodeProcessEnv(t, nil, nodeID, args...)
}

// startNodeProcessEnv starts a node with env as its environment (nil: this
// process's).
func startNodeProcessEnv(t *testing.T, env []string, nodeID string, args ...string) *nodeProcess {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"node", "--listen", "127.0.0.1:0", "--node-id", nodeID}, args...)...)
	cmd.Env = env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &nodeProcess{cmd: cmd, stderr: &bytes.Buffer{}, stdout: &bytes.Buffer{}, copied: make(chan struct{}), done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		defer close(p.copied)
		r := bufio.NewReader(stdout)
		if line, err := r.ReadString('\n'); err == nil {
			lines <- strings.TrimSuffix(line, "\n")
		}
		close(lines)
		_, _ = io.Copy(p.stdout, r)
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	go func() { p.done <- cmd.Wait() }()
	select {
	case line := <-lines:
		m := serving.FindStringSubmatch(line)
		if m == nil || m[1] != nodeID {
			t.Fatalf("first line %q; stderr:\n%s", line, p.stderr)
		}
		p.addr = m[2]
	case <-time.After(10 * time.Second):
		t.Fatalf("the node did not print its address; stderr:\n%s", p.stderr)
	}
	return p
}

// stop sends SIGTERM and checks the node exits 0.
func (p *nodeProcess) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("node exit: %v; stderr:\n%s", err, p.stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the node did not stop on SIGTERM")
	}
	<-p.copied
}

type result struct {
	stdout, stderr string
	code           int
}

func cli(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("ravi-go %v: %v", args, err)
	}
	return r
}

func decode(t *testing.T, s string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %q: %v", s, err)
	}
	return v
}

func TestNodeAndClientCommands(t *testing.T) {
	n := startNodeProcess(t, "cli-a", "--token", "tok", "--health-without-auth", "--conformance-type", "conformance-go")
	auth := []string{"--addr", n.addr, "--token", "tok"}

	r := cli(t, append([]string{"describe"}, auth...)...)
	info := decode(t, r.stdout)
	if r.code != 0 || info["nodeId"] != "cli-a" || info["language"] != "go" || info["contractVersion"] != ravi.ContractVersion || info["address"] != n.addr {
		t.Fatalf("describe: %+v %s", r, r.stdout)
	}

	r = cli(t, append([]string{"send", "--to", "reviewer/default", "--type", "ravi.examples.v1.ReviewRequest",
		"--json", `{"draft": {"text": "Deadlines propagate. Sources: protocol.md:1"}}`}, auth...)...)
	out := decode(t, r.stdout)
	reply, _ := out["result"].(map[string]any)
	verdict, _ := reply["value"].(map[string]any)
	if r.code != 0 || out["nodeId"] != "cli-a" || reply["type"] != "ravi.examples.v1.ReviewVerdict" || verdict["approved"] != true || verdict["reviewer"] != "reviewer/default (go)" {
		t.Fatalf("send: %+v", r)
	}

	r = cli(t, append([]string{"send", "--to", "conformance-go/k", "--type", "ravi.conformance.v1.Echo", "--send-json", "--json", `{"text": "hi"}`, "--metadata", "a=1"}, auth...)...)
	echoed := resultValue(t, r.stdout)
	if r.code != 0 || echoed["text"] != "hi" || echoed["language"] != "go" {
		t.Fatalf("echo: %+v", r)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"send", "--to", "conformance-go/k", "--type", "ravi.conformance.v1.Unhandled"}, "UNIMPLEMENTED (NO_HANDLER)"},
		{[]string{"send", "--to", "nowhere/k", "--type", "ravi.conformance.v1.Echo"}, "NOT_FOUND (AGENT_TYPE_NOT_FOUND): no node hosts agent type \"nowhere\"; known types: conformance-go, counter, reviewer"},
		{[]string{"send", "--to", "conformance-go/k", "--type", "demo.Ping", "--json", `{"n": 1}`}, "INVALID_ARGUMENT (BAD_PAYLOAD)"},
		{[]string{"send", "--to", "conformance-go/k", "--type", "ravi.conformance.v1.Fail", "--json", `{"message": "boom"}`}, "UNKNOWN (HANDLER_FAILED)"},
		{[]string{"send", "--to", "conformance-go/k", "--type", "ravi.conformance.v1.Sleep", "--json", `{"millis": 5000}`, "--timeout", "100ms"}, "DEADLINE_EXCEEDED"},
	} {
		r = cli(t, append(tc.args, auth...)...)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Fatalf("%v: %+v, want %q", tc.args, r, tc.want)
		}
	}
	if r = cli(t, "send", "--addr", n.addr, "--to", "conformance-go/k", "--type", "ravi.conformance.v1.Echo"); r.code != 1 || !strings.Contains(r.stderr, "UNAUTHENTICATED") {
		t.Fatalf("no token: %+v", r)
	}
	if r = cli(t, "send", "--addr", n.addr, "--to", "bad id", "--type", "x"); r.code != 1 || !strings.Contains(r.stderr, "BAD_ID") {
		t.Fatalf("bad id: %+v", r)
	}
	if r = cli(t, "frobnicate"); r.code != 2 {
		t.Fatalf("unknown command: %+v", r)
	}

	// subscribe prints the events as JSON lines; it is active once it says so.
	sub := exec.Command(binary, append([]string{"subscribe", "--topic-type", "conformance.events", "--count", "1", "--timeout", "10s"}, auth...)...)
	var subOut bytes.Buffer
	sub.Stdout = &subOut
	subErr, err := sub.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(subErr).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "subscribed to") {
		t.Fatalf("subscribe: %q %v", line, err)
	}
	r = cli(t, append([]string{"publish", "--topic", "conformance.events/k", "--type", "ravi.conformance.v1.Echo", "--json", `{"text": "published"}`}, auth...)...)
	pub := decode(t, r.stdout)
	if r.code != 0 || pub["localDeliveries"] != float64(1) || pub["streamDeliveries"] != float64(1) {
		t.Fatalf("publish: %+v", r)
	}
	if err := sub.Wait(); err != nil {
		t.Fatalf("subscribe exit: %v", err)
	}
	// One JSON shape in the three command lines: {"node": NodeInfo}, then {"event": Event}.
	lines := strings.Split(strings.TrimSpace(subOut.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("subscribe printed %q", subOut.String())
	}
	if node, _ := decode(t, lines[0])["node"].(map[string]any); node["nodeId"] != "cli-a" {
		t.Fatalf("node line %q", lines[0])
	}
	ev, _ := decode(t, lines[1])["event"].(map[string]any)
	env, _ := ev["envelope"].(map[string]any)
	payload, _ := env["payload"].(map[string]any)
	msg, _ := payload["value"].(map[string]any)
	if ev["originNodeId"] != "cli-a" || payload["type"] != "ravi.conformance.v1.Echo" || msg["text"] != "published" {
		t.Fatalf("event %q", lines[1])
	}
	r = cli(t, append([]string{"send", "--to", "conformance-go/k", "--type", "ravi.conformance.v1.Report"}, auth...)...)
	if obs := resultValue(t, r.stdout); r.code != 0 || fmt.Sprint(obs["events"]) != "[published]" {
		t.Fatalf("report: %+v", r)
	}

	n.stop(t)
	if !strings.Contains(n.stdout.String(), "ravi-go node cli-a stopped") {
		t.Fatalf("stdout:\n%s", n.stdout)
	}
}

// resultValue is the decoded reply of a send: {"result": {"type", "value"}}.
func resultValue(t *testing.T, stdout string) map[string]any {
	t.Helper()
	result, _ := decode(t, stdout)["result"].(map[string]any)
	value, _ := result["value"].(map[string]any)
	return value
}

func TestTwoNodeProcessesPeer(t *testing.T) {
	a := startNodeProcess(t, "cli-a", "--conformance-type", "conformance-a")
	b := startNodeProcess(t, "cli-b", "--conformance-type", "conformance-b", "--peer", "a="+a.addr, "--format-with", "formatter")
	// b lists a; a learns b from b's Describe. Wait until a routes to b.
	deadline := time.Now().Add(10 * time.Second)
	var r result
	for {
		r = cli(t, "send", "--addr", a.addr, "--to", "conformance-b/k", "--type", "ravi.conformance.v1.Echo", "--json", `{"text": "x"}`)
		if r.code == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out := decode(t, r.stdout); r.code != 0 || out["nodeId"] != "cli-b" {
		t.Fatalf("a -> b: %+v", r)
	}
	// b's reviewer asks a formatter nobody hosts: the error comes back.
	r = cli(t, "send", "--addr", a.addr, "--to", "reviewer/k", "--type", "ravi.examples.v1.ReviewRequest", "--json", `{"draft": {"text": "Sources: x"}}`)
	if r.code != 0 {
		// Both nodes host the reviewer: a answers (no formatter configured).
		t.Fatalf("review on a: %+v", r)
	}
	r = cli(t, "send", "--addr", b.addr, "--to", "reviewer/k", "--type", "ravi.examples.v1.ReviewRequest", "--json", `{"draft": {"text": "Sources: x"}}`)
	if r.code != 1 || !strings.Contains(r.stderr, "NOT_FOUND (AGENT_TYPE_NOT_FOUND)") {
		t.Fatalf("review on b: %+v", r)
	}
	b.stop(t)
	a.stop(t)
}
