#!/usr/bin/env bash
# Load-tests the origin against the real Redis and NATS: builds bin/origin and the load
# generator, starts the origin under fresh stream and key prefixes, runs
#   1. 10k events/s for 20 s (the performance goal's load),
#   2. a ramp of rates to find the highest rate the origin sustains (nothing rejected, backlog
#      drained, HTTP p99 and ingest→profile p99 both ≤ P99_MS),
#   3. redis-benchmark (SET/GET, and an EVALSHA shaped like the profile update, one request in
#      flight per connection as the engine's partition workers do, and pipelined) for comparison,
# prints a table, and removes its streams and keys. Numbers on a shared 2-core machine move with
# whatever else runs: the load average is printed next to each step.
#
# A ramp step that fails is tried once more, and the ramp stops after two failing rates in a row.
# Settings (environment): NATS_URL, REDIS_URL (default: the local servers), ORIGIN_ADDR,
# SEGEDGE_PARTITIONS (origin default 8), ORIGIN_RULES_FILE (passed as -rules-file once the origin
# has it; deltas, and so ingest→delta on DELTAS, only flow with a ruleset), GOAL_RATE (10000),
# GOAL_DURATION (20s), RAMP_RATES ("2000 4000 6000 8000 10000 12000 15000"), STEP_DURATION (8s),
# P99_MS (50), BATCH (50), USERS (10000), CONCURRENCY (16), SKIP_GOAL=1, SKIP_RAMP=1, SKIP_REDIS=1.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${NATS_URL:=nats://127.0.0.1:4222}"
: "${REDIS_URL:=redis://127.0.0.1:6379/0}"
: "${ORIGIN_ADDR:=127.0.0.1:17170}"
: "${GOAL_RATE:=10000}"
: "${GOAL_DURATION:=20s}"
: "${RAMP_RATES:=2000 4000 6000 8000 10000 12000 15000}"
: "${STEP_DURATION:=8s}"
: "${P99_MS:=50}"
: "${BATCH:=50}"
: "${USERS:=10000}"
: "${CONCURRENCY:=16}"
PREFIX="bench$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')_"
WRITE_KEY="bench-write-$PREFIX"
work="$(mktemp -d)"

# host, port and db of REDIS_URL (redis://[user:pass@]host:port[/db])
redis_hostport="${REDIS_URL#*://}"; redis_hostport="${redis_hostport##*@}"; redis_hostport="${redis_hostport%%/*}"
REDIS_HOST="${redis_hostport%%:*}"; REDIS_PORT="${redis_hostport##*:}"
REDIS_DB="${REDIS_URL##*/}"; [[ "$REDIS_DB" =~ ^[0-9]+$ ]] || REDIS_DB=0
rcli() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" "$@"; }

origin_pid=""
cleanup() {
  trap - INT TERM EXIT
  if [[ -n "$origin_pid" ]]; then kill -TERM "$origin_pid" 2>/dev/null || true; wait "$origin_pid" 2>/dev/null || true; fi
  "$work/loadgen" -cleanup -nats-url "$NATS_URL" -nats-prefix "$PREFIX" >/dev/null 2>&1 || true
  rcli --scan --pattern "*${PREFIX}*" | xargs -r -n 500 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" del >/dev/null || true
  rm -rf "$work"
}
trap cleanup INT TERM EXIT

echo "== build"
mkdir -p bin
go build -o bin/origin ./origin
go build -o "$work/loadgen" ./scripts/loadgen

echo "== start origin on $ORIGIN_ADDR (NATS $NATS_URL, Redis $REDIS_URL, prefix $PREFIX)"
origin_args=()
if [[ -n "${ORIGIN_RULES_FILE:-}" ]]; then origin_args+=(-rules-file "$ORIGIN_RULES_FILE"); fi
ORIGIN_ADDR="$ORIGIN_ADDR" NATS_URL="$NATS_URL" REDIS_URL="$REDIS_URL" \
  SEGEDGE_NATS_PREFIX="$PREFIX" SEGEDGE_REDIS_PREFIX="$PREFIX" SEGEDGE_WRITE_KEY="$WRITE_KEY" \
  SEGEDGE_ADMIN_TOKEN="bench-admin-$PREFIX" SEGEDGE_DATA_DIR="$work/data" LOG_LEVEL=warn \
  bin/origin "${origin_args[@]}" 2>"$work/origin.log" &
