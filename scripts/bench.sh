#!/usr/bin/env bash
# Benchmarks our release binary, the design's floor (bench/src/bin/floor.rs: the least a
# thread-per-client fan-out can cost, with and without a reader thread per client) and the
# Node peer (../shared/peers/node-seed, broadcast variant) side by side, one server at a
# time on this machine, then ours in live mode (ingestion, visitors, ticks; ingestion
# again with its state in Redis), and writes the tables.
#
#   scripts/bench.sh           # the full run, about 13 minutes: writes BENCHMARKS.md
#   scripts/bench.sh --quick   # minutes, at tiny scale (--fleet's too): writes out/bench.md
#                              # (what CI runs, so that the benchmark never rots; it
#                              # asserts nothing)
#   scripts/bench.sh --ab OLD  # about 7 minutes: the release binary OLD (built from an
#                              # earlier commit) and ours, alternated twice: REST and
#                              # fan-out at 1000 and 5000 clients; writes out/ab.md
#   scripts/bench.sh --fleet   # about 2 minutes: fan-out through haproxy (the README's
#                              # configuration) to 3 instances x 1000 clients, against
#                              # one instance with 1000; writes out/fleet.md
#
# Needs: wrk, node and npm, jq, curl, python3, redis-server, and the Node peer (NODE_PEER, by default
# ../shared/peers/node-seed; it is copied, since shared/ may be read-only). Load comes
# from target/release/loadgen (bench/), one thread for every client, its own CPU reported
# with each run; live mode's from wrk with bench/events.lua.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=no old= fleet=no
[ "${1:-}" = --quick ] && quick=yes
if [ "${1:-}" = --fleet ]; then
  fleet=yes window=20 out=out/fleet.md
elif [ "${1:-}" = --ab ]; then
  old=$(realpath "${2:?usage: scripts/bench.sh --ab OLD_BINARY}")
  counts="1000 5000"; window=20; wrk_time=10s; out=out/ab.md
elif [ $quick = yes ]; then
  counts="10 50"; window=4; wrk_time=2s; hold=4; out=out/bench.md
else
  counts="100 1000 5000"; window=20; wrk_time=10s; hold=60; out=BENCHMARKS.md
fi
for tool in wrk node npm jq curl python3; do
  command -v $tool >/dev/null || { echo "bench: $tool is not installed; scripts/test.sh installs it (or: apt-get install $tool)" >&2; exit 1; }
done

. scripts/lib.sh
release=$(release_dir)
cargo build --release --locked -q --workspace
mkdir -p out
peer_src=${NODE_PEER:-../shared/peers/node-seed}
[ -f "$peer_src/server-broadcast.js" ] ||
  { echo "bench: no Node peer at $peer_src: set NODE_PEER to the node-seed folder" >&2; exit 1; }
peer=out/node-seed
rm -rf "$peer"
cp -r "$peer_src" "$peer"
chmod -R u+w "$peer"
(cd "$peer" && npm ci --silent --no-audit --no-fund >/dev/null)

hz=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
results=out/bench-results.jsonl
: > "$results"

# wrk_row NAME KIND FILE: wrk's report in FILE as one JSON line.
wrk_row() {
  python3 - "$@" <<'EOF'
import json, re, sys
name, kind, text = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
def ms(label):
    m = re.search(r"^\s*%s\s+([\d.]+)(us|ms|s)\s*$" % re.escape(label), text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
refused = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(json.dumps({
    "server": name, "kind": kind,
    "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
    "p50_ms": ms("50%"), "p99_ms": ms("99%"),
    "timeouts": int(errors.group(4)) if errors else 0,
    "errors": sum(int(x) for x in errors.groups()[:3]) if errors else 0,
    "refused": int(refused.group(1)) if refused else 0,
}))
EOF
}

# bench NAME COMMAND...: measures one server and appends a JSON line per measurement.
bench() {
  local name=$1
  shift
  local port started pid
  port=$(free_port)
  started=$(env PORT="$port" HOST=127.0.0.1 LOG_LEVEL=warn \
    "$release/loadgen" startup --port "$port" --log "out/$name.log" -- "$@")
  pid=$(jq .pid <<<"$started")
  sleep 2
  local idle
  idle=$(rss_kb "$pid")
  jq -c --arg s "$name" --argjson idle "$idle" '{server: $s, kind: "start", first_answer_ms, idle_rss_kb: $idle}' \
    <<<"$started" >>"$results"
  echo "$name: first answer after $(jq .first_answer_ms <<<"$started") ms, idle RSS $idle kB" >&2

  if [ "${FANOUT_ONLY:-}" != yes ]; then
  wrk -t2 -c64 -d"$wrk_time" --latency "http://127.0.0.1:$port/api/analytics" >"out/$name-wrk.txt"
  wrk_row "$name" rest "out/$name-wrk.txt" >>"$results"
  echo "$name: REST $(tail -1 "$results")" >&2
  fi

  for n in $counts; do
    local ramp settle run lg t0 t1 rss
    ramp=$(awk -v n="$n" 'BEGIN { printf "%.1f", n / 1000 }')
    settle=$(awk -v r="$ramp" 'BEGIN { printf "%.1f", r + 3 }')
    run=$(awk -v s="$settle" -v w="$window" 'BEGIN { printf "%.1f", s + w }')
    "$release/loadgen" --url "ws://127.0.0.1:$port/api/analytics" --clients "$n" \
      --seconds "$run" --ramp 1000 >"out/$name-$n.json" &
    lg=$!
    sleep "$settle"
    t0=$(cpu_ticks "$pid")
    sleep "$window"
    t1=$(cpu_ticks "$pid")
    rss=$(rss_kb "$pid")
    wait $lg
    jq -c --arg s "$name" --argjson n "$n" --argjson cpu "$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v w="$window" 'BEGIN { printf "%.2f", (b - a) / hz / w * 100 }')" \
      --argjson rss "$rss" --argjson idle "$idle" \
      '{server: $s, kind: "fanout", clients: $n, cpu_pct: $cpu, rss_kb: $rss,
        rss_per_client_bytes: ((($rss - $idle) * 1024 / $n) | floor),
        spread_p50_ms: .spread_ms.p50, spread_p99_ms: .spread_ms.p99,
        jitter_p50_ms: .jitter_ms.p50, jitter_p99_ms: .jitter_ms.p99,
        lost: .samples_lost, connected, refused, loadgen_cpu_pct}' "out/$name-$n.json" >>"$results"
    echo "$name: $n clients $(tail -1 "$results")" >&2
    sleep 3
  done

  if [ "${FANOUT_ONLY:-}" = yes ] || [ "${NO_CAPACITY:-}" = yes ]; then
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    return
  fi
  # Capacity: hold the cap (ours: MAX_WS_CLIENTS; Node has none, so the same count) for
  # $hold seconds, then try one step above it.
  local cap step
  cap=${CAPACITY:-$(curl -s "http://127.0.0.1:$port/" | jq .limits.max_ws_clients)}
  "$release/loadgen" --url "ws://127.0.0.1:$port/api/analytics" --clients "$cap" \
    --seconds $((hold + cap / 1000 + 3)) --ramp 1000 >"out/$name-hold.json"
  step=$((cap / 10 + 1))
  # Let the held clients' connections wind down before trying one step above the cap.
  sleep $((cap / 500 + 5))
  "$release/loadgen" --url "ws://127.0.0.1:$port/api/analytics" --clients $((cap + step)) \
    --seconds $((cap / 500 + 10)) --ramp 1000 >"out/$name-above.json"
  local alive=no
  curl -sf "http://127.0.0.1:$port/api/analytics" >/dev/null && alive=yes
  jq -c -s --arg s "$name" --argjson cap "$cap" --argjson step "$step" --arg alive "$alive" \
    '{server: $s, kind: "capacity", clients: $cap, held_s: .[0].seconds, lost: .[0].samples_lost,
      above: ($cap + $step), above_connected: .[1].connected, above_refused: .[1].refused,
      answering_after: $alive}' "out/$name-hold.json" "out/$name-above.json" >>"$results"
  echo "$name: capacity $(tail -1 "$results")" >&2
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

# live: live mode's figures. Page views from $few visitors (wrk, bench/events.lua) against
# the REST figure of this run; what a tracked visitor costs, from $few to $many visitors;
# the longest tick while $many are active, then as they all leave the window.
live() {
  local port started pid window=$1
  port=$(free_port)
  started=$(env PORT="$port" HOST=127.0.0.1 LOG_LEVEL=warn MODE=live SITES=example.com \
    TRUSTED_PROXY_HOPS=1 ACTIVE_WINDOW="${window}s" \
    "$release/loadgen" startup --port "$port" --log out/live.log -- "$release/realtime-analytics-backend")
  pid=$(jq .pid <<<"$started")
  metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
  active() { curl -sf "http://127.0.0.1:$port/api/analytics" | jq .active_users; }
  VISITORS=$few wrk -t2 -c64 -d"$wrk_time" --latency -s bench/events.lua \
    "http://127.0.0.1:$port/api/event" >out/live-wrk.txt
  wrk_row live events out/live-wrk.txt >>"$results"
  echo "live: events $(tail -1 "$results")" >&2
  local rss0 visitors0 rss1 visitors1 tick_active
  rss0=$(rss_kb "$pid") visitors0=$(metric analytics_live_visitors)
  VISITORS=$many wrk -t2 -c64 -d"$wrk_time" -s bench/events.lua \
    "http://127.0.0.1:$port/api/event" >out/live-wrk-many.txt
  rss1=$(rss_kb "$pid") visitors1=$(metric analytics_live_visitors)
  # A tick or two with all of them active (bounded waits: a figure, not a test).
  for _ in $(seq 20); do [ "$(active)" = "$visitors1" ] && break; sleep 0.5; done
  sleep 3
  tick_active=$(metric analytics_live_tick_seconds_max)
  for _ in $(seq $((window + 20))); do [ "$(active)" = 0 ] && break; sleep 1; done
  jq -nc --argjson few "$few" --argjson v0 "$visitors0" --argjson v1 "$visitors1" \
    --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson tick "$tick_active" \
    --argjson tick_all "$(metric analytics_live_tick_seconds_max)" \
    --argjson evicted "$(metric analytics_live_visitors_evicted_total)" \
    --argjson limited "$(metric analytics_live_rate_limited_total)" \
    '{server: "live", kind: "visitors", few: $few, visitors: $v1, evicted: $evicted, limited: $limited,
      rss_kb: $rss1, rss_per_visitor_bytes: ((($rss1 - $rss0) * 1024 / ($v1 - $v0)) | floor),
      tick_active_ms: ($tick * 1000), tick_leaving_ms: ($tick_all * 1000)}' >>"$results"
  echo "live: visitors $(tail -1 "$results")" >&2
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

# live_redis: live mode's ingestion with its state in Redis (Debian's redis-server, no
# persistence), as the figure above: events/s, and the CPU Redis spends on them.
live_redis() {
  local port redis_port redis started pid r0 r1 t0 t1
  command -v redis-server >/dev/null ||
    { echo "bench: redis-server is not installed; scripts/test.sh installs it (or: apt-get install redis-server)" >&2; exit 1; }
  redis_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >out/redis.log 2>&1 &
  redis=$!
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  port=$(free_port)
  started=$(env PORT="$port" HOST=127.0.0.1 LOG_LEVEL=warn MODE=live SITES=example.com \
    TRUSTED_PROXY_HOPS=1 REDIS_URL="redis://127.0.0.1:$redis_port" \
    "$release/loadgen" startup --port "$port" --log out/live-redis.log -- "$release/realtime-analytics-backend")
  pid=$(jq .pid <<<"$started")
  used() { redis-cli -p "$redis_port" info memory | awk -F: '/^used_memory:/ { print $2 + 0 }'; }
  local m0 m1
  m0=$(used)
  r0=$(cpu_ticks "$redis") t0=$(date +%s.%N)
  VISITORS=$few wrk -t2 -c64 -d"$wrk_time" --latency -s bench/events.lua \
    "http://127.0.0.1:$port/api/event" >out/live-redis-wrk.txt
  r1=$(cpu_ticks "$redis") t1=$(date +%s.%N) m1=$(used)
  wrk_row live-redis events out/live-redis-wrk.txt |
    jq -c --argjson cpu "$(awk -v a="$r0" -v b="$r1" -v t0="$t0" -v t1="$t1" -v hz="$hz" \
      'BEGIN { printf "%.2f", (b - a) / hz / (t1 - t0) * 100 }')" \
      --argjson counted "$(curl -sf "http://127.0.0.1:$port/metrics" |
        awk '$1 == "analytics_live_events_total" { print $2 }')" \
      --argjson grew "$((m1 - m0))" --argjson visitors "$(redis-cli -p "$redis_port" hlen rab:visitors)" \
      '. + {redis_cpu_pct: $cpu, counted: $counted, visitors: $visitors,
            redis_bytes_per_visitor: (if $visitors > 0 then ($grew / $visitors | floor) else null end)}' >>"$results"
  echo "live: events with Redis $(tail -1 "$results")" >&2
  kill "$pid" "$redis"
  wait "$pid" "$redis" 2>/dev/null || true
}

# fleet CLIENTS: the README's haproxy in front of 3 instances, CLIENTS WebSocket clients
# through it, then CLIENTS / 3 on one instance alone: spread and CPU, as JSON lines.
fleet() {
  local clients=$1 pids=() servers= port cfg lg t0 t1 run
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] ||
    { echo "bench: haproxy is not installed; scripts/test.sh installs it (or: apt-get install haproxy)" >&2; exit 1; }
  for name in a b c; do
    port=$(free_port)
    pids+=("$(env PORT="$port" HOST=127.0.0.1 LOG_LEVEL=warn INSTANCE=$name "$release/loadgen" startup \
      --port "$port" --log "out/fleet-$name.log" -- "$release/realtime-analytics-backend" | jq .pid)")
    servers+="    server $name 127.0.0.1:$port"$'\n'
  done
  port=$(free_port)
  cfg=out/haproxy.cfg
  awk '/^<!-- haproxy -->$/ { on = 1; next } on && /^```/ { if (inside) exit; inside = 1; next }
       on && inside' README.md | grep -v '^    server ' |
    sed "s/^    bind .*/    bind 127.0.0.1:$port/" >"$cfg"
  printf '%s' "$servers" >>"$cfg"
  "$(command -v haproxy || echo /usr/sbin/haproxy)" -db -f "$cfg" >out/haproxy.log 2>&1 &
  local haproxy=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  ticks() { local sum=0 pid; for pid in "$@"; do sum=$((sum + $(cpu_ticks "$pid"))); done; echo $sum; }
  cpu() { awk -v a="$1" -v b="$2" -v hz="$hz" -v w="$window" 'BEGIN { printf "%.2f", (b - a) / hz / w * 100 }'; }
  run=$(awk -v n="$clients" -v w="$window" 'BEGIN { printf "%.1f", n / 1000 + 3 + w }')
  "$release/loadgen" --url "ws://127.0.0.1:$port/api/analytics" --clients "$clients" \
    --seconds "$run" --ramp 1000 >out/fleet-3.json &
  lg=$!
  sleep "$(awk -v n="$clients" 'BEGIN { printf "%.1f", n / 1000 + 3 }')"
  t0=$(ticks "${pids[@]}") h0=$(cpu_ticks "$haproxy")
  sleep "$window"
  t1=$(ticks "${pids[@]}") h1=$(cpu_ticks "$haproxy")
  wait $lg
  jq -c --argjson n "$clients" --argjson cpu "$(cpu "$t0" "$t1")" --argjson lb "$(cpu "$h0" "$h1")" \
    '{server: "fleet", kind: "fleet", clients: $n, instances: 3, cpu_pct: $cpu, haproxy_cpu_pct: $lb,
      spread_p50_ms: .spread_ms.p50, spread_p99_ms: .spread_ms.p99, lost: .samples_lost, connected}' \
    out/fleet-3.json >>"$results"
  echo "fleet: $(tail -1 "$results")" >&2
  kill "$haproxy" "${pids[@]:1}"
  wait "$haproxy" 2>/dev/null || true
  # One instance alone, with a third of the clients: what each of the three carried.
  port=$(awk -F: '/server a / { print $2 }' "$cfg")
  run=$(awk -v n="$clients" -v w="$window" 'BEGIN { printf "%.1f", n / 3000 + 3 + w }')
  "$release/loadgen" --url "ws://127.0.0.1:$port/api/analytics" --clients $((clients / 3)) \
    --seconds "$run" --ramp 1000 >out/fleet-1.json &
  lg=$!
  sleep "$(awk -v n="$clients" 'BEGIN { printf "%.1f", n / 3000 + 3 }')"
  t0=$(cpu_ticks "${pids[0]}")
  sleep "$window"
  t1=$(cpu_ticks "${pids[0]}")
  wait $lg
  jq -c --argjson n $((clients / 3)) --argjson cpu "$(cpu "$t0" "$t1")" \
    '{server: "alone", kind: "fleet", clients: $n, instances: 1, cpu_pct: $cpu,
      spread_p50_ms: .spread_ms.p50, spread_p99_ms: .spread_ms.p99, lost: .samples_lost, connected}' \
    out/fleet-1.json >>"$results"
  echo "fleet: $(tail -1 "$results")" >&2
  kill "${pids[0]}"
}

if [ $fleet = yes ]; then
  fleet 3000
  {
    echo "# Fan-out through haproxy: 3 instances against one"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, \`scripts/bench.sh --fleet\`"
    echo
    echo "| run | instances | clients | CPU % (instances) | haproxy CPU % | spread p50 / p99 ms | lost | connected |"
    echo "|---|---|---|---|---|---|---|---|"
    jq -r '"| \(.server) | \(.instances) | \(.clients) | \(.cpu_pct) | \(.haproxy_cpu_pct // "–") | \(.spread_p50_ms) / \(.spread_p99_ms) | \(.lost) | \(.connected) |"' "$results"
  } >"$out"
  cat "$out"
  exit 0
fi

if [ -n "$old" ]; then
  for round in 1 2; do
    NO_CAPACITY=yes bench "old-$round" "$old"
    NO_CAPACITY=yes bench "new-$round" "$release/realtime-analytics-backend"
  done
  {
    echo "# A/B: $old (old) against $release/realtime-analytics-backend (new), alternated"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, \`scripts/bench.sh --ab $old\`"
    echo
    echo "| run | REST requests/s | REST p99 ms | clients | CPU % | spread p99 ms | RSS per client B | lost |"
    echo "|---|---|---|---|---|---|---|---|"
    jq -rs 'group_by(.server)[] | (map(select(.kind == "rest"))[0]) as $r
      | map(select(.kind == "fanout"))[]
      | "| \(.server) | \($r.rps) | \($r.p99_ms) | \(.clients) | \(.cpu_pct) | \(.spread_p99_ms) | \(.rss_per_client_bytes) | \(.lost) |"' "$results"
  } >"$out"
  cat "$out"
  exit 0
fi
if [ $quick = yes ]; then
  bench ours env MAX_WS_CLIENTS=50 "$release/realtime-analytics-backend"
  few=100 many=1000 live 5
  few=100 live_redis
  fleet 30
else
  bench ours "$release/realtime-analytics-backend"
  few=10000 many=100000 live 20
  few=10000 live_redis
fi
# The design's floor (bench/src/bin/floor.rs): REST and fan-out, then fan-out with the
# second thread per client that tiny_http's upgrade used to pin.
NO_CAPACITY=yes bench floor "$release/floor"
FANOUT_ONLY=yes bench floor_reader "$release/floor" --reader
CAPACITY=$(jq -s 'map(select(.server == "ours" and .kind == "capacity"))[0].clients' "$results") \
  bench node node "$peer/server-broadcast.js"

python3 scripts/bench_report.py "$results" "$quick" >"$out.new" && mv "$out.new" "$out"
echo "bench: wrote $out" >&2
