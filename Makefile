# nsx-ujo. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
KUBE_VERSION := v1.37.2
BINARIES := nsx nsx-node-agent nsx-kube-proxy nsx-ovs nsx-ncp-bootstrap nsxctl
# Privileged tests start OVS, etcd and kube-apiserver: give them room.
TEST_TIMEOUT ?= 30m
# An execution count, not a duration: a duration races Go 1.26's fuzz
# coordinator at its deadline and fails with a bare "context deadline
# exceeded" on a busy machine (golang/go#75804, fixed in Go 1.27).
DIFF_ROUNDS ?= 200
FUZZTIME ?= 50000x

.PHONY: all build image test unit lint fuzz fuzz-targets chaos tools deps bench clean help generate check-generate demo demo-down bench-cluster bench-compare conformance cluster

all: build

help:
	@echo "make demo [NODES=n] [CONFIG_SOURCE=hyperbus]  the main job: an n-node (default 2) cluster, a ClusterIP served by the OVS then the eBPF dataplane (root); pod configs from the annotation (default) or HyperBus"
	@echo "make demo-down  remove what a killed demo or test run left (netns, OVS, temp dirs)"
	@echo "make deps   install the Debian packages the tests need (root)"
	@echo "make build  build $(BINARIES) into $(BIN)/"
	@echo "make image [VERSION=semver]  the image tarball _output/image/nsx-ujo-<version>.tar without a Docker engine (docker load -i / ctr images import)"
	@echo "make test   lint, build, every test (root: OVS, netns, kube-apiserver), short fuzzing"
	@echo "make unit   tests that need no root"
	@echo "make bench  benchmarks (tests/perf), figures beside their baselines"
	@echo "make chaos [CHAOS_REPEATS=3] [CHAOS_API_DOWN=60s] [CHAOS_SEED=n]  faults under load on both dataplanes, at rest then with one core busy, the tables of figures"
	@echo "make generate  recompile bpf/ into dataplane/ebpf (clang)"
	@echo "make bench-compare OLD=a.json NEW=b.json  ratios between two tests/perf/results files, changes beyond ±10% flagged (report only)"
	@echo "make bench-cluster  on the Vagrant control VM: benchmarks against the real multi-node cluster (Vagrantfile)"
	@echo "make tools  build kube-apiserver, kubelet, ... $(KUBE_VERSION), containerd, CoreDNS into _output/tools (once per machine; e2e.test only for make test and make conformance)"
	@echo "make conformance [DATAPLANE=ovs|ebpf] [DAEMONS=deploy|processes] [WIDE=1]  the upstream e2e conformance tests on a real-node cluster (kubelet + containerd), counts printed"
	@echo "make cluster [DATAPLANE=ovs|ebpf] [NODES=n]  a real-node cluster to try kubectl against, until Ctrl-C"

deps:
	hack/install-deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

# The image without a container engine (internal/nsximage): Debian's
# packages unpacked as one layer, our binaries as another.
VERSION ?= 0.1.0
image: deps
	$(GO) run ./hack/image -version $(VERSION)

tools:
	hack/build-tools.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags interactive ./tests/realnode/
	@# The product (cmd/, pkg/, dataplane/) never depends on test support (tests/).
	@bad=$$($(GO) list -deps ./cmd/... ./pkg/... ./dataplane/... | grep '^github.com/nsx-ujo/nsx-ujo/tests/' || true); \
	if [ -n "$$bad" ]; then echo "the product imports test code:"; echo "$$bad"; exit 1; fi
	cd tools/cnidriver && $(GO) vet . && $(GO) vet -modfile=libcni-v1.1.2.mod -tags libcni_v1_1 .

test: deps lint check-generate build tools
	hack/build-tools.sh e2e.test
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) fuzz-targets

unit:
	@# Every package; the privileged tests skip (harness.UnitOnlyEnv), as for a non-root user.
	NSX_UNIT_ONLY=1 $(GO) test -count=1 ./...

# make test runs the fuzz targets briefly (FUZZTIME); make fuzz adds the
# long differential run of the dataplanes.
fuzz: fuzz-targets
	@# The dataplanes against the model and each other: many random models (root).
	$(GO) test -count=1 -run=TestDifferential ./tests/conformance/ -differential.rounds=$(DIFF_ROUNDS) -differential.seed=$$(date +%s)

# The fault-injection suite, long: each fault CHAOS_REPEATS times per
# dataplane at seeded random points, kube-apiserver down CHAOS_API_DOWN;
# the table of figures is printed, at rest then with one core busy (make
# test runs one of each at rest, 5 s down).
CHAOS_REPEATS ?= 3
CHAOS_API_DOWN ?= 60s
CHAOS_SEED ?= $(shell date +%s)
chaos: build tools
	$(GO) test -count=1 -v -timeout 90m -run=TestChaos ./tests/chaos/ -chaos.repeats=$(CHAOS_REPEATS) -chaos.api-down=$(CHAOS_API_DOWN) -chaos.seed=$(CHAOS_SEED)
	$(GO) test -count=1 -v -timeout 90m -run=TestChaos ./tests/chaos/ -chaos.repeats=$(CHAOS_REPEATS) -chaos.api-down=$(CHAOS_API_DOWN) -chaos.seed=$(CHAOS_SEED) -chaos.busy

