# segedge — see README.md. `make run` starts the whole thing on this machine; `make test` runs
# every test (what CI runs).
GO       ?= go
BIN      := bin
PROGRAMS := origin edge demosite

.PHONY: all build run test vet bench bench-edge bench-origin bench-rulesets bench-sse bench-all clean

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

bench-rulesets: build
	scripts/bench-rulesets.sh

bench-sse: build
	scripts/bench-sse.sh

# Every benchmark: the Go ones, then the HTTP and process scripts (each prints its table and
# appends it to docs/bench/).
bench-all: bench bench-edge bench-origin bench-rulesets bench-sse

clean:
	rm -rf $(BIN)
