#!/usr/bin/env bash
# Load-tests the origin against the real Redis and NATS: builds bin/origin (and, with BASELINE_REF,
# the origin of that git commit, for a before/after comparison in the same run) and the load
# generator, and for each origin build and each profile store (Redis, in-memory):
#   - starts the origin under fresh stream and key prefixes and uploads a ruleset (so deltas flow
#     and ingest→delta is measured on DELTAS, not only ingest→profile),
#   1. runs 10k events/s for 20 s (the performance goal's load),
#   2. a ramp of rates to find the highest rate the origin sustains (nothing rejected, backlog
#      drained, HTTP p99 and ingest→delta p99 — ingest→profile without deltas — ≤ P99_MS),
#   - stops it and removes its streams and keys,
# then 3. redis-benchmark (SET/GET, and an EVALSHA shaped like the profile update, one request in
# flight per connection and pipelined) for the store's own limit, and prints one table. Numbers on
# a shared 2-core machine move with whatever else runs: the load average is printed per step.
#
# A ramp step that fails is tried once more, and the ramp stops after two failing rates in a row.
# Settings (environment): NATS_URL, REDIS_URL (default: the local servers), ORIGIN_ADDR,
# SEGEDGE_PARTITIONS (origin default 8), BASELINE_REF (a git commit to compare with, e.g. the one
# before an engine change; empty: only the working tree), STORES ("redis memory"),
# ORIGIN_RULES_FILE (scripts/bench/rules.yaml; "none": no ruleset, no deltas), GOAL_RATE (10000),
# GOAL_DURATION (20s), RAMP_RATES ("5000 10000 15000 20000 30000 40000 50000"), STEP_DURATION
# (8s), P99_MS (50), BATCH (50), USERS (10000), CONCURRENCY (16), ROUNDS (1; more repeats the
# whole base/new sequence, interleaved, for the spread on a busy machine), SKIP_GOAL=1, SKIP_RAMP=1,
# SKIP_REDIS=1 (no redis-benchmark), SKIP_JSLAT=1 (no JetStream publish-wait step), LOADGEN_GOMAXPROCS (1: the load generator shares the box
# with everything it measures; with one P it costs ~25 % less CPU per event than with two),
# ORIGIN_GOMAXPROCS (empty: Go's default, the machine's cores or the container's CPU limit),
# NATS_GOGC (empty: use NATS_URL; a number: start a private nats-server, NATS_BIN, with JetStream
# in a temporary directory and that GOGC, and measure against it: nats-server's garbage
# collector is a visible part of the ingest wait's tail on this box, see docs/bench/origin.md),
# NATS_GOMAXPROCS (a number: start the private nats-server with that GOMAXPROCS; GOGC 100 unless
# NATS_GOGC says otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${NATS_URL:=nats://127.0.0.1:4222}"
: "${REDIS_URL:=redis://127.0.0.1:6379/0}"
: "${ORIGIN_ADDR:=127.0.0.1:17170}"
: "${GOAL_RATE:=10000}"
: "${GOAL_DURATION:=20s}"
: "${RAMP_RATES:=5000 10000 15000 20000 30000 40000 50000}"
: "${STEP_DURATION:=8s}"
: "${P99_MS:=50}"
: "${BATCH:=50}"
: "${USERS:=10000}"
: "${CONCURRENCY:=16}"
: "${STORES:=redis memory}"
: "${BASELINE_REF:=}"
: "${ROUNDS:=1}"
: "${ORIGIN_RULES_FILE:=scripts/bench/rules.yaml}"
: "${LOADGEN_GOMAXPROCS:=1}"
: "${ORIGIN_GOMAXPROCS:=}"
: "${NATS_GOGC:=}"
: "${NATS_GOMAXPROCS:=}"
: "${NATS_BIN:=$(command -v nats-server || echo /usr/sbin/nats-server)}"
work="$(mktemp -d)"

# host, port and db of REDIS_URL (redis://[user:pass@]host:port[/db])
redis_hostport="${REDIS_URL#*://}"; redis_hostport="${redis_hostport##*@}"; redis_hostport="${redis_hostport%%/*}"
REDIS_HOST="${redis_hostport%%:*}"; REDIS_PORT="${redis_hostport##*:}"
REDIS_DB="${REDIS_URL##*/}"; [[ "$REDIS_DB" =~ ^[0-9]+$ ]] || REDIS_DB=0
rcli() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" "$@"; }