origin_pid=$!
for _ in $(seq 100); do
  if curl -fsS "http://$ORIGIN_ADDR/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$origin_pid" 2>/dev/null; then echo "origin exited:"; cat "$work/origin.log"; exit 1; fi
  sleep 0.1
done
curl -fsS "http://$ORIGIN_ADDR/readyz" >/dev/null

# step RATE DURATION KIND: runs loadgen once, prints its report, leaves its JSON summary in $last and
# appends "load<TAB>json" to the results.
results="$work/results.tsv"
: >"$results"
last=""
# CPU ticks (user+system) a local process has used; 0 when not visible.
ticks() { [[ -n "$1" && -r "/proc/$1/stat" ]] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }
nats_pid="$(pgrep -x nats-server | head -n1 || true)"
redis_pid="$(pgrep -x redis-server | head -n1 || true)"
hz="$(getconf CLK_TCK)"
step() {
  local load out kind="$3" n0 r0 n1 r1 acc
  load="$(cut -d' ' -f1 /proc/loadavg)"
  n0="$(ticks "$nats_pid")"; r0="$(ticks "$redis_pid")"
  out="$("$work/loadgen" -origin "http://$ORIGIN_ADDR" -write-key "$WRITE_KEY" -rate "$1" -duration "$2" \
    -users "$USERS" -batch "$BATCH" -concurrency "$CONCURRENCY" -nats-url "$NATS_URL" -nats-prefix "$PREFIX" \
    -drain 30s -json)"
  echo "$out" | sed '$d' | sed 's/^/  /'
  last="$(echo "$out" | tail -n1)"
  n1="$(ticks "$nats_pid")"; r1="$(ticks "$redis_pid")"
  acc="$(echo "$last" | jq .accepted)"
  if [[ "$acc" -gt 0 ]]; then
    # The servers are shared: this includes whatever other clients made them do meanwhile.
    echo "  nats-server CPU $(( (n1 - n0) * 1000000 / hz / acc ))µs, redis-server CPU $(( (r1 - r0) * 1000000 / hz / acc ))µs per accepted event (shared servers: includes other clients)"
  fi
  printf '%s\t%s\t%s\n' "$kind" "$load" "$last" >>"$results"
}

fmt_ms() { jq -r --arg k "$1" 'if .[$k] < 0 then "-" else (.[$k]*100|round/100|tostring) end'; }

if [[ -z "${SKIP_GOAL:-}" ]]; then
  echo "== goal load: $GOAL_RATE events/s for $GOAL_DURATION"
  step "$GOAL_RATE" "$GOAL_DURATION" goal
fi

max_e2e=0; max_ingest=0
if [[ -z "${SKIP_RAMP:-}" ]]; then
  echo "== ramp: ${RAMP_RATES} events/s, $STEP_DURATION each; sustained = nothing rejected, backlog drained,"
  echo "   HTTP p99 and ingest→profile p99 ≤ ${P99_MS}ms"
  fails=0
  for rate in $RAMP_RATES; do
    ok=false
    # A step that fails is tried once more: on a shared machine a neighbour's burst can stall a step.
    for attempt in 1 2; do
      echo "-- $rate events/s (attempt $attempt)"
      step "$rate" "$STEP_DURATION" ramp
      j="$last"
      ok_ingest="$(echo "$j" | jq --argjson p "$P99_MS" '.rejected == 0 and .http_p99_ms <= $p')"
      ok_e2e="$(echo "$j" | jq --argjson p "$P99_MS" '.rejected == 0 and .drained and .http_p99_ms <= $p and .profile_p99_ms >= 0 and .profile_p99_ms <= $p and (.profile_p99_over|not)')"
      acc="$(echo "$j" | jq '.accepted_per_s|round')"
      if [[ "$ok_ingest" == true && "$acc" -gt "$max_ingest" ]]; then max_ingest="$acc"; fi
      if [[ "$ok_e2e" == true ]]; then
        ok=true
        if [[ "$acc" -gt "$max_e2e" ]]; then max_e2e="$acc"; fi
        break
      fi
    done
    if [[ "$ok" == true ]]; then fails=0; else fails=$((fails + 1)); fi
    # Two failing rates in a row: higher rates will not do better.
    if [[ $fails -ge 2 ]]; then break; fi
  done
fi

echo
echo "== origin results (prefix $PREFIX, partitions ${SEGEDGE_PARTITIONS:-8}, batch $BATCH, $USERS users)"
printf '%-5s %-7s %-6s %-10s %-9s %-9s %-9s %-11s %-11s %-11s %-9s %-7s %-9s %-9s\n' \
  step target load accepted/s rejected http_p50 http_p99 profile_p50 profile_p99 delta_p99 drained drain_s cpu_us/ev applied/s
