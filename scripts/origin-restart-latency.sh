#!/bin/bash
# usage: scripts/origin-restart-latency.sh ORIGIN_BINARY
# Starts an origin (embedded NATS, in-memory profiles), kills it with SIGKILL and starts it again on
# the same data dir; prints ms from start to ready and from ready to a new event being applied, both
# times. Compare two builds by running it for each, interleaved (the numbers are noisy):
#   go build -o /tmp/origin.new ./origin; (git archive OLD | tar -x -C /tmp/old && cd /tmp/old && go build -o /tmp/origin.old ./origin)
#   for b in old new old new; do scripts/origin-restart-latency.sh /tmp/origin.$b; done
set -u
B=$1; D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
export ORIGIN_ADDR=127.0.0.1:17070 SEGEDGE_NATS_EMBED_ADDR=127.0.0.1:14250 SEGEDGE_DATA_DIR=$D SEGEDGE_ADMIN_TOKEN=a SEGEDGE_WRITE_KEY=w LOG_LEVEL=warn; unset NATS_URL REDIS_URL
wr() { for i in $(seq 1000); do curl -sf localhost:17070/readyz >/dev/null && return; sleep 0.01; done; }
ap() { for i in $(seq 2000); do curl -sf -H 'Authorization: Bearer a' localhost:17070/v1/users/$1 >/dev/null && return; sleep 0.005; done; }
post() { curl -s -o /dev/null -H 'Authorization: Bearer w' -d "[{\"event_id\":\"$1\",\"user_id\":\"$2\",\"type\":\"page_view\"}]" localhost:17070/v1/events; }
t0=$(date +%s%N); $B 2>/dev/null & P=$!; wr; t1=$(date +%s%N); post e1 u1; ap u1; t2=$(date +%s%N)
echo "fresh:   ready $(( (t1-t0)/1000000 )) ms, first event applied $(( (t2-t1)/1000000 )) ms after ready"
for i in 2 3 4 5; do post e$i$i u$i; done; sleep 0.3; kill -9 $P; wait $P 2>/dev/null; sleep 0.2
t0=$(date +%s%N); $B 2>/dev/null & P=$!; wr; t1=$(date +%s%N); post e9 u9; ap u9; t2=$(date +%s%N)
echo "kill -9 + restart: ready $(( (t1-t0)/1000000 )) ms, event applied $(( (t2-t1)/1000000 )) ms after ready"
kill $P; wait $P 2>/dev/null
