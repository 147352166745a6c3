#!/usr/bin/env bash
# 10,000 concurrent Server-Sent Events subscribers on one edge: memory per connection and the time
# from an event sent to the origin to the message at its visitor's subscriber (p50/p99).
# Builds origin, edge and scripts/ssebench, starts an origin (embedded NATS, in-memory profiles)
# with the demo ruleset and one edge, and runs ssebench against them. N, EVENTS, RATE override.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-10000}"
EVENTS="${EVENTS:-2000}"
RATE="${RATE:-200}"
# Each subscriber is a socket in ssebench and one in the edge: raise the open-files limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((N + 1000)) ]; then
  echo "open files limit $(ulimit -n) is too low for N=$N (hard limit $(ulimit -Hn))" >&2; exit 1
fi
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
go build -o "$tmp/" ./origin ./edge ./scripts/ssebench
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
O=$(port); NP=$(port); E=$(port); EO=$(port)
SEGEDGE_ADMIN_TOKEN=t SEGEDGE_WRITE_KEY=w SEGEDGE_DATA_DIR="$tmp/data" ORIGIN_ADDR=127.0.0.1:$O SEGEDGE_NATS_EMBED_ADDR=127.0.0.1:$NP \
  "$tmp/origin" >"$tmp/o.log" 2>&1 & pids+=($!)
for _ in $(seq 200); do curl -fs -o /dev/null http://127.0.0.1:$O/readyz && break; sleep 0.1; done
curl -fs -o /dev/null -X PUT -H 'Authorization: Bearer t' --data-binary @scripts/demo/rules.yaml http://127.0.0.1:$O/v1/rulesets
EDGE_ADDR=127.0.0.1:$E EDGE_OPS_ADDR=127.0.0.1:$EO UPSTREAM_URL=http://127.0.0.1:9 NATS_URL=nats://127.0.0.1:$NP \
  SEGEDGE_COOKIE_KEY=bench-cookie-key-0123456789abcdef0123456789 SEGEDGE_STREAM_MAX=$((N + 1000)) LOG_LEVEL=warn \
  "$tmp/edge" >"$tmp/e.log" 2>&1 & pids+=($!)
edge_pid=$!
for _ in $(seq 200); do curl -fs -o /dev/null http://127.0.0.1:$EO/readyz && break; sleep 0.1; done
until curl -fs http://127.0.0.1:$O/metrics | grep -q '^segedge_origin_ruleset_version 1'; do sleep 0.1; done
echo "commit $(git rev-parse --short HEAD 2>/dev/null), $(nproc) cores, N=$N EVENTS=$EVENTS RATE=$RATE/s, load average $(cut -d" " -f1-3 /proc/loadavg)"
"$tmp/ssebench" -edge http://127.0.0.1:$E -edge-ops http://127.0.0.1:$EO -origin http://127.0.0.1:$O -write-key w \
  -edge-pid "$edge_pid" -n "$N" -events "$EVENTS" -rate "$RATE" || { tail -20 "$tmp/e.log" "$tmp/o.log"; exit 1; }
