# ravi's build. Every target that needs tools bootstraps them first, into
# repo-local ignored folders, from the pins in tools/ (see docs/development.md):
#   .venv/               Python virtualenv   tools/requirements.txt
#   tools/node_modules/  npm command lines   tools/package.json + package-lock.json
#   node_modules/        npm workspaces      package.json + package-lock.json
#   .tools/bin/          Go command lines    tools/go/go.mod + go.sum
# Stamp files make a second run install nothing.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS_BIN := $(CURDIR)/.tools/bin
BUF := tools/node_modules/.bin/buf
TSC := node_modules/.bin/tsc
# The contract version is recorded once, in proto/ravi/mesh/v1/contract.toml; `buf breaking`
# checks against the newest released image, `make release-contract` records the current one.
CONTRACT_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' proto/ravi/mesh/v1/contract.toml)
CONTRACT_RELEASE := $(shell ls proto/releases/ravi-v*.json | sort -V | tail -n 1)

# Go never downloads another toolchain: the machine's Go 1.26 builds everything.
export GOTOOLCHAIN := local
export GOFLAGS := -mod=readonly

VENV_STAMP := $(VENV)/.ravi-installed
NPM_TOOLS_STAMP := tools/node_modules/.ravi-installed
NPM_STAMP := node_modules/.ravi-installed
GO_TOOLS_STAMP := .tools/bin/.ravi-installed
JAEGER := $(TOOLS_BIN)/jaeger
CHROMIUM := /usr/bin/chromium
# Debian 12's PostgreSQL, for the tests of the shared state store (the test
# fixture starts its own server in a temporary folder on a free loopback port).
POSTGRES_MAJOR := 15
POSTGRES := /usr/lib/postgresql/$(POSTGRES_MAJOR)/bin/postgres
VALGRIND := /usr/bin/valgrind

GO_MODULES := gen/go interop/go

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

# --- bootstrap -------------------------------------------------------------

.PHONY: setup
setup: $(VENV_STAMP) $(NPM_TOOLS_STAMP) $(NPM_STAMP) $(GO_TOOLS_STAMP) $(JAEGER) $(CHROMIUM) $(POSTGRES) ## Install every pinned tool and dependency (idempotent).

$(VENV_STAMP): tools/requirements.txt python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r tools/requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable python
	touch $@

# What the demo needs of it (tools/requirements-demo.txt, a fifth of the
# downloads): installed alone by `make demo` on a machine that has no
# virtualenv yet; with the whole one installed, `make demo` uses it.
VENV_DEMO_STAMP := $(VENV)/.ravi-demo-installed
$(VENV_DEMO_STAMP): tools/requirements-demo.txt python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r tools/requirements-demo.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable python
	touch $@
DEMO_VENV := $(if $(wildcard $(VENV_STAMP)),$(VENV_STAMP),$(VENV_DEMO_STAMP))

$(NPM_TOOLS_STAMP): tools/package.json tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --loglevel=error
	touch $@

$(NPM_STAMP): package.json package-lock.json gen/ts/package.json interop/node/package.json interop/a2a-js/package.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(GO_TOOLS_STAMP): tools/go/go.mod tools/go/go.sum
	cd tools/go && GOBIN=$(TOOLS_BIN) go install tool
	touch $@

# Jaeger v2 from the Go module proxy: `go install ...@v1.76.0` fails on that
# tag's replace directives, so a tools module pins it (tools/jaeger/go.mod).
$(JAEGER): tools/jaeger/go.mod tools/jaeger/go.sum
	cd tools/jaeger && go build -o $(JAEGER) github.com/jaegertracing/jaeger/cmd/jaeger

.PHONY: jaeger
jaeger: $(JAEGER) ## Build Jaeger into .tools/bin, for `ravi demo --trace`.

.PHONY: restate-server
restate-server: $(NPM_TOOLS_STAMP) ## Install restate-server (npm), for `ravi restate dev`.

