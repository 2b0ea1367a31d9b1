# govirtiofsd: one target per thing a person wants to do.
GO      ?= go
BIN     := bin
LAB     := test/lab/fetch.sh
# Every test, including the real-guest ones under test/, with the lab fetched
# first. Override TESTFLAGS to narrow a run (e.g. TESTFLAGS='-run Smoke').
TESTFLAGS ?=

.PHONY: all build lab test vet demo guestbench install clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/govirtiofsd ./cmd/govirtiofsd

# Fetch QEMU, the guest kernel, busybox and the reference virtiofsd from
# Debian into .cache/lab (idempotent).
lab:
	bash $(LAB)

vet:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags guest ./test/posix/

test: build lab vet
	$(GO) test -count=1 -timeout 25m $(TESTFLAGS) ./...

# Boot a guest on a demo share and show its writes appearing on the host.
demo: build lab
	$(GO) run ./test/demo

# Real-guest benchmark against the reference virtiofsd, alternating
# (ROUNDS rounds, QUEUES request queues for ours).
ROUNDS ?= 2
QUEUES ?= 1
guestbench: build lab
	$(GO) run ./test/guestbench --rounds $(ROUNDS) --queues $(QUEUES)

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
