# segedge — see README.md. `make run` starts the whole thing on this machine; `make test` runs
# every test (what CI runs).
GO       ?= go
BIN      := bin
PROGRAMS := origin edge demosite

.PHONY: all build run test vet bench fuzz clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/origin ./origin
	$(GO) build -o $(BIN)/edge ./edge
	$(GO) build -o $(BIN)/demosite ./scripts/demosite

run: build
	@scripts/run.sh

vet:
	$(GO) vet ./...

test: vet
	$(GO) test -race -timeout 20m ./...

bench:
	@scripts/bench.sh

clean:
	rm -rf $(BIN)
