# syntax=docker/dockerfile:1
# ravi-go: the Go node (the demo's reviewer and the conformance agent), a
# static binary on a distroless base, with grpc-health-probe for health checks.
#
#   docker build -f deploy/docker/go.Dockerfile -t ravi-go .
#   docker run ravi-go node --listen 0.0.0.0:50051 --node-id go-1 --format-with formatter
#
# Modules come from the Go module proxy at the versions go.sum locks; the probe
# is the one tools/go/go.mod pins. Pin the base images by digest in production.
ARG GO_IMAGE=golang:1.26-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
ENV CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local
WORKDIR /src
COPY gen/go/go.mod gen/go/go.sum gen/go/
COPY interop/go/go.mod interop/go/go.sum interop/go/
COPY tools/go/go.mod tools/go/go.sum tools/go/
RUN cd interop/go && go mod download
RUN cd tools/go && go build -trimpath -ldflags="-s -w" -o /out/grpc-health-probe \
    github.com/grpc-ecosystem/grpc-health-probe
COPY gen/go gen/go
COPY interop/go interop/go
RUN cd interop/go && go build -trimpath -ldflags="-s -w" -o /out/ravi-go ./cmd/ravi-go

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/ravi-go /out/grpc-health-probe /usr/local/bin/
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/ravi-go"]
CMD ["node", "--listen", "0.0.0.0:50051"]
