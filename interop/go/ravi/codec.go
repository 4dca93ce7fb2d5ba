package ravi

import (
	"fmt"
	"mime"
	"strings"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// google.protobuf.Value and Struct: promise values and agent state.
	_ "google.golang.org/protobuf/types/known/structpb"
)

// The content types of a Payload.
const (
	ContentTypeProtobuf = "application/x-protobuf"
	ContentTypeJSON     = "application/json"
)

// TypeResolver finds message types by full name; *protoregistry.Types
// implements it. The default is protoregistry.GlobalTypes: every protobuf
// message type linked into the program.
type TypeResolver interface {
	FindMessageByName(protoreflect.FullName) (protoreflect.MessageType, error)
}

// Payloads are decoded as types.proto says: a JSON field the type does not
// declare is refused, and nothing may nest deeper than the contract's limit.
var (
	jsonUnmarshal  = protojson.UnmarshalOptions{RecursionLimit: meshv1.MaxNestingDepth + 1}
	protoUnmarshal = proto.UnmarshalOptions{RecursionLimit: meshv1.MaxNestingDepth + 1}
)

// jsonDepthOK reports whether JSON data nests at most MaxNestingDepth arrays
// and objects. Counting only starts past that many brackets, which keeps
// ordinary payloads on the fast path.
func jsonDepthOK(data []byte) bool {
	brackets := 0
	for _, b := range data {
		if b == '[' || b == '{' {
			brackets++
		}
	}
	if brackets <= meshv1.MaxNestingDepth {
		return true
	}
	depth, inString, escaped := 0, false, false
	for _, b := range data {
		switch {
		case inString:
			if escaped {
				escaped = false
			} else if b == '\\' {
				escaped = true
			} else if b == '"' {
				inString = false
			}
		case b == '"':
			inString = true
		case b == '[' || b == '{':
			depth++
			if depth > meshv1.MaxNestingDepth {
				return false
			}
		case b == ']' || b == '}':
			depth--
		}
	}
	return true
}

// typeName is the message type a Payload.type names: a type URL, as
// google.protobuf.Any writes it, names the type after its last '/'.
func typeName(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}

// TypeName returns the full protobuf name of m, as it travels in Payload.type.
func TypeName(m proto.Message) string {
	return string(m.ProtoReflect().Descriptor().FullName())
}

// EncodePayload encodes m as binary protobuf.
func EncodePayload(m proto.Message) (*meshv1.Payload, error) {
	data, err := proto.Marshal(m)
	if err != nil {
		return nil, &Error{Code: codes.Internal, Message: fmt.Sprintf("encode %s: %v", TypeName(m), err)}
	}
	return &meshv1.Payload{Type: TypeName(m), ContentType: ContentTypeProtobuf, Data: data}, nil
}

// EncodePayloadJSON encodes m in the canonical protobuf JSON mapping.
func EncodePayloadJSON(m proto.Message) (*meshv1.Payload, error) {
	data, err := protojson.Marshal(m)
	if err != nil {
		return nil, &Error{Code: codes.Internal, Message: fmt.Sprintf("encode %s: %v", TypeName(m), err)}
	}
	return &meshv1.Payload{Type: TypeName(m), ContentType: ContentTypeJSON, Data: data}, nil
}

// DecodePayload decodes p with the global registry of protobuf types. A
// missing payload, an unknown type name, an unsupported content type or
// undecodable data is a *Error INVALID_ARGUMENT / BAD_PAYLOAD.
func DecodePayload(p *meshv1.Payload) (proto.Message, error) {
	return decodePayload(protoregistry.GlobalTypes, p)
}

func decodePayload(types TypeResolver, p *meshv1.Payload) (proto.Message, error) {
	if p == nil {
		return nil, badPayload("the envelope carries no payload", "")
	}
	ct, err := contentType(p.GetContentType())
	if err != nil {
		return nil, err
	}
	name := typeName(p.GetType())
	if name == "" {
		return nil, badPayload("the payload has no type name", "")
	}
	mt, err := types.FindMessageByName(protoreflect.FullName(name))
	if err != nil {
		return nil, badPayload(fmt.Sprintf("unknown message type %q", truncate(name, 200)), p.GetType())
	}
	m := mt.New().Interface()
	if ct == ContentTypeProtobuf {
		err = protoUnmarshal.Unmarshal(p.GetData(), m)
	} else if !jsonDepthOK(p.GetData()) {
		err = fmt.Errorf("JSON nests deeper than %d arrays and objects", meshv1.MaxNestingDepth)
	} else {
		err = jsonUnmarshal.Unmarshal(p.GetData(), m)
	}
	if err != nil {
		return nil, badPayload(fmt.Sprintf("cannot decode %s from %s: %v", p.GetType(), ct, err), p.GetType())
	}
	return m, nil
}

// contentType is the encoding a Payload.content_type names (types.proto): a
// media type whose type and subtype match case-insensitively, with parameters
// allowed but no charset other than UTF-8.
func contentType(v string) (string, error) {
	if v == ContentTypeProtobuf || v == ContentTypeJSON {
		return v, nil
	}
	mt, params, err := mime.ParseMediaType(v)
	if err == nil && (mt == ContentTypeProtobuf || mt == ContentTypeJSON) {
		if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "utf8") {
			return "", badPayload(fmt.Sprintf("content type %q: only UTF-8 JSON is accepted", truncate(v, 100)), "")
		}
		return mt, nil
	}
	return "", badPayload(fmt.Sprintf("unsupported content type %q (want %s or %s)", truncate(v, 100), ContentTypeProtobuf, ContentTypeJSON), "")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func badPayload(msg, messageType string) *Error {
	var md map[string]string
	if messageType != "" {
		md = map[string]string{"message_type": messageType}
	}
	return &Error{Code: codes.InvalidArgument, Reason: ReasonBadPayload, Message: msg, Metadata: md}
}