fuzz-targets:
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./pkg/agent/podconfig/
	$(GO) test -run='^$$' -fuzz=FuzzParseNetConf -fuzztime=$(FUZZTIME) ./pkg/cniwire/
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./pkg/config/
	$(GO) test -run='^$$' -fuzz=FuzzDecode -fuzztime=$(FUZZTIME) ./pkg/hyperbus/
	$(GO) test -run='^$$' -fuzz=FuzzBuildFrontends -fuzztime=$(FUZZTIME) ./pkg/proxy/
	$(GO) test -run='^$$' -fuzz=FuzzFromOVS -fuzztime=$(FUZZTIME) ./pkg/agent/ports/
	$(GO) test -run='^$$' -fuzz=FuzzLoadJournal -fuzztime=$(FUZZTIME) ./pkg/nodeif/

bench: build tools
	$(GO) test -run='^$$' -bench=. -benchtime=1x -timeout 60m ./tests/perf/
	$(GO) test -run='^$$' -bench=BenchmarkEgress ./dataplane/ebpf/

clean:
	rm -rf $(BIN)

# Regenerate the eBPF objects (needs clang); the output is committed.
generate:
	$(GO) generate ./dataplane/ebpf/

# CI: the committed bpf2go output must match bpf/ (clang from Debian).
check-generate:
	@tmp=$$(mktemp -d); cp dataplane/ebpf/nsx_bpfel.o dataplane/ebpf/nsx_bpfel.go $$tmp/; \
	$(GO) generate ./dataplane/ebpf/ && \
	if cmp -s $$tmp/nsx_bpfel.o dataplane/ebpf/nsx_bpfel.o && cmp -s $$tmp/nsx_bpfel.go dataplane/ebpf/nsx_bpfel.go; then rm -rf $$tmp; \
	else cp $$tmp/nsx_bpfel.* dataplane/ebpf/; rm -rf $$tmp; echo "dataplane/ebpf: committed bpf2go output differs from bpf/ sources: run make generate"; exit 1; fi

# The main job (README): installs what is missing, builds, runs the demo.
NODES ?= 2
demo: deps build tools
	$(GO) build -o _output/nsx-demo ./tests/demo
	_output/nsx-demo -nodes $(NODES) -config-source $(or $(CONFIG_SOURCE),annotation)

# The upstream Kubernetes e2e tests against a real-node cluster: the
# Services, Networking and HostPort conformance tests (CI runs them in make
# test, without the known failures), or
# with WIDE=1 Cilium's set ([Conformance]|[sig-network], minus the skips
# tests/realnode/conformance_test.go lists with their reasons).
DATAPLANE ?= ovs,ebpf
# deploy: nsx-ujo from the image and deploy/ (as an operator installs it);
# processes: the binaries started by the test.
DAEMONS ?= deploy
conformance: deps build tools
	hack/build-tools.sh e2e.test
	$(GO) test -count=1 -timeout 4h -v -run 'TestUpstreamConformance' ./tests/realnode/ -args -conformance.known -conformance.dataplanes=$(DATAPLANE) -conformance.daemons=$(DAEMONS) $(if $(WIDE),-conformance.focus='\[Conformance\]|\[sig-network\]') 2>&1 | grep -v -e '^=== RUN' ; test $${PIPESTATUS[0]} -eq 0

# A real-node cluster for kubectl: prints KUBECONFIG, runs until Ctrl-C.
cluster: deps build tools
	@NSX_CLUSTER_NODES=$(NODES) NSX_CLUSTER_DATAPLANE=$(firstword $(subst $(comma), ,$(DATAPLANE))) $(GO) test -count=1 -tags interactive -timeout 0 -run 'TestInteractiveCluster$$' -v ./tests/realnode/ 2>&1 | grep -v -e '^=== RUN' -e '^--- PASS' -e '^PASS$$' -e '^ok '

comma := ,

# Leftovers of a demo or test run that was killed (Ctrl-C, timeout): the
# harness removes netns and temp dirs whose owning process is gone.
demo-down:
	$(GO) build -o _output/nsx-demo ./tests/demo
	_output/nsx-demo down

bench-compare:
	@if [ -z "$(OLD)" ] || [ -z "$(NEW)" ]; then echo "usage: make bench-compare OLD=tests/perf/results/<a>.json NEW=tests/perf/results/<b>.json"; exit 2; fi
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/benchcompare ./tests/perf/benchcompare
	$(BIN)/benchcompare $(OLD) $(NEW)

# The Vagrant cluster's benchmarks: run on its control VM (README, Vagrantfile).
bench-cluster:
	hack/vagrant/bench-cluster.sh
