# runhub: `make run` starts the server with embedded defaults; `make test`
# installs what the tests need (make deps) and runs the whole suite, then
# the integration suites again on PostgreSQL.

GO          ?= go
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck
# versitygw is the S3-compatible server the blob tests start; built once
# into GOBIN (outside the repo), about a minute on two cores.
VERSITYGW_VERSION := v1.8.0
VERSITYGW   := $(GOBIN)/versitygw
# Pinned tool versions (staticcheck 2026.2.2).
STATICCHECK_VERSION := v0.8.2
ADDR        ?= :8080
DATA_DIR    ?= ./data
FUZZTIME    ?= 30s
BENCHTIME   ?= 2s

.PHONY: run build test deps lint bench fuzz clean

run:
	$(GO) run ./cmd/runhub serve --addr $(ADDR) --data-dir $(DATA_DIR)

build:
	$(GO) build -o bin/runhub ./cmd/runhub
	$(GO) build -o bin/runhub-bench ./cmd/runhub-bench

# deps is idempotent: each step runs only when its tool is missing.
deps:
	$(GO) mod download
	@command -v redis-server >/dev/null || { echo "installing redis-server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
	@command -v haproxy >/dev/null || { echo "installing haproxy (multi-node tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }
	@command -v nginx >/dev/null || { echo "installing nginx (the deployment guide's test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }
	@command -v ip >/dev/null || { echo "installing iproute2 (network partition test: ip netns, veth)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { echo "installing postgresql"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	@command -v chromium >/dev/null || { echo "installing chromium (browser tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@{ command -v node >/dev/null && command -v npm >/dev/null; } || { echo "installing nodejs and npm (the PostHog agent package test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	@test -x $(STATICCHECK) || { echo "installing staticcheck $(STATICCHECK_VERSION)"; \
		$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); }
	@test -x $(VERSITYGW) || { echo "building versitygw $(VERSITYGW_VERSION)"; \
		$(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION); }

# The integration suites (REST, hub, proxy, node, web) run a second time on
# PostgreSQL (store/teststore; pgtest starts a throwaway server), where a
# missing server is a failure, not a skip.
PG_SUITES   := ./rest/ ./hub/... ./proxy/... ./cmd/node/ ./web/ ./store/teststore/

test: deps
	$(GO) test -race -count=1 -timeout 20m ./...
	# allocation bounds (testing.AllocsPerRun), which -race inflates and skips
	$(GO) test -count=1 -run 'Allocs$$' ./...
	RUNHUB_TEST_BACKEND=postgres RUNHUB_REQUIRE_SERVERS=1 $(GO) test -race -count=1 -timeout 20m $(PG_SUITES)

lint: deps
	$(GO) vet ./...
	$(STATICCHECK) ./...

# Go benchmarks, then the load generator's scenarios against a real server
# process (loopback only; each run is bounded in connections and time).
bench: build
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./...
	bin/runhub-bench fanout -transport ws -subs 2000 -publishers 16 -size 200 -duration 20s
	bin/runhub-bench fanout -transport ws -subs 2000 -publishers 4 -size 200 -rate 20 -duration 20s
	bin/runhub-bench fanout -transport sse -subs 2000 -publishers 16 -size 200 -duration 20s
	bin/runhub-bench fanout -transport sse -subs 2000 -publishers 4 -size 200 -rate 20 -duration 20s
	bin/runhub-bench fanout -transport ws -endpoint ws -subs 2000 -publishers 16 -size 200 -duration 20s
	bin/runhub-bench fanout -transport ws -endpoint ws -subs 20 -publishers 4 -size 200 -rate 20 -duration 20s
	bin/runhub-bench idle -conns 10000
	bin/runhub-bench idle -conns 10000 -endpoint ws
	bin/runhub-bench many-runs -path all -runs 2000 -subs 3 -rate 10000 -duration 20s
	bin/runhub-bench command -n 2000
	bin/runhub-bench append -writers 16 -runs 16 -batch 100 -size 200 -duration 10s
	bin/runhub-bench append -writers 16 -runs 1 -batch 100 -size 200 -duration 10s
	bin/runhub-bench fanout -transport ws -subs 20 -publishers 4 -rate 200 -batch 8 -size 4096 -max-bytes 52428800 -duration 60s
	bin/runhub-bench fanout -transport ws -subs 20 -slow 20 -publishers 4 -rate 200 -batch 8 -size 4096 -max-bytes 52428800 -duration 60s

# Each fuzz target for FUZZTIME; new interesting inputs stay in the Go cache,
# failures are written to testdata/fuzz and must be committed with the fix.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseLogEntry$$' -fuzztime $(FUZZTIME) ./store/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRunSnapshot$$' -fuzztime $(FUZZTIME) ./store/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeAppendLog$$' -fuzztime $(FUZZTIME) ./store/runs/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRunPatch$$' -fuzztime $(FUZZTIME) ./store/runs/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeTask$$' -fuzztime $(FUZZTIME) ./store/runs/
	$(GO) test -run '^$$' -fuzz '^FuzzWSMessage$$' -fuzztime $(FUZZTIME) ./hub/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeMessage$$' -fuzztime $(FUZZTIME) ./hub/wsrpc/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCommand$$' -fuzztime $(FUZZTIME) ./store/runs/
	$(GO) test -run '^$$' -fuzz '^FuzzVerifyToken$$' -fuzztime $(FUZZTIME) ./proxy/tokens/
	$(GO) test -run '^$$' -fuzz '^FuzzAgentRequest$$' -fuzztime $(FUZZTIME) ./proxy/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeArtifacts$$' -fuzztime $(FUZZTIME) ./store/runs/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRelay$$' -fuzztime $(FUZZTIME) ./store/runs/
	$(GO) test -run '^$$' -fuzz '^FuzzToMrkdwn$$' -fuzztime $(FUZZTIME) ./proxy/slack/
	$(GO) test -run '^$$' -fuzz '^FuzzCompileSchema$$' -fuzztime $(FUZZTIME) ./store/runs/
	$(GO) test -run '^$$' -fuzz '^FuzzLinkBase$$' -fuzztime $(FUZZTIME) ./rest/

clean:
	rm -rf bin
