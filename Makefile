# govirtiofsd: one target per thing a person wants to do.
GO      ?= go
BIN     := bin
LAB     := test/lib/lab/fetch.sh
# Every test, including the real-guest ones under test/, with the lab fetched
# first. Override TESTFLAGS to narrow a run (e.g. TESTFLAGS='-run Smoke').
TESTFLAGS ?=

.PHONY: all build lab unit test vet demo guestbench install clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/govirtiofsd ./cmd/govirtiofsd
	CGO_ENABLED=0 $(GO) build -o $(BIN)/vhostfs-bench ./cmd/vhostfs-bench

# Fetch QEMU, the guest kernel, busybox and the reference virtiofsd from
# Debian into .cache/lab (idempotent).
lab:
	bash $(LAB)

vet:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags guest ./test/e2e/guest/posix/

# The in-package tests of the daemon's packages, the binaries and the
# harness: no lab, no QEMU, a couple of minutes (run as root for the
# credential and sandbox tests). test/README.md says what needs the lab.
UNIT := ./vhostuser/ ./virtqueue/ ./fuse/ ./passthrough/ ./dax/ ./cmd/... ./harness/...
unit: vet
	$(GO) test -count=1 -timeout 10m $(TESTFLAGS) $(UNIT)

test: build lab vet
	$(GO) test -count=1 -timeout 25m $(TESTFLAGS) ./...
	$(MAKE) fuzz FUZZTIME=3s

# Boot a guest on a demo share and show its writes appearing on the host.
demo: build lab
	$(GO) run ./test/demo

# Real-guest benchmark against the reference virtiofsd, alternating
# (ROUNDS rounds, QUEUES request queues for ours), with the shared folders on
# a tmpfs (pass --share-fs disk to guestbench for the disk).
ROUNDS ?= 3
QUEUES ?= 1
guestbench: build lab
	$(GO) run ./test/bench/guestbench --rounds $(ROUNDS) --queues $(QUEUES) --ours-args "$(OURS_ARGS)"

# DAX benchmark on QEMU 11.1's generic device: reads of files in the host's
# page cache through our window (dax=always), through ours without it, and
# through the reference virtiofsd, alternating for ROUNDS rounds.
DAX_WINDOW ?= 512M
.PHONY: daxbench
daxbench: build lab
	$(GO) run ./test/bench/daxbench --rounds $(ROUNDS) --dax-window-size $(DAX_WINDOW)

# Install the daemon and its vhost-user description for libvirt and QEMU.
PREFIX  ?= /usr/local
DESTDIR ?=
install: build
	install -D -m 0755 $(BIN)/govirtiofsd $(DESTDIR)$(PREFIX)/bin/govirtiofsd
	install -d $(DESTDIR)/usr/share/qemu/vhost-user
	printf '{\n  "description": "govirtiofsd: virtio-fs vhost-user back-end",\n  "type": "fs",\n  "binary": "%s"\n}\n' \
		"$(PREFIX)/bin/govirtiofsd" > $(DESTDIR)/usr/share/qemu/vhost-user/50-govirtiofsd.json

clean:
	rm -rf $(BIN)

# Fuzz each target for FUZZTIME: FuzzServe (FUSE decoding), FuzzMessageDecode
# (vhost-user control messages into a Backend) and FuzzDescriptorChain
# (virtqueue chain walks). Their seed corpora under testdata/fuzz also run
# with every plain `go test`. Crashers land in the package's testdata/fuzz.
FUZZTIME ?= 60s
.PHONY: fuzz
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzServe$$' -fuzztime $(FUZZTIME) ./fuse
	$(GO) test -run '^$$' -fuzz '^FuzzMessageDecode$$' -fuzztime $(FUZZTIME) ./vhostuser
	$(GO) test -run '^$$' -fuzz '^FuzzDescriptorChain$$' -fuzztime $(FUZZTIME) ./virtqueue

# Front-end benchmark (no guest): every vhostfs-bench workload against
# govirtiofsd and the reference virtiofsd, alternating for BENCH_ROUNDS
# rounds of BENCH_DURATION each, one request queue each (plus ours with 4
# for getattr and read-4k); prints the median ops/s per workload and their
# ratio, writes results/bench.json and results/bench.png.
BENCH_ROUNDS   ?= 3
BENCH_DURATION ?= 3s
BENCH_DEPTH    ?= 16
BENCH_FLAGS    ?=
.PHONY: bench
bench: build lab
	$(BIN)/vhostfs-bench compare --rounds $(BENCH_ROUNDS) --duration $(BENCH_DURATION) \
		--depth $(BENCH_DEPTH) --out results $(BENCH_FLAGS)

# The test/conformance tests (one table, both daemons) against govirtiofsd and
# REFERENCE (default: the lab's virtiofsd 1.14.0, bin/virtiofsd-ref; its
# bin/virtiofsd-ref-1.13 is 1.13.2), with a pass/fail summary
# per daemon (the summary exits 1 on any failure). Tests document where the
# reference is deliberately not held to the same standard (it panics on
# some hostile input).
REFERENCE ?= $(or $(GOVIRTIOFSD_LAB),$(CURDIR)/.cache/lab)/bin/virtiofsd-ref
# The harness's ceiling: GETATTR against a trivial back-end must reach at
# least 3x the best daemon's rate (a timing test; run it on a quiet machine).
.PHONY: ceiling
ceiling: lab
	VHOSTFS_BENCH_CEILING=1 $(GO) test -count=1 -v -run '^TestHarnessCeiling$$' ./test/bench/workloads

.PHONY: conformance
conformance: $(if $(filter command line environment,$(origin REFERENCE)),,lab)
	GOVIRTIOFSD_REFERENCE=$(abspath $(REFERENCE)) \
		$(GO) test -count=1 -v -json ./test/conformance/ 2>&1 | \
		GOVIRTIOFSD_REFERENCE=$(abspath $(REFERENCE)) $(GO) run ./test/conformance/summary