origin_pid=""
PREFIX=""
# stop_origin stops the running origin and deletes its streams and keys.
stop_origin() {
  if [[ -n "$origin_pid" ]]; then kill -TERM "$origin_pid" 2>/dev/null || true; wait "$origin_pid" 2>/dev/null || true; fi
  origin_pid=""
  if [[ -n "$PREFIX" ]]; then
    "$work/loadgen" -cleanup -nats-url "$NATS_URL" -nats-prefix "$PREFIX" >/dev/null 2>&1 || true
    rcli --scan --pattern "*${PREFIX}*" | xargs -r -n 500 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" del >/dev/null || true
  fi
  PREFIX=""
}
private_nats_pid=""
cleanup() {
  trap - INT TERM EXIT
  stop_origin
  if [[ -n "$private_nats_pid" ]]; then kill -TERM "$private_nats_pid" 2>/dev/null || true; wait "$private_nats_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup INT TERM EXIT

if [[ -n "$NATS_GOGC$NATS_GOMAXPROCS" ]]; then
  port=$(( 20000 + RANDOM % 10000 ))
  mkdir -p "$work/nats"
  env GOGC="${NATS_GOGC:-100}" ${NATS_GOMAXPROCS:+GOMAXPROCS=$NATS_GOMAXPROCS} \
    "$NATS_BIN" -a 127.0.0.1 -p "$port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
  private_nats_pid=$!
  NATS_URL="nats://127.0.0.1:$port"
  for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  echo "== private nats-server $("$NATS_BIN" --version 2>&1 | head -n1) at $NATS_URL with GOGC=${NATS_GOGC:-100}${NATS_GOMAXPROCS:+ GOMAXPROCS=$NATS_GOMAXPROCS}"
fi

echo "== build"
mkdir -p bin
go build -o bin/origin ./origin
cp bin/origin "$work/origin-new"
go build -o "$work/loadgen" ./scripts/loadgen
go build -o "$work/jslat" ./scripts/jslat
variants="new"
if [[ -n "$BASELINE_REF" ]]; then
  base_rev="$(git rev-parse --short "$BASELINE_REF")"
  mkdir -p "$work/base-src"
  git archive "$BASELINE_REF" | tar -x -C "$work/base-src"
  (cd "$work/base-src" && go build -o "$work/origin-base" ./origin)
  variants="base new"
  echo "baseline: $BASELINE_REF ($base_rev); new: working tree at $(git rev-parse --short HEAD)"
fi

# start_origin VARIANT STORE: starts that origin build with that store under a fresh prefix and
# uploads the ruleset.
start_origin() {
  PREFIX="bench$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')_"
  WRITE_KEY="bench-write-$PREFIX"
  ADMIN="bench-admin-$PREFIX"
  local redis_url=""
  if [[ "$2" == redis ]]; then redis_url="$REDIS_URL"; fi
  echo "== start origin ($1, store $2) on $ORIGIN_ADDR (NATS $NATS_URL, prefix $PREFIX)"
  ORIGIN_ADDR="$ORIGIN_ADDR" NATS_URL="$NATS_URL" REDIS_URL="$redis_url" \
    SEGEDGE_NATS_PREFIX="$PREFIX" SEGEDGE_REDIS_PREFIX="$PREFIX" SEGEDGE_WRITE_KEY="$WRITE_KEY" \
    SEGEDGE_ADMIN_TOKEN="$ADMIN" SEGEDGE_DATA_DIR="$work/data-$PREFIX" LOG_LEVEL=warn \
    env ${ORIGIN_GOMAXPROCS:+GOMAXPROCS="$ORIGIN_GOMAXPROCS"} "$work/origin-$1" 2>"$work/origin-$PREFIX.log" &
  origin_pid=$!
  for _ in $(seq 100); do
    if curl -fsS "http://$ORIGIN_ADDR/readyz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$origin_pid" 2>/dev/null; then echo "origin exited:"; cat "$work/origin-$PREFIX.log"; exit 1; fi
    sleep 0.1
  done
  curl -fsS "http://$ORIGIN_ADDR/readyz" >/dev/null
  if [[ "$ORIGIN_RULES_FILE" != none ]]; then
    curl -fsS -X PUT -H "Authorization: Bearer $ADMIN" --data-binary "@$ORIGIN_RULES_FILE" \
      "http://$ORIGIN_ADDR/v1/rulesets" >/dev/null
    # the origin loads it from the ruleset store; /readyz says when it is active
    for _ in $(seq 100); do
      if curl -fsS "http://$ORIGIN_ADDR/readyz" >/dev/null 2>&1; then break; fi
      sleep 0.1
    done
  fi
}

# step RATE DURATION KIND VARIANT STORE: runs loadgen once, prints its report, leaves its JSON
# summary in $last and appends a line to the results.
results="$work/results.tsv"
: >"$results"
last=""
# CPU ticks (user+system) a local process has used; 0 when not visible.
ticks() { [[ -n "$1" && -r "/proc/$1/stat" ]] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }
nats_pid="${private_nats_pid:-$(pgrep -x nats-server | head -n1 || true)}"
redis_pid="$(pgrep -x redis-server | head -n1 || true)"
hz="$(getconf CLK_TCK)"
step() {
  local load out n0 r0 n1 r1 acc
  load="$(cut -d' ' -f1 /proc/loadavg)"
  n0="$(ticks "$nats_pid")"; r0="$(ticks "$redis_pid")"
  out="$(GOMAXPROCS="$LOADGEN_GOMAXPROCS" "$work/loadgen" -origin "http://$ORIGIN_ADDR" -write-key "$WRITE_KEY" -rate "$1" -duration "$2" \
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
  printf '%s\t%s\t%s\t%s\t%s\n' "$4" "$5" "$3" "$load" "$last" >>"$results"
}

fmt_ms() { jq -r --arg k "$1" 'if .[$k] < 0 then "-" else (.[$k]*100|round/100|tostring) end'; }

maxes=""
for round in $(seq "$ROUNDS"); do
for store in $STORES; do
  for variant in $variants; do
    start_origin "$variant" "$store"
    if [[ -z "${SKIP_GOAL:-}" ]]; then
      echo "-- goal load: $GOAL_RATE events/s for $GOAL_DURATION ($variant, $store)"
      step "$GOAL_RATE" "$GOAL_DURATION" goal "$variant" "$store"
    fi
    max_e2e=0; max_ingest=0
    if [[ -z "${SKIP_RAMP:-}" ]]; then
      echo "-- ramp ($variant, $store): ${RAMP_RATES} events/s, $STEP_DURATION each; sustained = nothing rejected,"
      echo "   backlog drained, HTTP p99 and ingest→delta p99 (ingest→profile without deltas) ≤ ${P99_MS}ms"
      fails=0
      for rate in $RAMP_RATES; do
        ok=false
        # A step that fails is tried once more: on a shared machine a neighbour's burst can stall a step.
        for attempt in 1 2; do
          echo "-- $rate events/s (attempt $attempt)"
          step "$rate" "$STEP_DURATION" ramp "$variant" "$store"
          j="$last"
          ok_ingest="$(echo "$j" | jq --argjson p "$P99_MS" '.rejected == 0 and .http_p99_ms <= $p')"
          ok_e2e="$(echo "$j" | jq --argjson p "$P99_MS" '.rejected == 0 and .drained and .http_p99_ms <= $p and
            (if .deltas > 0 then .delta_p99_ms >= 0 and .delta_p99_ms <= $p
             else .profile_p99_ms >= 0 and .profile_p99_ms <= $p and (.profile_p99_over|not) end)')"
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
      maxes+="$(printf '%-5s %-7s end to end %6s events/s, ingest only %6s events/s' "$variant" "$store" "$max_e2e" "$max_ingest")"$'\n'
    fi
    stop_origin
  done
done
done

echo
echo "== origin results (partitions ${SEGEDGE_PARTITIONS:-8}, batch $BATCH, $USERS users, loadgen GOMAXPROCS $LOADGEN_GOMAXPROCS, origin GOMAXPROCS ${ORIGIN_GOMAXPROCS:-default}, NATS $NATS_URL${NATS_GOGC:+ (private, GOGC $NATS_GOGC)}${NATS_GOMAXPROCS:+ (private, GOMAXPROCS $NATS_GOMAXPROCS)}, ruleset ${ORIGIN_RULES_FILE}${BASELINE_REF:+, base = $BASELINE_REF ($base_rev)})"
printf '%-5s %-7s %-5s %-7s %-6s %-10s %-8s %-8s %-8s %-11s %-11s %-9s %-9s %-9s %-7s %-9s %-9s %-9s %-7s\n' \
  build store step target load accepted/s rejected http_p50 http_p99 profile_p50 profile_p99 delta_p50 delta_p99 delta_p999 drain_s cpu_us/ev applied/s deltas/ev B/delta
while IFS=$'\t' read -r variant store kind load j; do
  over="$(echo "$j" | jq -r 'if .profile_p99_over then ">" else "" end')"
  drained="$(echo "$j" | jq -r 'if .drained then (.drain_s*10|round/10|tostring) else "no" end')"
  printf '%-5s %-7s %-5s %-7s %-6s %-10s %-8s %-8s %-8s %-11s %-11s %-9s %-9s %-9s %-7s %-9s %-9s %-9s %-7s\n' \
    "$variant" "$store" "$kind" "$(echo "$j" | jq .target_rate)" "$load" "$(echo "$j" | jq '.accepted_per_s|round')" "$(echo "$j" | jq .rejected)" \
    "$(echo "$j" | fmt_ms http_p50_ms)" "$(echo "$j" | fmt_ms http_p99_ms)" \
    "$(echo "$j" | fmt_ms profile_p50_ms)" "$over$(echo "$j" | fmt_ms profile_p99_ms)" \
    "$(echo "$j" | fmt_ms delta_p50_ms)" "$(echo "$j" | fmt_ms delta_p99_ms)" "$(echo "$j" | fmt_ms delta_p999_ms)" "$drained" \
    "$(echo "$j" | jq '.origin_cpu_us_per_event*10|round/10')" "$(echo "$j" | jq '.applied_per_s|round')" \
    "$(echo "$j" | jq 'if .accepted > 0 then (.deltas/.accepted*100|round/100) else 0 end')" "$(echo "$j" | jq '(.delta_bytes_per_delta // 0)|round')"
done <"$results"
echo "(ms; profile = ingest→profile from the origin's histogram, bucket-interpolated, '>' = above the top bucket;"
echo " delta = ingest→delta measured by loadgen on DELTAS (1 ms resolution), '-' when no deltas flowed;"
echo " deltas/ev = this run's deltas per accepted event; B/delta = DELTAS message bytes per delta they held;"
echo " drain_s = seconds after the last send until every accepted event was applied, 'no' = not within 30 s;"
echo " cpu_us/ev = the origin's CPU per accepted event, from its process_cpu_seconds_total;"
echo " applied/s = events the origin applied per second over run and drain: its ceiling when a backlog formed)"
if [[ -n "$maxes" ]]; then
  echo "max sustained (HTTP p99 and ingest→delta p99 ≤ ${P99_MS}ms, nothing rejected, drained):"
  printf '%s' "$maxes"
fi

if [[ -z "${SKIP_JSLAT:-}" ]]; then
  # JetStream's own wait, alone on the box: what every accepted event waits for before its 202
  # (the origin publishes one EVENTS message per partition a request touches, then waits for
  # every acknowledgement), in the goal load's shape: GOAL_RATE/BATCH requests a second, an
  # EVENTS message per partition of about BATCH/partitions events of ~200 bytes.
  parts="${SEGEDGE_PARTITIONS:-8}"
  echo
  echo "== JetStream publish wait alone (scripts/jslat; load $(cut -d' ' -f1 /proc/loadavg))"
  "$work/jslat" -nats-url "$NATS_URL" -rate $(( GOAL_RATE / BATCH )) -msgs "$parts" -size $(( (BATCH + parts - 1) / parts * 200 )) \
    -duration 10s -concurrency "$CONCURRENCY" | sed 's/^/  /'
fi

if [[ -z "${SKIP_REDIS:-}" ]] && command -v redis-benchmark >/dev/null; then
  echo
  echo "== redis-benchmark against $REDIS_HOST:$REDIS_PORT db $REDIS_DB (load $(cut -d' ' -f1 /proc/loadavg))"
  PREFIX="bench$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')_"
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
  for shape in "-c 8 -P 1" "-c 8 -P 16" "-c 8 -P 64"; do
    # shellcheck disable=SC2086
    echo "  EVALSHA profile-update-shaped, $shape: $(rb -n 100000 -r 10000 $shape evalsha "$sha" 2 "$key:p" "$key:d" "ev:__rand_int__" 1700000000000)"
  done
  # shellcheck disable=SC2086
  echo "  GET (membership read), -c 8 -P 1: $(rb -n 100000 -r 10000 -c 8 get "$key:m")"
  rcli --scan --pattern "*${PREFIX}*" | xargs -r -n 500 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" del >/dev/null || true
  PREFIX=""
  echo "(-c 8 -P 1 is the old engine's shape: 8 partition workers, one Redis call in flight each;"
  echo " -P 16/-P 64: 8 workers applying batches in one pipeline, as the engine does now)"
fi
