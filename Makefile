# segedge — see README.md. `make run` starts the whole thing on this machine; `make test` runs
# every test (what CI runs).
GO       ?= go
BIN      := bin
PROGRAMS := origin edge demosite

.PHONY: all build run test vet bench bench-edge bench-origin clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/origin ./origin
	$(GO) build -o $(BIN)/edge ./edge
	$(GO) build -o $(BIN)/demosite ./scripts/demosite
	GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -o $(BIN)/pathpromo.wasm ./wasm/examples/pathpromo

run: build
	@scripts/run.sh

vet:
	$(GO) vet ./...

test: vet
	# -count=1: the e2e tests build the programs themselves, which the test cache cannot see.
	$(GO) test -race -count=1 -timeout 20m ./...

bench:
	@scripts/bench.sh

# HTTP comparisons (install wrk, nginx and varnish from Debian when missing).
bench-edge: build
	scripts/bench-edge.sh

bench-origin: build
	scripts/bench-origin.sh

clean:
	rm -rf $(BIN)
