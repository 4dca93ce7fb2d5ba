package ravi

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every ravi failure.
const ErrorDomain = "ravi.mesh.v1"

// The reasons of ravi.mesh.v1.ErrorReason, without their ERROR_REASON_ prefix,
// as they travel in google.rpc.ErrorInfo.reason.
const (
	ReasonAgentTypeNotFound = "AGENT_TYPE_NOT_FOUND"
	ReasonNoHandler         = "NO_HANDLER"
	ReasonBadPayload        = "BAD_PAYLOAD"
	ReasonBadID             = "BAD_ID"
	ReasonHandlerFailed     = "HANDLER_FAILED"
	ReasonReentrantCall     = "REENTRANT_CALL"
	ReasonPeerUnavailable   = "PEER_UNAVAILABLE"
	ReasonHopLimitExceeded  = "HOP_LIMIT_EXCEEDED"
	ReasonForwardingLoop    = "FORWARDING_LOOP"
	ReasonMailboxFull       = "MAILBOX_FULL"
	ReasonStaleState        = "STALE_STATE"
)

// Error is a failure with a gRPC status code, an optional ravi reason and
// string metadata, as carried by google.rpc.ErrorInfo. Handlers return one to
// fail a call with a chosen code; errors received from other nodes arrive as
// one (FromError), with their code, reason and metadata kept.
type Error struct {
	// Code is the gRPC status code of the failure; OK is treated as UNKNOWN.
	Code codes.Code
	// Reason is an ErrorReason name without its prefix (for example
	// "NO_HANDLER"), or empty.
	Reason string
	// Message is the human-readable description.
	Message string
	// Metadata is the ErrorInfo metadata (exception_type, agent_type, ...).
	Metadata map[string]string
}

// Errorf returns a *Error with code and a formatted message and no reason.
func Errorf(code codes.Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Error implements error: "CODE REASON: message".
func (e *Error) Error() string {
	s := CodeName(e.code())
	if e.Reason != "" {
		s += " " + e.Reason
	}
	return s + ": " + e.Message
}

// code is the status the error travels with: a code gRPC cannot carry (OK,
// or anything beyond UNAUTHENTICATED, such as -1 as uint32) is UNKNOWN.
func (e *Error) code() codes.Code {
	if e.Code == codes.OK || e.Code > codes.Unauthenticated {
		return codes.Unknown
	}
	return e.Code
}

// Is reports whether target is a *Error with the same code and reason, so
// errors.Is(err, &ravi.Error{Code: codes.NotFound, Reason: ravi.ReasonAgentTypeNotFound})
// works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.code() == e.code() && t.Reason == e.Reason
}

// GRPCStatus returns the status the error travels as: its code and message,
// and, when it has a reason, a google.rpc.ErrorInfo with domain ravi.mesh.v1,
// the reason and the metadata.
func (e *Error) GRPCStatus() *status.Status {
	st := status.New(e.code(), e.Message)
	if e.Reason == "" {
		return st
	}
	info := &errdetails.ErrorInfo{Domain: ErrorDomain, Reason: e.Reason, Metadata: maps.Clone(e.Metadata)}
	if withInfo, err := st.WithDetails(info); err == nil {
		return withInfo
	}
	return st
}

// FromError converts any error to a *Error: a *Error is returned as it is, a
// gRPC status keeps its code, message and ravi ErrorInfo (reason, metadata),
// context errors become DEADLINE_EXCEEDED or CANCELLED, and anything else is
// UNKNOWN. A nil error gives nil.
func FromError(err error) *Error {
	if err == nil {
		return nil
	}
	var re *Error
	if errors.As(err, &re) {
		return re
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Code: codes.DeadlineExceeded, Message: err.Error()}
	}
	if errors.Is(err, context.Canceled) {
		return &Error{Code: codes.Canceled, Message: err.Error()}
	}
	st, ok := status.FromError(err)
	if !ok {
		return &Error{Code: codes.Unknown, Message: err.Error()}
	}
	out := &Error{Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			out.Reason = info.GetReason()
			out.Metadata = maps.Clone(info.GetMetadata())
			break
		}
	}
	return out
}

// CodeOf returns the gRPC status code of err (OK for nil).
func CodeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	return FromError(err).code()
}

// ReasonOf returns the ravi reason of err, or "".
func ReasonOf(err error) string {
	if err == nil {
		return ""
	}
	return FromError(err).Reason
}

// CodeName returns the canonical upper-case name of a code ("NOT_FOUND").
func CodeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("CODE(%d)", uint32(c))
}

var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

// toStatusError turns any error a node produced into the error a gRPC method
// returns.
func toStatusError(err error) error {
	if err == nil {
		return nil
	}
	return FromError(err).GRPCStatus().Err()
}

// handlerFailure converts what a handler returned (or panicked with) into the
// error of the call: a *Error anywhere in the chain is the failure as it is
// (its code, and its reason if any); anything else is UNKNOWN /
// HANDLER_FAILED with the Go type name and message.
func handlerFailure(agent AgentID, err error) *Error {
	var re *Error
	if errors.As(err, &re) {
		if re.Reason != "" {
			return re
		}
		// A handler's failure with a code of its own keeps the code and carries
		// HANDLER_FAILED like any other (errors.proto).
		md := maps.Clone(re.Metadata)
		if md == nil {
			md = map[string]string{}
		}
		md["exception_type"] = fmt.Sprintf("%T", re)
		md["exception_message"] = re.Message
		md["agent_type"] = agent.Type
		return &Error{Code: re.code(), Reason: ReasonHandlerFailed, Message: re.Message, Metadata: md}
	}
	typeName := fmt.Sprintf("%T", err)
	var pe panicError
	if errors.As(err, &pe) {
		typeName = "panic"
	}
	return &Error{
		Code:    codes.Unknown,
		Reason:  ReasonHandlerFailed,
		Message: fmt.Sprintf("handler of %s raised %s: %v", agent, typeName, err),
		Metadata: map[string]string{
			"exception_type":    typeName,
			"exception_message": err.Error(),
			"agent_type":        agent.Type,
		},
	}
}

// panicError is what a handler's panic becomes; its type name is reported as
// "panic".
type panicError struct{ value any }

func (p panicError) Error() string { return fmt.Sprint(p.value) }

func reasonError(code codes.Code, reason, msg string, md map[string]string) *Error {
	return &Error{Code: code, Reason: reason, Message: msg, Metadata: md}
}
