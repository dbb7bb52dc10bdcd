# hnboot. `make demo` and `make test` are the two commands the README starts with.
GO        ?= go
BIN       := bin
GOFLAGS_STATIC := CGO_ENABLED=0 GOAMD64=v1
KERNEL_DIR ?= $(or $(HNBOOT_KERNEL_DIR),$(or $(HNBOOT_CACHE),/var/cache/hnboot)/kernel)
# End-to-end tests boot QEMU under TCG: generous, and one package at a time.
TEST_TIMEOUT ?= 60m

.PHONY: all build deps test unit e2e demo bench clean

all: build

build:
	@mkdir -p $(BIN)
	$(GOFLAGS_STATIC) $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/hninit ./initramfs
	$(GO) build -trimpath -o $(BIN)/mkimage ./cmd/mkimage
	$(GO) build -trimpath -o $(BIN)/imaged ./cmd/imaged

deps:
	scripts/deps.sh

# Everything: vet, unit tests, then the QEMU end-to-end tests.
test: build
	$(GO) vet ./...
	$(GO) test -count=1 -p 1 -timeout $(TEST_TIMEOUT) ./...

unit:
	$(GO) test -count=1 -short $$($(GO) list ./... | grep -v /testvm)

e2e: build
	$(GO) test -count=1 -v -timeout $(TEST_TIMEOUT) ./testvm/

# Builds images, boots a host in QEMU, then shows an update and a revert.
demo: build
	$(GO) run ./testvm/demo

bench: build
	$(GO) run ./testvm/bench

clean:
	rm -rf $(BIN) out
