# hnboot. `make demo` and `make test` are the two commands the README starts with;
# each installs what is missing first (deps: scripts/deps.sh, a no-op in about 20 ms
# when everything is there).
ifndef GO
GO := $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
endif
# Tests that build with `go` find the same one.
ifneq ($(findstring /,$(GO)),)
export PATH := $(dir $(GO)):$(PATH)
endif
BIN       := bin
GOFLAGS_STATIC := CGO_ENABLED=0 GOAMD64=v1
KERNEL_DIR ?= $(or $(HNBOOT_KERNEL_DIR),$(or $(HNBOOT_CACHE),/var/cache/hnboot)/kernel)
# End-to-end tests boot QEMU under TCG: generous, and one package at a time.
TEST_TIMEOUT ?= 60m
# Each fuzz target's run in `make test`, counted in executions: a time limit can
# end a run while it minimizes a new input, which go test reports as a failure
# ("context deadline exceeded"). `make fuzz FUZZTIME=10m` for a real run.
FUZZTIME ?= 50000x
FUZZ_TARGETS := FuzzDHCPReply:./pxe FuzzCleanTFTPPath:./pxe FuzzHTTPPath:./pxe FuzzChunkIndex:./internal/chunkindex

# The Debian package's version (a native package: no Debian revision).
VERSION ?= 0.1.0

.PHONY: all build deps test unit e2e demo demo-host deb bench fuzz clean

all: build

# All three binaries are static (no libc needed on a minimal or non-Debian
# image); internal/buildtest checks it.
build:
	@mkdir -p $(BIN)
	$(GOFLAGS_STATIC) $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/hninit ./initramfs
	$(GOFLAGS_STATIC) $(GO) build -trimpath -o $(BIN)/mkimage ./cmd/mkimage
	$(GOFLAGS_STATIC) $(GO) build -trimpath -o $(BIN)/imaged ./cmd/imaged

# The Debian packages and test kernels the tests, the demo and the benchmarks
# need; installs only what is missing.
deps:
	scripts/deps.sh

# Everything: vet, unit tests, the QEMU end-to-end tests, a short fuzz run.
test: deps build
	$(GO) vet ./...
	$(GO) test -count=1 -p 1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) fuzz

# The DHCP handler, TFTP file names and HTTP paths (seeds in pxe/testdata), and
# the chunk index of delta updates (a hostile index): each NAME:PACKAGE.
fuzz:
	@for tp in $(FUZZ_TARGETS); do \
	  t=$${tp%%:*}; p=$${tp#*:}; \
	  echo "fuzz $$t ($$p) for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$p || exit 1; \
	done

unit:
	$(GO) test -count=1 -short $$($(GO) list ./... | grep -v /testvm)

e2e: deps build
	$(GO) test -count=1 -v -timeout $(TEST_TIMEOUT) ./testvm/

# The fleet: imaged serve in a network namespace, two QEMU hosts PXE-boot
# from it, an update rolls out, the big red button reverts them; the
# dashboard's screenshots go to out/demo/.
demo: deps build
	$(GO) run ./testvm/fleetdemo

# One host's disk: first boot, an update and a revert.
demo-host: deps build
	$(GO) run ./testvm/demo

# hnboot_$(VERSION)_amd64.deb in the current directory (scripts/mkdeb.sh:
# dpkg-deb, man pages from the binaries' --help, lintian-clean).
deb: build
	GO=$(GO) scripts/mkdeb.sh $(VERSION) $(BIN) .

# Speed tables, each side by side with the reference tool.
bench: deps build
	$(GO) run ./testvm/bench
	$(GO) run ./testvm/benchrootfs
	$(GO) run ./testvm/benchpxe
	$(GO) run ./testvm/benchfleet
	$(GO) run ./testvm/benchbuild
	$(GO) run ./testvm/benchrollout
	$(GO) run ./testvm/benchui
	$(GO) run ./testvm/benchdelta

clean:
	rm -rf $(BIN) out hnboot_*.deb