# A Debian package, installed with apt through sudo when not root: $(1) is the
# file it provides, $(2) the package.
define apt_install
	@if [ "$$(id -u)" -eq 0 ]; then as_root=; \
	elif command -v sudo >/dev/null; then as_root=sudo; \
	else echo "$(1) is missing: install Debian's $(2) package as root (apt-get install $(2)), or install sudo" >&2; exit 1; fi; \
	set -x; \
	$$as_root apt-get update; \
	$$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(2)
	test -x $(1)
endef

# Debian's Chromium, for the browser tests of the server's page (Playwright
# drives it; it never downloads a browser of its own).
$(CHROMIUM):
	$(call apt_install,$(CHROMIUM),chromium)

# Debian's PostgreSQL server, pinned to its major version (Debian's archive
# keeps only the current point release of each). Its packaged cluster is not
# used: tests run servers of their own (ravi.testing).
$(POSTGRES):
	$(call apt_install,$(POSTGRES),postgresql-$(POSTGRES_MAJOR))

# valgrind, for the instruction counts of bench/instructions.py (benchmarks only).
$(VALGRIND):
	$(call apt_install,$(VALGRIND),valgrind)

# --- code generation -------------------------------------------------------

.PHONY: gen
gen: $(VENV_STAMP) $(NPM_TOOLS_STAMP) $(GO_TOOLS_STAMP) ## Generate Python, Go and TypeScript code from proto/ into gen/.
	rm -rf gen/python/ravi gen/go/ravi gen/ts/ravi gen/ts/grpc gen/ts/google
	$(BUF) generate 2> >(grep -v '^Writing mypy to' >&2)
	find gen/python/ravi -mindepth 1 -type d -exec touch {}/__init__.py \;
	# The contract's shared facts (version, hop limit, default options) as constants.
	$(PY) tools/gen-contract
	# TypeScript for the standard gRPC protos the Node member serves (health,
	# reflection, google.rpc status details), vendored in third_party/proto.
	$(BUF) generate --template third_party/buf.gen.ts.yaml

.PHONY: check-gen
check-gen: gen ## Fail if the committed generated code differs from what `make gen` writes.
	git diff --exit-code -- gen
	test -z "$$(git ls-files --others --exclude-standard -- gen)" || { git ls-files --others --exclude-standard -- gen; exit 1; }

.PHONY: vectors
vectors: setup build-node ## Rewrite the shared protobuf test vectors of every language.
	RAVI_UPDATE_VECTORS=1 $(PY) -m pytest -q tests/unit/test_vectors.py -k python_encoding
	cd interop/go && RAVI_UPDATE_VECTORS=1 go test ./vectors -run TestGoEncoding
	cd interop/node && RAVI_UPDATE_VECTORS=1 node --test dist/test/

.PHONY: release-contract
release-contract: $(NPM_TOOLS_STAMP) ## Record the contract as released: the image `buf breaking` checks against.
	$(BUF) build --exclude-source-info -o proto/releases/ravi-v$(CONTRACT_VERSION).json

# --- lint ------------------------------------------------------------------

.PHONY: lint
lint: lint-proto lint-python lint-go lint-node ## Run every linter and type checker.

.PHONY: lint-proto
lint-proto: $(NPM_TOOLS_STAMP)
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(BUF) breaking --against $(CONTRACT_RELEASE)

.PHONY: lint-python
lint-python: $(VENV_STAMP)
	$(VENV)/bin/ruff check python tests bench
	$(VENV)/bin/ruff format --check python tests bench
	$(VENV)/bin/mypy --config-file python/pyproject.toml python/src/ravi

.PHONY: lint-go
lint-go:
	test -z "$$(gofmt -l $(GO_MODULES))" || { gofmt -l $(GO_MODULES); exit 1; }
	for m in $(GO_MODULES); do (cd $$m && go vet ./...); done

.PHONY: lint-node
lint-node: build-node

# --- build -----------------------------------------------------------------

.PHONY: build
build: build-go build-node build-rust ## Build the Go and Node members of the mesh and the Rust client.

# The ravi-go command line, rebuilt whenever Go sources change.
GO_SOURCES := $(shell find interop/go gen/go -name '*.go' -o -name go.mod -o -name go.sum 2>/dev/null)
$(TOOLS_BIN)/ravi-go: $(GO_SOURCES)
	cd interop/go && go build -o $(TOOLS_BIN)/ravi-go ./cmd/ravi-go

