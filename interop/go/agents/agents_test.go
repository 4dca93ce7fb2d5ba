package agents_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	conformancev1 "github.com/ravi-mesh/ravi/gen/go/ravi/conformance/v1"
	examplesv1 "github.com/ravi-mesh/ravi/gen/go/ravi/examples/v1"
	"github.com/ravi-mesh/ravi/interop/go/agents"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
	"google.golang.org/grpc/codes"
)

func start(t *testing.T, opts ravi.Options, types ...ravi.AgentType) *ravi.Node {
	t.Helper()
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
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

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestReviewerRules(t *testing.T) {
	ctx := ctxFor(t)
	n := start(t, ravi.Options{NodeID: "rev"}, (&agents.ReviewAgent{}).AgentType())
	long := strings.Repeat("word ", 170) + "Sources: a"
	cases := []struct {
		text     string
		approved bool
		comments []string
	}{
		{"short. Sources: docs.md:1", true, []string{"clear, sourced and short: approved"}},
		{"short, no sources", false, []string{"cite the sources you used"}},
		{long, false, []string{"shorten it: 172 words, at most 160"}},
		{strings.Repeat("w ", 161), false, []string{"cite the sources you used", "shorten it: 161 words, at most 160"}},
		{strings.Repeat("w ", 158) + "Sources: x", true, []string{"clear, sourced and short: approved"}},
	}
	for _, tc := range cases {
		v, err := ravi.Ask[*examplesv1.ReviewVerdict](ctx, n, ravi.AgentID{Type: "reviewer", Key: "default"},
			&examplesv1.ReviewRequest{Draft: &examplesv1.Draft{Text: tc.text, Revision: 1}})
		if err != nil {
			t.Fatal(err)
		}
		if v.GetApproved() != tc.approved || !slices.Equal(v.GetComments(), tc.comments) || v.GetReviewer() != "reviewer/default (go)" {
			t.Fatalf("%.30q: %v", tc.text, v)
		}
	}
}

func TestReviewerFormatsApprovedDraftsOnAnotherNode(t *testing.T) {
	ctx := ctxFor(t)
	formatter := ravi.AgentType{Name: "formatter", Handlers: []ravi.Handler{
		ravi.Handle(func(_ context.Context, call *ravi.Call, req *examplesv1.FormatRequest) (*examplesv1.FormattedText, error) {
			if req.GetStyle() != "markdown" {
				return nil, &ravi.Error{Code: codes.InvalidArgument, Message: "style " + req.GetStyle()}
			}
			sender, _ := call.Sender()
			return &examplesv1.FormattedText{Text: "> " + req.GetText(), Formatter: call.Agent().String() + " for " + sender.String()}, nil
		}),
	}}
	f := start(t, ravi.Options{NodeID: "fmt"}, formatter)
	r := start(t, ravi.Options{NodeID: "rev", Peers: map[string]string{"fmt": f.Addr()}}, (&agents.ReviewAgent{FormatWith: "formatter"}).AgentType())
	if err := r.WaitForAgentType(ctx, "formatter"); err != nil {
		t.Fatal(err)
	}
	c, err := ravi.Dial(r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v, err := ravi.Ask[*examplesv1.ReviewVerdict](ctx, c, ravi.AgentID{Type: "reviewer", Key: "conv-1"},
		&examplesv1.ReviewRequest{Draft: &examplesv1.Draft{Text: "ok. Sources: x"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"clear, sourced and short: approved", "formatted by formatter/conv-1 for reviewer/conv-1"}
	if !v.GetApproved() || !slices.Equal(v.GetComments(), want) {
		t.Fatalf("verdict %v", v)
	}
	// A rejected draft is not formatted.
	v, err = ravi.Ask[*examplesv1.ReviewVerdict](ctx, c, ravi.AgentID{Type: "reviewer", Key: "conv-1"},
		&examplesv1.ReviewRequest{Draft: &examplesv1.Draft{Text: "no sources"}})
	if err != nil || len(v.GetComments()) != 1 {
		t.Fatalf("verdict %v %v", v, err)
	}
}

func TestConformanceAgent(t *testing.T) {
	ctx := ctxFor(t)
	n := start(t, ravi.Options{NodeID: "conf"}, agents.ConformanceAgentType("conformance-go"))
	info := n.Info()
	if len(info.GetAgentTypes()) != 1 || info.GetAgentTypes()[0].GetAgentType() != "conformance-go" ||
		info.GetSubscriptions()[0].GetFilter().GetTopicType() != agents.ConformanceTopic {
		t.Fatalf("info %v", info)
	}
	to := ravi.AgentID{Type: "conformance-go", Key: "a"}
	echoed, err := ravi.Ask[*conformancev1.Echoed](ctx, n, to, &conformancev1.Echo{Text: "hi"}, ravi.WithMetadata(map[string]string{"k": "v"}))
	if err != nil || echoed.GetText() != "hi" || echoed.GetNodeId() != "conf" || echoed.GetLanguage() != "go" ||
		ravi.AgentIDOf(echoed.GetAgent()) != to || echoed.GetSender() != nil || echoed.GetMetadata()["k"] != "v" {
		t.Fatalf("echo %v %v", echoed, err)
	}
	for code := range 17 {
		_, err := n.Send(ctx, to, &conformancev1.Fail{Code: int32(code), Message: "m"})
		// A ravi error keeps its code, an ordinary error is UNKNOWN; both
		// carry HANDLER_FAILED.
		want, reason := codes.Code(code), ravi.ReasonHandlerFailed
		if code == 0 {
			want = codes.Unknown
		}
		if ravi.CodeOf(err) != want || ravi.ReasonOf(err) != reason {
			t.Fatalf("fail %d: %v", code, err)
		}
	}
	_, err = n.Send(ctx, to, &conformancev1.Unhandled{})
	if ravi.CodeOf(err) != codes.Unimplemented || ravi.ReasonOf(err) != ravi.ReasonNoHandler {
		t.Fatalf("unhandled: %v", err)
	}
	// Events are remembered per key; a direct Echo is not an event.
	for _, text := range []string{"e1", "e2"} {
		if _, err := n.Publish(ctx, ravi.TopicID{Type: agents.ConformanceTopic, Source: "a"}, &conformancev1.Echo{Text: text}); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = n.Publish(ctx, ravi.TopicID{Type: "conformance.other", Source: "a"}, &conformancev1.Echo{Text: "ignored"})
	obs, err := ravi.Ask[*conformancev1.Observed](ctx, n, to, &conformancev1.Report{})
	if err != nil || !slices.Equal(obs.GetEvents(), []string{"e1", "e2"}) || len(obs.GetCancelled()) != 0 {
		t.Fatalf("report %v %v", obs, err)
	}
	obs, err = ravi.Ask[*conformancev1.Observed](ctx, n, ravi.AgentID{Type: "conformance-go", Key: "b"}, &conformancev1.Report{})
	if err != nil || len(obs.GetEvents()) != 0 {
		t.Fatalf("report b %v %v", obs, err)
	}
	// Forward to a target that does not exist fails with the target's error.
	_, err = n.Send(ctx, to, &conformancev1.Forward{Target: ravi.AgentID{Type: "missing", Key: "k"}.Proto(), Text: "x"})
	if ravi.ReasonOf(err) != ravi.ReasonAgentTypeNotFound {
		t.Fatalf("forward: %v", err)
	}
}
