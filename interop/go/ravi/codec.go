package ravi

import (
	"fmt"
	"mime"

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

var jsonUnmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}

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
	if p.GetType() == "" {
		return nil, badPayload("the payload has no type name", "")
	}
	mt, err := types.FindMessageByName(protoreflect.FullName(p.GetType()))
	if err != nil {
		return nil, badPayload(fmt.Sprintf("unknown message type %q", p.GetType()), p.GetType())
	}
	m := mt.New().Interface()
	if ct == ContentTypeProtobuf {
		err = proto.Unmarshal(p.GetData(), m)
	} else {
		err = jsonUnmarshal.Unmarshal(p.GetData(), m)
	}
	if err != nil {
		return nil, badPayload(fmt.Sprintf("cannot decode %s from %s: %v", p.GetType(), ct, err), p.GetType())
	}
	return m, nil
}

func contentType(v string) (string, error) {
	mt, _, err := mime.ParseMediaType(v)
	if err == nil && (mt == ContentTypeProtobuf || mt == ContentTypeJSON) {
		return mt, nil
	}
	return "", badPayload(fmt.Sprintf("unsupported content type %q (want %s or %s)", v, ContentTypeProtobuf, ContentTypeJSON), "")
}

func badPayload(msg, messageType string) *Error {
	var md map[string]string
	if messageType != "" {
		md = map[string]string{"message_type": messageType}
	}
	return &Error{Code: codes.InvalidArgument, Reason: ReasonBadPayload, Message: msg, Metadata: md}
}