# A client instrumented with otelgrpc only (tests/e2e/test_tracing.py).
$(TOOLS_BIN)/otelgrpc-client: $(GO_SOURCES)
	cd interop/go && go build -o $(TOOLS_BIN)/otelgrpc-client ./cmd/otelgrpc-client

# An OTLP endpoint that keeps nothing (bench/grpc_ravi.py --tracing-sink).
$(TOOLS_BIN)/otlp-sink: $(GO_SOURCES)
	cd interop/go && go build -o $(TOOLS_BIN)/otlp-sink ./cmd/otlp-sink

.PHONY: build-go
build-go: $(TOOLS_BIN)/ravi-go $(TOOLS_BIN)/otelgrpc-client $(TOOLS_BIN)/otlp-sink

# The Rust client of interop/rust: tonic + prost generated from proto/ by its build.rs, crates
# pinned by Cargo.lock, built into interop/rust/target (ignored). A cold build takes about a
# minute on 2 cores; an unchanged one is a no-op.
RUST_CLIENT := interop/rust/target/debug/ravi-rust-client
RUST_SOURCES := $(shell find interop/rust/src proto -name '*.rs' -o -name '*.proto' 2>/dev/null) \
  interop/rust/Cargo.toml interop/rust/Cargo.lock interop/rust/build.rs
$(RUST_CLIENT): $(RUST_SOURCES)
	cd interop/rust && cargo build --locked --quiet
	touch $@

.PHONY: build-rust
build-rust: $(RUST_CLIENT)

# Builds gen/ts, interop/node and the A2A interop driver (interop/a2a-js) with
# strict tsc: the TypeScript type check.
.PHONY: build-node
build-node: $(NPM_STAMP)
	$(TSC) -b interop/node interop/a2a-js

# --- test ------------------------------------------------------------------

.PHONY: test
test: setup lint check-gen test-python test-go test-node test-containers ## Run every check and test (what CI runs).

.PHONY: test-python
test-python: $(VENV_STAMP) $(GO_TOOLS_STAMP) $(JAEGER) $(CHROMIUM) $(POSTGRES) build $(NPM_TOOLS_STAMP)
	$(PY) -m pytest tests --ignore=tests/containers

.PHONY: test-go
test-go:
	for m in $(GO_MODULES); do (cd $$m && go test ./...); done

.PHONY: test-node
test-node: build-node
	cd interop/node && node --test --test-reporter=dot dist/test/

# docker-compose.yml against the compose-spec schema (tools/node_modules/dclint),
# deploy/k8s rendered by kustomize and checked by kubeconform against the
# Kubernetes schemas of kubernetes-validate (both Go tools from tools/go), and
# the Dockerfiles. Part of test-python; no container engine or cluster needed.
.PHONY: validate-deploy
validate-deploy: $(VENV_STAMP) $(NPM_TOOLS_STAMP) $(GO_TOOLS_STAMP) ## Validate docker-compose.yml, deploy/k8s and the Dockerfiles.
	$(PY) -m pytest -q tests/unit/test_deploy.py

# --- containers ------------------------------------------------------------

# tests/containers builds the images and runs docker-compose.yml in a private
# Docker engine (its own network and mount namespaces, socket and data root; see
# tests/containers/_engine.py). The engine comes from Debian packages, unpacked
# into a machine-level cache named after their versions, never installed into
# the system: dockerd, containerd, the CLI, compose and buildx from trixie
# (bookworm's dockerd 20.10 and compose 1.29 cannot run the compose file) and
# runc and tini from bookworm (trixie's runc needs glibc 2.38). The stand-in base
# images are cached there too (tests/containers/_images.py). A second run on
# the same machine installs and builds none of it again.
RAVI_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ravi
ENGINE_PACKAGES := docker.io=26.1.5+dfsg1-9+deb13u1+b1 docker-cli=26.1.5+dfsg1-9+deb13u1+b1 \
  containerd=1.7.24~ds1-6+deb13u1 docker-compose=2.26.1-4 docker-buildx=0.13.1+ds1-3 \
  runc=1.1.5+ds1-1+deb12u1 tini=0.19.0-1+b3
