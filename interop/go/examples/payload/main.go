// Command payload builds an AgentId and a self-describing payload and
// round-trips them through the protobuf wire format: the smallest Go program
// over the generated ravi.mesh.v1 code.
package main

import (
	"fmt"
	"log"

	examplesv1 "github.com/ravi-mesh/ravi/gen/go/ravi/examples/v1"
	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/protobuf/proto"
)

func main() {
	draft, err := proto.Marshal(&examplesv1.Draft{Text: "hello from Go", Revision: 1})
	if err != nil {
		log.Fatal(err)
	}
	req := &meshv1.SendRequest{
		Recipient: &meshv1.AgentId{Type: "reviewer", Key: "default"},
		Envelope: &meshv1.Envelope{
			MessageId: "go-1",
			Payload: &meshv1.Payload{
				Type:        string((&examplesv1.Draft{}).ProtoReflect().Descriptor().FullName()),
				ContentType: "application/x-protobuf",
				Data:        draft,
			},
		},
	}
	wire, err := proto.Marshal(req)
	if err != nil {
		log.Fatal(err)
	}
	var back meshv1.SendRequest
	if err := proto.Unmarshal(wire, &back); err != nil {
		log.Fatal(err)
	}
	var decoded examplesv1.Draft
	if err := proto.Unmarshal(back.GetEnvelope().GetPayload().GetData(), &decoded); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s <- %s %q (%d bytes on the wire)\n",
		back.GetRecipient().GetType(), back.GetEnvelope().GetPayload().GetType(), decoded.GetText(), len(wire))
}
