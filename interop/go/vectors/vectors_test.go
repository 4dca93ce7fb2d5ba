// Package vectors checks that Go encodes and decodes the shared protobuf test
// vectors of tests/vectors byte for byte like Python and Node.
package vectors

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	examplesv1 "github.com/ravi-mesh/ravi/gen/go/ravi/examples/v1"
	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

var update = flag.Bool("update", os.Getenv("RAVI_UPDATE_VECTORS") == "1", "rewrite the Go vector files")

var languages = []string{"python", "go", "node"}

const vectorsDir = "../../../tests/vectors"

type vectorCase struct {
	Name string          `json:"name"`
	Type string          `json:"type"`
	JSON json.RawMessage `json:"json"`
}

func loadCases(t *testing.T) []vectorCase {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(vectorsDir, "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Cases []vectorCase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	return file.Cases
}

func build(t *testing.T, c vectorCase) proto.Message {
	t.Helper()
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(c.Type))
	if err != nil {
		t.Fatalf("%s: %v", c.Name, err)
	}
	msg := mt.New().Interface()
	if err := protojson.Unmarshal(c.JSON, msg); err != nil {
		t.Fatalf("%s: %v", c.Name, err)
	}
	return msg
}

func encode(t *testing.T, msg proto.Message) []byte {
	t.Helper()
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestGoEncodingMatchesCommittedVector(t *testing.T) {
	for _, c := range loadCases(t) {
		t.Run(c.Name, func(t *testing.T) {
			encoded := encode(t, build(t, c))
			path := filepath.Join(vectorsDir, "go", c.Name+".binpb")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, encoded, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			committed, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(committed, encoded) {
				t.Fatalf("go/%s.binpb is stale: run make vectors", c.Name)
			}
		})
	}
}

func TestDecodesVectorOfEveryLanguage(t *testing.T) {
	for _, c := range loadCases(t) {
		for _, lang := range languages {
			t.Run(c.Name+"/"+lang, func(t *testing.T) {
				expected := build(t, c)
				data, err := os.ReadFile(filepath.Join(vectorsDir, lang, c.Name+".binpb"))
				if err != nil {
					t.Fatal(err)
				}
				decoded := expected.ProtoReflect().New().Interface()
				if err := proto.Unmarshal(data, decoded); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(decoded, expected) {
					t.Fatalf("decoded %v, want %v", decoded, expected)
				}
				if !bytes.Equal(data, encode(t, expected)) {
					t.Fatalf("%s/%s.binpb differs from Go's deterministic encoding", lang, c.Name)
				}
			})
		}
	}
}

func TestNestedPayloadDecodesAsItsDeclaredType(t *testing.T) {
	for _, lang := range languages {
		t.Run(lang, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(vectorsDir, lang, "send_request.binpb"))
			if err != nil {
				t.Fatal(err)
			}
			var req meshv1.SendRequest
			if err := proto.Unmarshal(data, &req); err != nil {
				t.Fatal(err)
			}
			payload := req.GetEnvelope().GetPayload()
			if payload.GetType() != string((&examplesv1.WriteRequest{}).ProtoReflect().Descriptor().FullName()) {
				t.Fatalf("payload type %q", payload.GetType())
			}
			var inner examplesv1.WriteRequest
			if err := proto.Unmarshal(payload.GetData(), &inner); err != nil {
				t.Fatal(err)
			}
			if inner.GetTopic() != "Rendezvous hashing" || inner.GetFeedback()[0] != "cite the paper ✓" {
				t.Fatalf("inner payload %v", &inner)
			}
		})
	}
}
