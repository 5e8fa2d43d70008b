#!/usr/bin/env bash
# Runs every test: the Rust suite (unit + integration over real sockets), the release
# binary started on a free port and smoke-tested with curl and websocat, then a short
# soak (100 clients with churn for 20 s). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (release)"
cargo test --release --locked --workspace

echo "== smoke test of the release binary"
bin=target/release/realtime-analytics-backend
log=$(mktemp)
HOST=127.0.0.1 PORT=0 "$bin" 2>"$log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT

url=
for _ in $(seq 100); do
  url=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //') || true
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "the server exited at startup" >&2; exit 1; }
  sleep 0.05
done
[ -n "$url" ] || { cat "$log" >&2; echo "the server did not start within 5 s" >&2; exit 1; }

if ! scripts/smoke.sh "$url"; then
  echo "--- server log" >&2
  cat "$log" >&2
  exit 1
fi

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" = 0 ] || { cat "$log" >&2; echo "the server exited with $status on SIGTERM" >&2; exit 1; }
trap - EXIT
rm -f "$log"

echo "== short soak"
scripts/soak.sh --clients 100 --minutes 0.34 --churn 10
echo "== all tests passed"
