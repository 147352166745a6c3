#!/usr/bin/env bash
# Starts origin, edge and the demo site on localhost with the embedded defaults (embedded NATS,
# in-memory profiles), prints what to open, and stops all three on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${ORIGIN_ADDR:=127.0.0.1:7070}"
: "${EDGE_ADDR:=127.0.0.1:8080}"
: "${EDGE_OPS_ADDR:=127.0.0.1:8081}"
: "${DEMO_ADDR:=127.0.0.1:9090}"
: "${SEGEDGE_DATA_DIR:=.data}"
# Demo credentials: fine on localhost, replace them anywhere else.
: "${SEGEDGE_ADMIN_TOKEN:=demo-admin-token}"
: "${SEGEDGE_WRITE_KEY:=demo-write-key}"
: "${SEGEDGE_DEBUG_TOKEN:=demo-debug-token}"
: "${SEGEDGE_COOKIE_KEY:=demo-cookie-key-change-me-0123456789abcdef}"
: "${SEGEDGE_READ_KEY:=demo-read-key}"
export SEGEDGE_READ_KEY SEGEDGE_ORIGIN_TOKEN="$SEGEDGE_READ_KEY" ORIGIN_ADDR EDGE_ADDR EDGE_OPS_ADDR SEGEDGE_DATA_DIR SEGEDGE_ADMIN_TOKEN SEGEDGE_WRITE_KEY SEGEDGE_DEBUG_TOKEN SEGEDGE_COOKIE_KEY
export UPSTREAM_URL="http://$DEMO_ADDR" ORIGIN_URL="http://$ORIGIN_ADDR"

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped."
  exit 0
}
trap stop INT TERM EXIT

wait_ready() { # url name
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not become ready at $1" >&2
  return 1
}

bin/demosite -addr "$DEMO_ADDR" & pids+=($!)
bin/origin & pids+=($!)
wait_ready "http://$ORIGIN_ADDR/readyz" origin
bin/edge & pids+=($!)
wait_ready "http://$EDGE_OPS_ADDR/readyz" edge
if [ -f scripts/demo/rules.yaml ]; then
  curl -fsS -X PUT -H "Authorization: Bearer $SEGEDGE_ADMIN_TOKEN" --data-binary @scripts/demo/rules.yaml \
    "http://$ORIGIN_ADDR/v1/rulesets" >/dev/null && echo "demo ruleset uploaded" || echo "demo ruleset upload failed" >&2
fi

cat <<MSG

  segedge is running.

  Open the demo site through the edge:   http://$EDGE_ADDR/
  The same site without the edge:        http://$DEMO_ADDR/
  Origin API:                            http://$ORIGIN_ADDR/   (admin token: $SEGEDGE_ADMIN_TOKEN)
  Edge health and metrics (private):     http://$EDGE_OPS_ADDR/readyz  http://$EDGE_OPS_ADDR/metrics

  Try:
    curl -i http://$EDGE_ADDR/
    curl -i -X POST -H 'Authorization: Bearer $SEGEDGE_WRITE_KEY' \\
         -d '[{"event_id":"e1","user_id":"u1","type":"add_to_cart","props":{"amount":129}}]' \\
         http://$ORIGIN_ADDR/v1/events
    curl -s -H 'Authorization: Bearer $SEGEDGE_ADMIN_TOKEN' http://$ORIGIN_ADDR/v1/users/u1

  Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
echo "a process exited; stopping the others" >&2