ENGINE := $(RAVI_CACHE)/containers/engine-$(shell echo '$(ENGINE_PACKAGES)' | sha256sum | cut -c1-16)

.PHONY: test-containers
test-containers: $(VENV_STAMP) $(JAEGER) $(NPM_TOOLS_STAMP) containers-engine ## Build the images and run docker-compose.yml in a private Docker engine.
	RAVI_CACHE=$(RAVI_CACHE) $(PY) -m pytest tests/containers

# Links .tools/engine to the engine (tests/containers finds it there), after
# unpacking it when this machine has not yet. Installs nothing when not root:
# then tests/containers skips, saying why.
.PHONY: containers-engine
containers-engine:
	@if [ ! -x $(ENGINE)/usr/sbin/dockerd ]; then tests/containers/install-engine.sh $(ENGINE) $(ENGINE_PACKAGES); fi
	@if [ -x $(ENGINE)/usr/sbin/dockerd ]; then mkdir -p .tools && ln -sfn $(ENGINE) .tools/engine; fi

# --- benchmarks ------------------------------------------------------------

# AutoGen Core's side of the workloads comes from the anchors shared with the
# project (DESIGN.md section 8), run from their own virtualenv.
AUTOGEN_ANCHORS ?= $(abspath ../shared/anchors/autogen)
BENCH_AUTOGEN := .tools/bench-autogen
BENCH_AUTOGEN_STAMP := $(BENCH_AUTOGEN)/.ravi-installed
BENCH_RUNS ?= 3

$(BENCH_AUTOGEN_STAMP):
	@if [ -f "$(AUTOGEN_ANCHORS)/requirements-lock.txt" ]; then \
	  $(PYTHON) -m venv $(BENCH_AUTOGEN) && \
	  $(BENCH_AUTOGEN)/bin/pip install --quiet -r "$(AUTOGEN_ANCHORS)/requirements-lock.txt" && \
	  touch $@; \
	else echo "AutoGen anchors not found at $(AUTOGEN_ANCHORS): benchmarks run without them"; fi

.PHONY: bench
bench: bench-local bench-grpc bench-restate bench-a2a bench-lifecycle ## Run the benchmarks (medians of BENCH_RUNS runs, ratios to the anchors).

.PHONY: bench-local
bench-local: $(VENV_STAMP) $(BENCH_AUTOGEN_STAMP)
	$(PY) bench/run.py local --runs $(BENCH_RUNS) --autogen-python $(BENCH_AUTOGEN)/bin/python \
	  --anchors "$(AUTOGEN_ANCHORS)" --save bench/results/local.json

.PHONY: bench-grpc
bench-grpc: $(VENV_STAMP) $(BENCH_AUTOGEN_STAMP)
	$(PY) bench/run.py grpc --runs $(BENCH_RUNS) --autogen-python $(BENCH_AUTOGEN)/bin/python \
	  --anchors "$(AUTOGEN_ANCHORS)" --save bench/results/grpc.json

# The cost of tracing alone (docs/performance.md): untraced, every trace exported
# to a real Jaeger, and 1% sampled, interleaved; medians of 5 runs at least.
TRACING_RUNS := $(if $(filter-out 1 2 3 4,$(BENCH_RUNS)),$(BENCH_RUNS),5)
.PHONY: bench-tracing
bench-tracing: $(VENV_STAMP) $(JAEGER) build
	$(PY) bench/run.py local --runs $(TRACING_RUNS) --only ravi,ravi+tracing,ravi+tracing1% \
	  --save bench/results/tracing-local.json
	$(PY) bench/run.py grpc --runs $(TRACING_RUNS) \
	  --only ravi,ravi+tracing,ravi+tracing1%,ravi+tracing-sink --save bench/results/tracing-grpc.json

# Instructions per in-process round trip, and per remote publish and round trip
# (two nodes in one process), untraced, hooked and traced (unsampled): counted by
# valgrind, so the machine's load does not move them.
.PHONY: bench-instructions
bench-instructions: $(VENV_STAMP) $(VALGRIND)
	$(PY) bench/instructions.py

