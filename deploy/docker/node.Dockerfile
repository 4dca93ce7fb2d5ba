# ravi-node: the Node node (the demo's formatter and the conformance agent),
# compiled with tsc from interop/node and the generated contract in gen/ts.
#
#   docker build -f deploy/docker/node.Dockerfile -t ravi-node .
#   docker run ravi-node node --listen 0.0.0.0:50051 --node-id node-js
#
# npm packages come from package-lock.json (`npm ci`); grpc-health-probe is the
# one tools/go/go.mod pins. The runtime stage is distroless: the node binary of
# the build image, the compiled JavaScript and the production dependencies, and
# no shell, npm or TypeScript. The base images are build arguments
# (docker-compose.yml passes NODE_IMAGE, GO_IMAGE and NODE_RUNTIME_IMAGE); pin
# them by digest in production. No `# syntax` line: the engine's own Dockerfile
# frontend builds this file, offline too.
ARG NODE_IMAGE=node:20-bookworm-slim
ARG GO_IMAGE=golang:1.26-bookworm
ARG NODE_RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# The same stage as in go.Dockerfile, so that one build serves both images.
FROM ${GO_IMAGE} AS probe
ENV CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local
WORKDIR /src/tools/go
COPY tools/go/go.mod tools/go/go.sum ./
RUN go build -trimpath -ldflags="-s -w" -o /out/grpc-health-probe \
    github.com/grpc-ecosystem/grpc-health-probe

FROM ${NODE_IMAGE} AS build
# better-sqlite3 (the SQLite state store) is a native addon: without its
# prebuilt binary (downloaded from GitHub, out of reach offline) node-gyp
# compiles it against the image's own Node headers (/usr/local/include/node).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
ENV npm_config_nodedir=/usr/local
WORKDIR /app
COPY package.json package-lock.json ./
COPY gen/ts/package.json gen/ts/
COPY interop/node/package.json interop/node/
# npm checks every workspace of the lock file; only these two are installed.
COPY interop/a2a-js/package.json interop/a2a-js/
RUN npm ci --no-audit --no-fund --workspace gen/ts --workspace interop/node
COPY gen/ts gen/ts
COPY interop/node interop/node
RUN node_modules/.bin/tsc -b interop/node

# The production dependencies alone: no TypeScript.
FROM build AS deps
RUN npm prune --omit=dev --no-audit --no-fund --workspace gen/ts --workspace interop/node

FROM ${NODE_RUNTIME_IMAGE}
ENV NODE_ENV=production
COPY --from=build /usr/local/bin/node /usr/local/bin/node
WORKDIR /app
COPY --from=deps /app/node_modules node_modules
COPY --from=build /app/package.json ./
COPY --from=build /app/gen/ts/package.json gen/ts/
COPY --from=build /app/gen/ts/dist gen/ts/dist
COPY --from=build /app/interop/node/package.json interop/node/
COPY --from=build /app/interop/node/dist/src interop/node/dist/src
COPY --from=probe /out/grpc-health-probe /usr/local/bin/
# distroless' unprivileged user, nonroot.
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/node", "/app/interop/node/dist/src/cli.js"]
CMD ["node", "--listen", "0.0.0.0:50051", "--node-id", "node-js"]
