// Command otlp-sink is an OTLP/gRPC endpoint that accepts every export and
// keeps nothing. The tracing benchmark exports to it to measure what tracing
// costs the nodes alone, as with a collector running on another machine:
// Jaeger on the same two cores takes CPU from the nodes
// (docs/performance.md, "The cost of tracing").
//
//	otlp-sink --listen 127.0.0.1:0   # prints "listening on HOST:PORT" on stderr
package main

import (
	"flag"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:4317", "the address to accept exports on")
	flag.Parse()
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "otlp-sink:", err)
		os.Exit(1)
	}
	// Any method of any service: the trace, metrics and logs Export calls
	// alike. The request is read as an empty message (its fields kept as
	// unknown bytes, never decoded); an empty response is a valid
	// Export*ServiceResponse.
	server := grpc.NewServer(
		grpc.MaxRecvMsgSize(64<<20),
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
				return err
			}
			return stream.SendMsg(&emptypb.Empty{})
		}),
	)
	fmt.Fprintln(os.Stderr, "listening on", listener.Addr())
	if err := server.Serve(listener); err != nil {
		fmt.Fprintln(os.Stderr, "otlp-sink:", err)
		os.Exit(1)
	}
}
