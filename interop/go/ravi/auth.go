package ravi

import (
	"context"
	"crypto/subtle"
	"regexp"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const healthServicePrefix = "/grpc.health.v1.Health/"

// bearerPattern matches "authorization" credentials: the Bearer scheme in any
// case, one or more spaces, the token.
var bearerPattern = regexp.MustCompile(`^(?i:bearer) +(\S+) *$`)

// authenticator checks "authorization: Bearer <token>" on every call when a
// token is configured. A missing and a wrong token are both UNAUTHENTICATED.
type authenticator struct {
	token        string
	healthExempt bool
}

func (a authenticator) check(ctx context.Context, method string) error {
	if a.token == "" || (a.healthExempt && strings.HasPrefix(method, healthServicePrefix)) {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	// Exactly one authorization entry (a second one is refused, whatever it
	// says), its scheme in any case (RFC 7235): agent_service.proto.
	if given := md.Get("authorization"); len(given) == 1 {
		if m := bearerPattern.FindStringSubmatch(given[0]); m != nil &&
			subtle.ConstantTimeCompare([]byte(m[1]), []byte(a.token)) == 1 {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "missing or invalid credentials")
}

func (a authenticator) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a authenticator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// bearer sends "authorization: Bearer <token>" with every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }
