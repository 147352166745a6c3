#!/usr/bin/env bash
# Edge throughput benchmark (issue 6): the segedge edge serving personalized pages, against nginx
# proxy_cache serving the same page unpersonalized and Varnish assembling it with one ESI include,
# one after another in one run, same wrk parameters, loopback only, caches warmed first.
#
#   (a) segedge: bin/origin (embedded NATS, in-memory profiles) + bin/edge in front of the upstream,
#       with scripts/bench/rules.yaml uploaded; wrk rotates COOKIES valid segedge_uid cookies that
#       the edge itself issued.
#   (b) nginx proxy_cache (proxy_cache_valid 200 1h, proxy_cache_lock on) on /.
#   (c) varnishd with ESI on /esi.html (the hero slot is <esi:include src="/fragments/hero.html"/>).
#
# wrk sends the same cookie-rotating requests to all three (nginx's cache key ignores cookies; the
# VCL drops them, as a site would for a public page). Prints a table and appends it, with the date
# and the command, to docs/bench/edge.md. Everything started is stopped on exit, also on failure.
#
# Settings (environment): DURATION (20s), THREADS (2), CONNECTIONS (64), COOKIES (100),
# CORPUS (/work/shared/corpus/pages/cloudflare.com.html; missing: generated page), PAGE_BYTES
# (51200), WARMUP (3s), SKIP_BUILD=1 (use bin/ as is), NO_DOC=1 (do not append to the doc),
# PROFILE=1 (during the segedge run, 10 s of system-wide perf samples: CPU per process and bin/edge's
# hottest symbols, printed and kept in /tmp/segedge-bench-edge-perf.txt; perf costs a little, so
# profiled runs are for reading, not for the record: combine with NO_DOC=1).
# The "reached upstream" column counts the upstream's requests during each measured run: 0 means
# the proxy served from its cache; about as many as wrk's requests means it forwarded each one.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DURATION:=20s}"
: "${THREADS:=2}"
: "${CONNECTIONS:=64}"
: "${COOKIES:=100}"
: "${CORPUS:=/work/shared/corpus/pages/cloudflare.com.html}"
: "${PAGE_BYTES:=51200}"
: "${WARMUP:=3s}"
cmdline="$0${*:+ $*}"
load=$(cut -d' ' -f1-3 /proc/loadavg) # before anything of ours runs: others share these cores
for v in DURATION THREADS CONNECTIONS COOKIES PAGE_BYTES WARMUP SKIP_BUILD NO_DOC PROFILE; do
  if [[ -n "${!v:-}" ]] && env | grep -q "^$v="; then cmdline="$v=${!v} $cmdline"; fi
done

work="$(mktemp -d /tmp/segedge-bench-edge.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
  local rc=$?
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    echo "bench-edge: failed (exit $rc); logs:" >&2
    for f in "$work"/*.log; do [[ -f "$f" ]] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup INT TERM EXIT

need() { # command package...
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "== installing ${*:2} (missing $1)"
  apt-get install -y "${@:2}" >"$work/apt.log" 2>&1 || { apt-get update >>"$work/apt.log" 2>&1 && apt-get install -y "${@:2}" >>"$work/apt.log" 2>&1; }
  command -v "$1" >/dev/null 2>&1 || { echo "cannot install $1 (see apt output above)" >&2; cat "$work/apt.log" >&2; exit 1; }
}
need wrk wrk
need nginx nginx-light
need varnishd varnish
need curl curl
PATH="$PATH:/usr/sbin"

# A port nothing listens on (bash's /dev/tcp connect fails), not handed out before in this run.
used_ports=" "
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 20000))
    [[ "$used_ports" == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then used_ports+="$p "; echo "$p"; return 0; fi
  done
  echo "no free port found" >&2; return 1
}
wait_http() { # url name [seconds]
  local n=$(( ${3:-15} * 10 ))
  for _ in $(seq 1 "$n"); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not answer at $1" >&2; return 1
}

if [[ -z "${SKIP_BUILD:-}" ]]; then
  echo "== build"
  make build >/dev/null
fi
go build -o "$work/upstream" ./scripts/bench/upstream

UP_PORT=$(free_port); ORIGIN_PORT=$(free_port); NATS_PORT=$(free_port)
EDGE_PORT=$(free_port); EDGE_OPS_PORT=$(free_port); NGINX_PORT=$(free_port); VARNISH_PORT=$(free_port)

echo "== upstream on 127.0.0.1:$UP_PORT"
corpus_arg=()
[[ -r "$CORPUS" ]] && corpus_arg=(-corpus "$CORPUS")
"$work/upstream" -addr "127.0.0.1:$UP_PORT" -size "$PAGE_BYTES" "${corpus_arg[@]}" >"$work/upstream.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$UP_PORT/" upstream
page_bytes=$(curl -fsS "http://127.0.0.1:$UP_PORT/" | wc -c)
echo "   page $page_bytes bytes ($( [[ ${#corpus_arg[@]} -gt 0 ]] && echo "from $CORPUS" || echo generated))"

# wrk script: every request carries one of the cookies in $1 (one per line), in rotation; wrk's
# summary line counts non-2xx/3xx answers, which the table reports as errors.
cat >"$work/cookies.lua" <<'LUA'
local cookies = {}
local i = 0
init = function(args)
  local f = io.open(args[1], "r")
  if f then
    for line in f:lines() do if #line > 0 then cookies[#cookies + 1] = line end end
    f:close()
  end
  i = math.random(0, 1000)
end
request = function()
  i = i + 1
  if #cookies == 0 then return wrk.format("GET", wrk.path) end
  return wrk.format("GET", wrk.path, { ["Cookie"] = "segedge_uid=" .. cookies[(i % #cookies) + 1] })
end
LUA

upstream_count() { curl -fsS "http://127.0.0.1:$UP_PORT/_bench/requests"; }

results=()
run_wrk() { # name url
  local name=$1 url=$2 out="$work/wrk-$1.txt"
  echo "== $name: warm-up $WARMUP, then wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency $url"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$work/cookies.lua" "$url" -- "$work/cookies.txt" >/dev/null
  local before after
  before=$(upstream_count)
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/cookies.lua" "$url" -- "$work/cookies.txt" | tee "$out"
  after=$(upstream_count)
  local rps p99 errs
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  errs=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out"); errs=${errs:-0}
  local sockerr; sockerr=$(awk -F'[ ,]+' '/Socket errors:/ {print $4+$6+$8+$10}' "$out"); sockerr=${sockerr:-0}
  local total; total=$(awk '$2 == "requests" && $3 == "in" {print $1}' "$out")
  results+=("$name|$rps|$p99|$((errs + sockerr))|$((after - before)) of ${total:-?}")
}
# p99 as microseconds ("1.23ms" → 1230)
to_us() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'; }

# ---------------------------------------------------------------- (a) segedge
echo "== segedge: origin on 127.0.0.1:$ORIGIN_PORT (embedded NATS :$NATS_PORT), edge on 127.0.0.1:$EDGE_PORT"
admin="bench-admin-$RANDOM$RANDOM"
cookie_key="bench-cookie-key-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
ORIGIN_ADDR="127.0.0.1:$ORIGIN_PORT" SEGEDGE_NATS_EMBED_ADDR="127.0.0.1:$NATS_PORT" SEGEDGE_DATA_DIR="$work/data" \
  SEGEDGE_ADMIN_TOKEN="$admin" SEGEDGE_READ_KEY="bench-read-$admin" LOG_LEVEL=warn NATS_URL= REDIS_URL= \
  bin/origin >"$work/origin.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$ORIGIN_PORT/readyz" origin 30
EDGE_ADDR="127.0.0.1:$EDGE_PORT" EDGE_OPS_ADDR="127.0.0.1:$EDGE_OPS_PORT" UPSTREAM_URL="http://127.0.0.1:$UP_PORT" \
  ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT" SEGEDGE_ORIGIN_TOKEN="bench-read-$admin" NATS_URL="nats://127.0.0.1:$NATS_PORT" \
  SEGEDGE_COOKIE_KEY="$cookie_key" LOG_LEVEL=warn \
  bin/edge >"$work/edge.log" 2>&1 & pids+=($!)
edge_pid=$!
wait_http "http://127.0.0.1:$EDGE_OPS_PORT/readyz" edge 30

ruleset="not uploaded"
if code=$(curl -sS -o "$work/ruleset.out" -w '%{http_code}' -X PUT -H "Authorization: Bearer $admin" \
    -H 'Content-Type: application/yaml' --data-binary @scripts/bench/rules.yaml "http://127.0.0.1:$ORIGIN_PORT/v1/rulesets") \
    && [[ "$code" =~ ^2 ]]; then
  version=$(sed -n 's/.*"version": *\([0-9][0-9]*\).*/\1/p' "$work/ruleset.out" | head -n1)
  ruleset="v${version:-?} uploaded, the edge did not report it within 10 s"
  # The edge swaps rulesets asynchronously: wait (bounded) until its responses carry the new version.
  for _ in $(seq 1 100); do
    got=$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$EDGE_PORT/" 2>/dev/null | tr -d '\r' | awk -F': *' 'tolower($1)=="segedge-ruleset" {print $2}' || true)
    if [[ -n "$got" && ( -z "$version" || "$got" == *"$version"* ) ]]; then ruleset="v${version:-$got} live on the edge"; break; fi
    sleep 0.1
  done
else
  echo "   ruleset upload answered ${code:-nothing}: $(head -c 300 "$work/ruleset.out" 2>/dev/null)" >&2
  ruleset="upload failed (HTTP ${code:-none})"
fi
echo "   ruleset: $ruleset"

echo "   collecting $COOKIES cookies the edge issues"
: >"$work/cookies.txt"
for _ in $(seq 1 "$COOKIES"); do
  curl -fsS -D - -o /dev/null --max-time 5 "http://127.0.0.1:$EDGE_PORT/" \
    | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: *segedge_uid=\([^;]*\).*/\1/p' >>"$work/cookies.txt"
done
ncookies=$(sort -u "$work/cookies.txt" | wc -l)
echo "   got $ncookies distinct cookies"
[[ "$ncookies" -gt 0 ]] || { echo "the edge issued no segedge_uid cookie" >&2; exit 1; }

# What the edge does with a page today, stated in the table rather than assumed.
c1=$(sed -n 1p "$work/cookies.txt")
curl -fsS -D "$work/edge-h.txt" -o "$work/edge-body.html" -H "Cookie: segedge_uid=$c1" "http://127.0.0.1:$EDGE_PORT/"
curl -fsS -o "$work/up-body.html" "http://127.0.0.1:$UP_PORT/"
variants=$(while read -r c; do curl -fsS -H "Cookie: segedge_uid=$c" "http://127.0.0.1:$EDGE_PORT/" | sha256sum; done <"$work/cookies.txt" | sort -u | wc -l)
if cmp -s "$work/edge-body.html" "$work/up-body.html" && [[ "$variants" -eq 1 ]]; then
  edge_mode="proxied, not personalized (every visitor got the upstream's bytes)"
else
  edge_mode="personalized: $variants distinct bodies over $ncookies visitors"
fi
edge_cache=$(curl -fsS -D - -o /dev/null -H "Cookie: segedge_uid=$c1" "http://127.0.0.1:$EDGE_PORT/" | tr -d '\r' | awk -F': ' 'tolower($1)=="segedge-cache" {print $2}' || true)
edge_mode+="; cache: ${edge_cache:-none}"
echo "   edge: $edge_mode"

if [[ -n "${PROFILE:-}" ]] && command -v perf >/dev/null; then
  # System-wide, so the table of CPU per process shows where the 2 cores went (edge, upstream, wrk).
  ( sleep 5; perf record -F 499 -a -g -o "$work/perf.data" -- sleep 10 >/dev/null 2>&1 || true ) &
  perf_pid=$!
fi
run_wrk segedge "http://127.0.0.1:$EDGE_PORT/"
if [[ -n "${perf_pid:-}" ]]; then
  wait "$perf_pid" || true
  {
    echo "-- CPU samples by process (10 s inside the segedge run)"
    perf report -i "$work/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep '%' | grep -v '^#' | head -8
    echo "-- bin/edge: top symbols"
    perf report -i "$work/perf.data" --no-children --comm edge --sort dso,symbol --stdio -g none 2>/dev/null | grep '%' | grep -v '^#' | head -30
    echo "-- bin/edge: top callers (Go functions, children included)"
    perf report -i "$work/perf.data" --children --comm edge --sort symbol --stdio -g none 2>/dev/null | grep '%' | grep -v '^#' | grep -E 'segedge|fasthttp|net\.|syscall' | head -25
  } >"$work/perf.txt" || true
  echo "== perf"; cat "$work/perf.txt"
  cp "$work/perf.txt" /tmp/segedge-bench-edge-perf.txt
fi
# The edge is stopped before the next contender so that it does not hold memory or CPU.
kill -TERM "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
wait "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true

