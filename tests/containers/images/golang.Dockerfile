# The stand-in for golang:1.26-bookworm: this machine's Go toolchain (the build
# context is its GOROOT) on the local Debian image. No C compiler: ravi's Go
# builds set CGO_ENABLED=0.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
COPY . /usr/local/go
ENV GOTOOLCHAIN=local GOPATH=/go PATH=/go/bin:/usr/local/go/bin:$PATH
RUN mkdir -p /go/src /go/bin && chmod -R 1777 /go && go version
WORKDIR /go
