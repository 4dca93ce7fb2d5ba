// Package agents holds the Go agents of the ravi demo and the conformance
// suite: the reviewer and the conformance agent.
package agents

import (
	"context"
	"fmt"
	"strings"

	examplesv1 "github.com/ravi-mesh/ravi/gen/go/ravi/examples/v1"
	"github.com/ravi-mesh/ravi/interop/go/ravi"
)

// ReviewerType is the agent type of the reviewer.
const ReviewerType = "reviewer"

// MaxReviewWords is the length above which the reviewer asks to shorten a
// draft.
const MaxReviewWords = 160

// ReviewAgent approves a draft that cites its sources ("Sources:") and has at
// most 160 words, with the rules of the Python reviewer of the demo.
type ReviewAgent struct {
	// FormatWith, when set, is the agent type of a formatter: an approved draft
	// is sent to AgentID{FormatWith, <the reviewer's key>} as a FormatRequest
	// (style "markdown"), and "formatted by <formatter>" is added to the
	// comments.
	FormatWith string
}

// AgentType returns the reviewer's agent type, named ReviewerType.
func (r *ReviewAgent) AgentType() ravi.AgentType {
	return ravi.AgentType{Name: ReviewerType, Handlers: []ravi.Handler{ravi.Handle(r.Review)}}
}

// Review judges a draft.
func (r *ReviewAgent) Review(ctx context.Context, call *ravi.Call, req *examplesv1.ReviewRequest) (*examplesv1.ReviewVerdict, error) {
	text := req.GetDraft().GetText()
	var comments []string
	if !strings.Contains(text, "Sources:") {
		comments = append(comments, "cite the sources you used")
	}
	if words := len(strings.Fields(text)); words > MaxReviewWords {
		comments = append(comments, fmt.Sprintf("shorten it: %d words, at most %d", words, MaxReviewWords))
	}
	verdict := &examplesv1.ReviewVerdict{
		Approved: len(comments) == 0,
		Comments: comments,
		Reviewer: fmt.Sprintf("%s (go)", call.Agent()),
	}
	if !verdict.Approved {
		return verdict, nil
	}
	verdict.Comments = []string{"clear, sourced and short: approved"}
	if r.FormatWith != "" {
		formatter := ravi.AgentID{Type: r.FormatWith, Key: call.Agent().Key}
		formatted, err := ravi.Ask[*examplesv1.FormattedText](ctx, call, formatter,
			&examplesv1.FormatRequest{Text: text, Style: "markdown"})
		if err != nil {
			return nil, err
		}
		verdict.Comments = append(verdict.Comments, "formatted by "+formatted.GetFormatter())
	}
	return verdict, nil
}