# ---------------------------------------------------------------- (b) nginx proxy_cache
echo "== nginx on 127.0.0.1:$NGINX_PORT"
mkdir -p "$work/nginx/cache" "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<NGINX
user root;
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  proxy_cache_path $work/nginx/cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=1h use_temp_path=off;
  upstream site { server 127.0.0.1:$UP_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://site;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_valid 200 1h;
      proxy_cache_lock on;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
NGINX
nginx -t -c "$work/nginx/nginx.conf" -p "$work/nginx" >"$work/nginx-test.log" 2>&1 || { cat "$work/nginx-test.log" >&2; exit 1; }
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" >>"$work/nginx.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$NGINX_PORT/" nginx
curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT/"
nginx_cache=$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$NGINX_PORT/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache" {print $2}' || true)
echo "   cache: ${nginx_cache:-?} on the second request"
run_wrk nginx "http://127.0.0.1:$NGINX_PORT/"
kill -TERM "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true

# ---------------------------------------------------------------- (c) Varnish ESI
echo "== varnish on 127.0.0.1:$VARNISH_PORT"
cat >"$work/bench.vcl" <<VCL
vcl 4.1;
backend site { .host = "127.0.0.1"; .port = "$UP_PORT"; }
sub vcl_recv {
  # A public page: the visitor's cookie does not change it, so it must not bypass the cache.
  unset req.http.Cookie;
}
sub vcl_backend_response {
  if (bereq.url == "/esi.html") { set beresp.do_esi = true; }
  set beresp.ttl = 1h;
}
sub vcl_deliver {
  if (obj.hits > 0) { set resp.http.X-Cache = "HIT"; } else { set resp.http.X-Cache = "MISS"; }
}
VCL
mkdir -p "$work/varnish"
varnishd -F -a "127.0.0.1:$VARNISH_PORT" -f "$work/bench.vcl" -s malloc,256m -n "$work/varnish" \
  -T 127.0.0.1:0 >"$work/varnish.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$VARNISH_PORT/esi.html" varnish 30
curl -fsS -o "$work/varnish-body.html" "http://127.0.0.1:$VARNISH_PORT/esi.html"
grep -q 'Welcome back' "$work/varnish-body.html" || { echo "varnish did not assemble the ESI include" >&2; exit 1; }
varnish_cache=$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$VARNISH_PORT/esi.html" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache" {print $2}' || true)
echo "   ESI assembled ($(wc -c <"$work/varnish-body.html") bytes); cache: ${varnish_cache:-?} on the second request"
run_wrk varnish-esi "http://127.0.0.1:$VARNISH_PORT/esi.html"
kill -TERM "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true

# ---------------------------------------------------------------- report
IFS='|' read -r _ a_rps a_p99 _ _ <<<"${results[0]}"
table="| server | what it serves | requests/s | p99 | errors | reached upstream | vs segedge |
| --- | --- | ---: | ---: | ---: | ---: | --- |"
for r in "${results[@]}"; do
  IFS='|' read -r name rps p99 errs upstream <<<"$r"
  case $name in
    segedge) what="edge ($edge_mode; ruleset $ruleset)"; ratio="—" ;;
    nginx) what="proxy_cache, unpersonalized (cache: ${nginx_cache:-?})"
      ratio=$(awk -v a="$a_rps" -v b="$rps" -v ap="$(to_us "$a_p99")" -v bp="$(to_us "$p99")" 'BEGIN { printf "(a)/(b): %.2fx req/s, %.2fx p99", a/b, ap/bp }') ;;
    varnish-esi) what="ESI, one include (cache: ${varnish_cache:-?})"
      ratio=$(awk -v a="$a_rps" -v b="$rps" -v ap="$(to_us "$a_p99")" -v bp="$(to_us "$p99")" 'BEGIN { printf "(a)/(c): %.2fx req/s, %.2fx p99", a/b, ap/bp }') ;;
  esac
  table+="
| $name | $what | $rps | $p99 | $errs | $upstream | $ratio |"
done
summary="- $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, load before: $load
- page: $page_bytes bytes, wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ncookies rotating segedge_uid cookies
- command: \`$cmdline\`"
echo
echo "$summary"
echo
echo "$table"
if [[ -z "${NO_DOC:-}" ]]; then
  mkdir -p docs/bench
  [[ -f docs/bench/edge.md ]] || printf '# Edge throughput: segedge vs nginx proxy_cache vs Varnish ESI\n\nRuns of `scripts/bench-edge.sh` (newest last). See the notes at the top for how to read them.\n' >docs/bench/edge.md
  printf '\n### Run %s\n\n%s\n\n%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$summary" "$table" >>docs/bench/edge.md
  echo; echo "appended to docs/bench/edge.md"
fi