while IFS=$'\t' read -r kind load j; do
  over="$(echo "$j" | jq -r 'if .profile_p99_over then ">" else "" end')"
  printf '%-5s %-7s %-6s %-10s %-9s %-9s %-9s %-11s %-11s %-11s %-9s %-7s %-9s %-9s\n' \
    "$kind" "$(echo "$j" | jq .target_rate)" "$load" "$(echo "$j" | jq '.accepted_per_s|round')" "$(echo "$j" | jq .rejected)" \
    "$(echo "$j" | fmt_ms http_p50_ms)" "$(echo "$j" | fmt_ms http_p99_ms)" \
    "$(echo "$j" | fmt_ms profile_p50_ms)" "$over$(echo "$j" | fmt_ms profile_p99_ms)" \
    "$(echo "$j" | fmt_ms delta_p99_ms)" "$(echo "$j" | jq .drained)" "$(echo "$j" | jq '.drain_s*10|round/10')" \
    "$(echo "$j" | jq '.origin_cpu_us_per_event*10|round/10')" "$(echo "$j" | jq '.applied_per_s|round')"
done <"$results"
echo "(ms; profile = ingest→profile from the origin's histogram, bucket-interpolated, '>' = above the top bucket;"
echo " delta = ingest→delta on DELTAS, '-' when no deltas flowed (no active ruleset);"
echo " cpu_us/ev = the origin's CPU per accepted event, from its process_cpu_seconds_total;"
echo " applied/s = events the origin applied per second over run and drain: its ceiling when a backlog formed)"
if [[ -z "${SKIP_RAMP:-}" ]]; then
  echo "max sustained, end to end (ingest→profile p99 ≤ ${P99_MS}ms): ${max_e2e} events/s"
  echo "max sustained, ingest only (HTTP p99 ≤ ${P99_MS}ms, nothing rejected): ${max_ingest} events/s"
fi

if [[ -z "${SKIP_REDIS:-}" ]] && command -v redis-benchmark >/dev/null; then
  echo
  echo "== redis-benchmark against $REDIS_HOST:$REDIS_PORT db $REDIS_DB (load $(cut -d' ' -f1 /proc/loadavg))"
  # the final line of a -q run, without the echoed command: "N requests per second, p50=… msec"
  rb() { redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" --dbnum "$REDIS_DB" -q "$@" 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -n 1 | sed 's/.*: \([0-9.]* requests per second\)/\1/'; }
  echo "SET/GET, 50 connections (redis-benchmark defaults):"
  redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" --dbnum "$REDIS_DB" -q -n 100000 -t set,get 2>/dev/null | tr '\r' '\n' | grep -E '^(SET|GET): [0-9.]+ requests per second' | sed 's/^/  /'
  rcli del key:__rand_int__ key:000000000000 >/dev/null
  # A profile update's shape: dedup set insert, a few hash increments, expiries, return the hash.
  sha="$(rcli script load "
    if redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1]) == 0 then return {0, redis.call('HGETALL', KEYS[1])} end
    redis.call('HINCRBY', KEYS[1], 'v', 1)
    redis.call('HINCRBY', KEYS[1], 'c:page_view:' .. math.floor(ARGV[2] / 60000), 1)
    redis.call('HSET', KEYS[1], 'u', ARGV[2], 'l:page_view', ARGV[2])
    redis.call('PEXPIRE', KEYS[1], 600000)
    redis.call('PEXPIRE', KEYS[2], 600000)
    return {1, redis.call('HGETALL', KEYS[1])}")"
  key="${PREFIX}{u:__rand_int__}"
  for shape in "-c 8 -P 1" "-c 8 -P 16" "-c 32 -P 1"; do
    # shellcheck disable=SC2086
    echo "  EVALSHA profile-update-shaped, $shape: $(rb -n 100000 -r 10000 $shape evalsha "$sha" 2 "$key:p" "$key:d" "ev:__rand_int__" 1700000000000)"
  done
  # shellcheck disable=SC2086
  echo "  GET (membership read), -c 8 -P 1: $(rb -n 100000 -r 10000 -c 8 get "$key:m")"
  rcli --scan --pattern "*${PREFIX}*" | xargs -r -n 500 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" del >/dev/null || true
  echo "(-c 8 -P 1 is the engine's shape: 8 partition workers, one Redis call in flight each)"
fi
