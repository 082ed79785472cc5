# Drover's build. `make demo` runs Drover; `make test` runs every test.
# Both install or build what they need themselves (see README.md).

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/drover-dev/drover/internal/version.Version=$(VERSION)
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.cache/tools

# The local Kubernetes binaries and the OCI registry of the test bed are
# built once into this cache, keyed by version, and reused by every
# checkout on the machine.
TESTBED_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/drover-testbed

# Pinned code generators, built with the Go toolchain (never downloaded
# binaries).
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPC_GATEWAY_VERSION := v2.33.0

GO_TEST_FLAGS ?= -race -count=1 -timeout 40m

.PHONY: build test check proto bench demo testbed deps clean

## build: drover-hub, drover-agent and droverctl into bin/
# Static, as in the release image: with cgo the linker exports every symbol
# (Kustomize imports package plugin), and the agent's binary pages alone
# took 62 MiB of resident memory instead of 44.
build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./hub/cmd/drover-hub ./hub/cmd/droverctl ./agent/cmd/drover-agent

# Tests and benchmarks run in a network namespace with nothing but loopback
# (e2e/testbed/offline.sh): no test can send a packet off the machine. The
# modules they build with are downloaded first, outside it.
OFFLINE := e2e/testbed/offline.sh

## test: every test, unit and end to end, against real PostgreSQL, Kubernetes and Git
# The end-to-end tests run the binaries `make build` put in bin/, built once
# here rather than by each test binary at the same time.
test: deps testbed build
	go mod download
	DROVER_BIN_DIR='$(BIN)' DROVER_TESTBED_DIR="$$(e2e/testbed/kubebuild/build.sh '$(TESTBED_CACHE)')" \
		DROVER_REGISTRY_DIR="$$(e2e/testbed/registrybuild/build.sh '$(TESTBED_CACHE)')" \
		$(OFFLINE) go test $(GO_TEST_FLAGS) ./...

## testbed: build the local Kubernetes binaries and the OCI registry of the test bed (once, ~9 min)
testbed:
	e2e/testbed/kubebuild/build.sh '$(TESTBED_CACHE)' >/dev/null
	e2e/testbed/registrybuild/build.sh '$(TESTBED_CACHE)' >/dev/null

## deps: the machine packages the tests need (PostgreSQL server binaries, git, chromium, ip and nft)
deps:
	@missing=""; \
	command -v git >/dev/null || missing="$$missing git"; \
	{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v nft >/dev/null || missing="$$missing nftables"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing — install them (Debian: sudo apt-get install$$missing)"; exit 1; fi; \
		echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

## check: formatting, vet, go.mod tidiness, generated code, buf lint, import boundaries
check: proto
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.\(gw\.\)\?go$$'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: run gofmt -w on the files above"; exit 1; }
	go vet ./...
	go mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	for m in e2e/testbed/kubebuild/k8s e2e/testbed/kubebuild/etcd e2e/testbed/registrybuild; do (cd $$m && go mod tidy -diff) || { echo "$$m: run go mod tidy there"; exit 1; }; done
	git diff --exit-code -- proto || { echo "generated protos differ from the committed ones: run make proto and commit"; exit 1; }
	test -z "$$(git ls-files --others --exclude-standard proto)" || { echo "untracked generated files under proto/: commit them"; exit 1; }
	PATH="$(TOOLS):$$PATH" buf lint
	@if go list -deps ./agent/... | grep -q '^github.com/drover-dev/drover/hub'; then echo "agent/... imports hub/..."; go list -deps ./agent/... | grep '^github.com/drover-dev/drover/hub'; exit 1; fi
	@if go list -deps ./hub/... | grep -q '^github.com/drover-dev/drover/agent'; then echo "hub/... imports agent/..."; go list -deps ./hub/... | grep '^github.com/drover-dev/drover/agent'; exit 1; fi
	@# Inside the hub: hub/spec (what is valid) links no other hub package,
	@# so droverctl checks files without the fleet model or the rollout
	@# planner; the fleet and the planner decide nothing of their own; and
	@# only the wiring (hub/server) builds on the control logic.
	@status=0; for rule in \
		'hub/spec:hub/.*' \
		'hub/ctl:hub/(fleet|rollout|control|store|server)' \
		'hub/fleet:hub/(rollout|control|store|server)' \
		'hub/rollout:hub/(fleet|control|store|server)' \
		'hub/adminapi hub/agentapi hub/gitwatch hub/dashboard hub/store hub/ownership hub/replicas:hub/(control|server)'; do \
		for pkg in $${rule%%:*}; do \
			bad=$$(go list -deps ./$$pkg | grep -v "^github.com/drover-dev/drover/$$pkg$$" | grep -E "^github.com/drover-dev/drover/($${rule#*:})$$" || true); \
			if [ -n "$$bad" ]; then echo "$$pkg imports what it must not:"; echo "$$bad"; status=1; fi; \
		done; \
	done; exit $$status
	@echo "check: ok"

## proto: regenerate the Go beside proto/drover/v1/*.proto
proto: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc $(TOOLS)/protoc-gen-grpc-gateway
	PATH="$(TOOLS):$$PATH" buf generate

$(TOOLS)/buf:
	GOBIN=$(TOOLS) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(TOOLS)/protoc-gen-grpc-gateway:
	GOBIN=$(TOOLS) go install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@$(GRPC_GATEWAY_VERSION)

## bench: Go benchmarks, against the same real parts as the tests, then one table of figures and budgets
# One package at a time (-p 1): the figures are of two shared cores. The
# output goes to .cache/bench.txt and drover-benchtable turns it into the
# table, which is printed even when a benchmark fails; make then fails.
BENCH ?= .
bench: deps testbed
	@mkdir -p .cache
	@go mod download
	@status=0; DROVER_TESTBED_DIR="$$(e2e/testbed/kubebuild/build.sh '$(TESTBED_CACHE)')" \
		DROVER_REGISTRY_DIR="$$(e2e/testbed/registrybuild/build.sh '$(TESTBED_CACHE)')" \
		$(OFFLINE) go test -p 1 -run '^$$' -bench '$(BENCH)' -benchmem -timeout 60m ./... 2>&1 | tee .cache/bench.txt || status=$$?; \
	echo; go run ./e2e/cmd/drover-benchtable .cache/bench.txt || status=1; \
	exit $$status

## demo: run Drover locally (hub, three clusters, Git, agents) until Ctrl-C
# The demo is e2e/demo's TestDemo, whose binary runs directly: `go test PKG`
# without -v keeps a passing test's output to itself, banner included.
demo: build testbed deps
	@go test -c -o '$(CURDIR)/.cache/demo.test' ./e2e/demo
	@DROVER_DEMO=1 DROVER_BIN_DIR='$(BIN)' DROVER_TESTBED_DIR="$$(e2e/testbed/kubebuild/build.sh '$(TESTBED_CACHE)')" \
		'$(CURDIR)/.cache/demo.test' -test.run '^TestDemo$$' -test.timeout 0

clean:
	rm -rf $(BIN) .cache
