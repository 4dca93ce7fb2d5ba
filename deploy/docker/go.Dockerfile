# ravi-go: the Go node (the demo's reviewer and the conformance agent), a
# static binary on a distroless base, with grpc-health-probe for health checks.
#
#   docker build -f deploy/docker/go.Dockerfile -t ravi-go .
#   docker run ravi-go node --listen 0.0.0.0:50051 --node-id go-1 --format-with formatter
#
# Modules come from the Go module proxy at the versions go.sum locks; the probe
# is the one tools/go/go.mod pins. The base images are build arguments
# (docker-compose.yml passes GO_IMAGE and GO_RUNTIME_IMAGE); pin them by digest
# in production. No `# syntax` line: the engine's own Dockerfile frontend
# builds this file, offline too.
ARG GO_IMAGE=golang:1.26-bookworm
ARG GO_RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

# The same stage as in node.Dockerfile, so that one build serves both images.
FROM ${GO_IMAGE} AS probe
ENV CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local
WORKDIR /src/tools/go
COPY tools/go/go.mod tools/go/go.sum ./
RUN go build -trimpath -ldflags="-s -w" -o /out/grpc-health-probe \
    github.com/grpc-ecosystem/grpc-health-probe

FROM ${GO_IMAGE} AS build
ENV CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local
WORKDIR /src
COPY gen/go/go.mod gen/go/go.sum gen/go/
COPY interop/go/go.mod interop/go/go.sum interop/go/
RUN cd interop/go && go mod download
COPY gen/go gen/go
COPY interop/go interop/go
RUN cd interop/go && go build -trimpath -ldflags="-s -w" -o /out/ravi-go ./cmd/ravi-go

FROM ${GO_RUNTIME_IMAGE}
COPY --from=build /out/ravi-go /usr/local/bin/
COPY --from=probe /out/grpc-health-probe /usr/local/bin/
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/ravi-go"]
CMD ["node", "--listen", "0.0.0.0:50051"]
