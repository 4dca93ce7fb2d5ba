package ravi

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc/codes"
)

var typePattern = regexp.MustCompile(`^[A-Za-z0-9_.:\-]+$`)

// AgentID addresses one agent instance: Type selects the code (and the node
// hosting it), Key the instance, with its own mailbox and state.
type AgentID struct {
	Type string
	Key  string
}

// String returns "type/key".
func (id AgentID) String() string { return id.Type + "/" + id.Key }

// Proto returns the ravi.mesh.v1.AgentId form of id.
func (id AgentID) Proto() *meshv1.AgentId { return &meshv1.AgentId{Type: id.Type, Key: id.Key} }

// Validate reports a *Error with reason BAD_ID when id is empty or malformed.
func (id AgentID) Validate() error {
	if err := checkType("agent type", id.Type); err != nil {
		return err
	}
	return checkName("agent key", id.Key)
}

// AgentIDOf converts a ravi.mesh.v1.AgentId (nil gives the zero AgentID).
func AgentIDOf(p *meshv1.AgentId) AgentID {
	return AgentID{Type: p.GetType(), Key: p.GetKey()}
}

// ParseAgentID parses the "type/key" form printed by AgentID.String.
func ParseAgentID(s string) (AgentID, error) {
	t, k, ok := strings.Cut(s, "/")
	if !ok {
		return AgentID{}, badID(fmt.Sprintf("expected type/key, got %q", s))
	}
	id := AgentID{Type: t, Key: k}
	return id, id.Validate()
}

// TopicID names a stream of published events: subscriptions match on Type,
// and Source becomes the key of the agents that receive the events.
type TopicID struct {
	Type   string
	Source string
}

// String returns "type/source".
func (t TopicID) String() string { return t.Type + "/" + t.Source }

// Proto returns the ravi.mesh.v1.TopicId form of t.
func (t TopicID) Proto() *meshv1.TopicId { return &meshv1.TopicId{Type: t.Type, Source: t.Source} }

// Validate reports a *Error with reason BAD_ID when t is empty or malformed.
func (t TopicID) Validate() error {
	if err := checkType("topic type", t.Type); err != nil {
		return err
	}
	return checkName("topic source", t.Source)
}

// TopicIDOf converts a ravi.mesh.v1.TopicId (nil gives the zero TopicID).
func TopicIDOf(p *meshv1.TopicId) TopicID {
	return TopicID{Type: p.GetType(), Source: p.GetSource()}
}

// ParseTopicID parses the "type/source" form printed by TopicID.String.
func ParseTopicID(s string) (TopicID, error) {
	t, src, ok := strings.Cut(s, "/")
	if !ok {
		return TopicID{}, badID(fmt.Sprintf("expected type/source, got %q", s))
	}
	id := TopicID{Type: t, Source: src}
	return id, id.Validate()
}

func checkType(kind, v string) error {
	if !typePattern.MatchString(v) {
		return badID(fmt.Sprintf("%s must be a non-empty string of letters, digits, '_', '-', '.' or ':'; got %q", kind, truncate(v, 64)))
	}
	if len(v) > meshv1.MaxTypeBytes {
		return badID(fmt.Sprintf("%s is longer than %d characters", kind, meshv1.MaxTypeBytes))
	}
	return nil
}

// checkName accepts a printable key (types.proto): 1 to MaxKeyBytes bytes of
// UTF-8 without control characters (Unicode category Cc).
func checkName(kind, v string) error {
	ok := v != "" && utf8.ValidString(v)
	for _, r := range v {
		if unicode.IsControl(r) {
			ok = false
			break
		}
	}
	if !ok {
		return badID(fmt.Sprintf("%s must be a non-empty string without control characters; got %q", kind, truncate(v, 64)))
	}
	if len(v) > meshv1.MaxKeyBytes {
		return badID(fmt.Sprintf("%s is longer than %d bytes of UTF-8", kind, meshv1.MaxKeyBytes))
	}
	return nil
}

func badID(msg string) *Error {
	return &Error{Code: codes.InvalidArgument, Reason: ReasonBadID, Message: msg}
}
