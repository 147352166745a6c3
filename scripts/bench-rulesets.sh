#!/usr/bin/env bash
# Ruleset push → live on every edge: starts an origin (embedded NATS) and two edges from bin/
# (make build), pushes N rulesets, and for each measures the time from the PUT (which compiles
# and tests the file) until both edges answer with the new Segedge-Ruleset. Prints p50 and max.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-30}"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
UP=$(port); O=$(port); NP=$(port); E1=$(port); E1O=$(port); E2=$(port); E2O=$(port)
bin/demosite -addr 127.0.0.1:$UP >"$tmp/up.log" 2>&1 & pids+=($!)
SEGEDGE_ADMIN_TOKEN=t SEGEDGE_DATA_DIR="$tmp/data" ORIGIN_ADDR=127.0.0.1:$O SEGEDGE_NATS_EMBED_ADDR=127.0.0.1:$NP bin/origin >"$tmp/o.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:$O/readyz && break; sleep 0.1; done
for pair in "$E1 $E1O" "$E2 $E2O"; do
  set -- $pair
  EDGE_ADDR=127.0.0.1:$1 EDGE_OPS_ADDR=127.0.0.1:$2 UPSTREAM_URL=http://127.0.0.1:$UP NATS_URL=nats://127.0.0.1:$NP \
    SEGEDGE_COOKIE_KEY=bench-cookie-key-0123456789abcdef0123456789 bin/edge >"$tmp/e$1.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:$2/readyz && break; sleep 0.1; done
done
lat=()
for n in $(seq 1 "$N"); do
  printf 'segments:\n  - name: s%d\n    rule: request.bucket >= 0\nslots:\n  - name: hero\n    variants:\n      - when: s%d\n        html: v%d\n' $n $n $n > "$tmp/r.yaml"
  t0=$(date +%s%N)
  curl -fs -o /dev/null -X PUT -H 'Authorization: Bearer t' --data-binary @"$tmp/r.yaml" http://127.0.0.1:$O/v1/rulesets
  for e in $E1 $E2; do
    until [ "$(curl -s -o /dev/null -D - http://127.0.0.1:$e/ | tr -d '\r' | sed -n 's/^Segedge-Ruleset: //Ip')" = "$n" ]; do sleep 0.002; done
  done
  lat+=($(( ($(date +%s%N) - t0) / 1000000 )))
done
sorted=($(printf '%s\n' "${lat[@]}" | sort -n))
echo "push → live on 2 edges over $N pushes: p50 ${sorted[$((N/2))]} ms, max ${sorted[$((N-1))]} ms (curl polling adds ~2-5 ms)"
