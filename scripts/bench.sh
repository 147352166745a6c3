#!/usr/bin/env bash
# Runs the Go benchmarks that carry the performance goals (numbers go to BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${COUNT:-5}"
go test -run '^$' -bench . -benchmem -count "$COUNT" ./... | tee "${BENCH_OUT:-/tmp/segedge-bench.txt}"