# Raw restate-sdk against ravi's RestateRuntime, each on a restate-server of its own.
.PHONY: bench-restate
bench-restate: $(VENV_STAMP) $(NPM_TOOLS_STAMP)
	$(PY) bench/run.py restate --runs $(BENCH_RUNS) --save bench/results/restate.json

# The A2A gateway beside a bare a2a-sdk server with the same echo agent
# (medians of at least 5 interleaved runs: the gap is small next to the noise).
A2A_BENCH_RUNS ?= $(if $(filter-out 0 1 2 3 4,$(BENCH_RUNS)),$(BENCH_RUNS),5)

.PHONY: bench-a2a
bench-a2a: $(VENV_STAMP)
	$(PY) bench/run.py a2a --runs $(A2A_BENCH_RUNS) --save bench/results/a2a.json

# 1,000,000 keys with a bound on active agents; activation from SQLite and from
# a real PostgreSQL (Debian's, installed by `make setup`).
.PHONY: bench-lifecycle
bench-lifecycle: $(VENV_STAMP)
	$(PY) bench/run.py lifecycle --runs $(BENCH_RUNS) --save bench/results/lifecycle.json

# --- demo ------------------------------------------------------------------

# The demo bootstraps only what it runs: the virtualenv and the Go and Node
# nodes; Jaeger only with TRACE=1 (KEEP=1 keeps it up to query afterwards).
.PHONY: demo
demo: $(DEMO_VENV) build $(if $(TRACE),$(JAEGER)) ## Run the main demo (TRACE=1: traced; KEEP=1: Jaeger stays up).
	$(VENV)/bin/ravi demo $(if $(TRACE),--trace $(if $(KEEP),--keep),--mesh)

# --- housekeeping ----------------------------------------------------------

.PHONY: lock
lock: ## Re-resolve tools/requirements.in into the pinned tools/requirements.txt.
	rm -rf .tools/lock-venv
	$(PYTHON) -m venv .tools/lock-venv
	.tools/lock-venv/bin/pip install --quiet pip-tools==7.6.2
	.tools/lock-venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-find-links \
	  --output-file tools/requirements.txt tools/requirements.in python/pyproject.toml
	rm -rf .tools/lock-venv

.PHONY: clean
clean: ## Remove every bootstrapped folder and build output.
	rm -rf $(VENV) .tools tools/node_modules node_modules gen/ts/dist interop/node/dist interop/a2a-js/dist interop/rust/target \
	  .mypy_cache .ruff_cache .pytest_cache .hypothesis python/dist

# The demo's lock (tools/requirements-demo.txt): ravi's dependencies with the
# telemetry extra, and hatchling, at the versions tools/requirements.txt pins.
# Run it after `make lock`: tests/unit/test_deploy.py fails while they disagree.
.PHONY: lock-demo
lock-demo: ## Re-resolve tools/requirements-demo.txt from tools/requirements.txt.
	rm -rf .tools/lock-demo-venv
	$(PYTHON) -m venv .tools/lock-demo-venv
	.tools/lock-demo-venv/bin/pip install --quiet pip-tools==7.6.2
	.tools/lock-demo-venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-find-links \
	  --extra telemetry --constraint tools/requirements.txt \
	  --output-file tools/requirements-demo.txt tools/requirements-demo.in python/pyproject.toml
	rm -rf .tools/lock-demo-venv

# The Python image's lock (deploy/docker/requirements.txt): ravi's dependencies
# with the server, telemetry and restate extras, and hatchling, which builds its
# wheel, at the versions tools/requirements.txt pins. Run it after `make lock`:
# tests/unit/test_deploy.py fails while the two locks disagree.
.PHONY: lock-images
lock-images: ## Re-resolve deploy/docker/requirements.txt from tools/requirements.txt.
	rm -rf .tools/lock-images-venv
	$(PYTHON) -m venv .tools/lock-images-venv
	.tools/lock-images-venv/bin/pip install --quiet pip-tools==7.6.2
	.tools/lock-images-venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-find-links \
	  --extra server --extra telemetry --extra restate --extra postgres --constraint tools/requirements.txt \
	  --output-file deploy/docker/requirements.txt deploy/docker/requirements.in python/pyproject.toml
	rm -rf .tools/lock-images-venv
