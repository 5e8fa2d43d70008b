#!/usr/bin/env bash
# Soak test: N WebSocket clients on /api/analytics for M minutes with churn, against the
# release binary. Reports samples lost, the server's RSS, threads and descriptors at the
# start, during and after, and WebSocket closes by code. Fails if a sample was lost or
# the threads and descriptors did not come back to their starting counts.
#
#   scripts/soak.sh                              # 1000 clients, 10 minutes, 10 leave/join per second
#   scripts/soak.sh --clients 100 --minutes 0.3  # a short one (what CI runs)
#   scripts/soak.sh --hostile                    # the same while every hostile case repeats
#                                                # (scripts/hostile.py): /healthz must stay
#                                                # under 1 s and nothing a client does may leak
#
# Writes its report to out/soak.md as well as stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

clients=1000 minutes=10 churn=10 hostile=no
while [ $# -gt 0 ]; do
  case $1 in
    --clients) clients=$2 ;;
    --minutes) minutes=$2 ;;
    --churn) churn=$2 ;;
    --hostile) hostile=yes; shift; continue ;;
    *) echo "usage: scripts/soak.sh [--clients N] [--minutes M] [--churn PER_SECOND] [--hostile]" >&2; exit 2 ;;
  esac
  shift 2
done

. scripts/lib.sh
release=$(release_dir)
cargo build --release --locked -q --workspace
mkdir -p out
log=out/soak-server.log
HOST=127.0.0.1 PORT=0 MAX_WS_CLIENTS=$((clients * 2)) "$release/realtime-analytics-backend" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  url=$(grep -o 'listening on http://[0-9.:]*' "$log" | sed 's/listening on //') && [ -n "$url" ] && break
  sleep 0.05
done
[ -n "${url:-}" ] || { cat "$log" >&2; echo "soak: the server did not start" >&2; exit 1; }

# RSS (kB), threads and open descriptors of the server.
snapshot() {
  printf '%s %s %s\n' \
    "$(awk '/^VmRSS:/ {print $2}' /proc/$pid/status)" \
    "$(awk '/^Threads:/ {print $2}' /proc/$pid/status)" \
    "$(ls /proc/$pid/fd | wc -l)"
}
sleep 1
read -r rss0 threads0 fds0 < <(snapshot)

seconds=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
(while sleep 10; do echo "$(date +%s) $(snapshot)"; done) > out/soak-samples.txt 2>/dev/null &
sampler=$!
attack=
if [ $hostile = yes ]; then
  scripts/hostile.py --url "$url" --seconds "$seconds" > out/soak-hostile.json &
  attack=$!
fi
result=$("$release/loadgen" --url "ws://${url#http://}/api/analytics" \
  --clients "$clients" --seconds "$seconds" --ramp 1000 --churn "$churn")
[ -z "$attack" ] || wait "$attack"
kill $sampler 2>/dev/null || true
peak_rss=$(awk 'BEGIN {m = 0} $2 > m {m = $2} END {print m}' out/soak-samples.txt)
peak_threads=$(awk 'BEGIN {m = 0} $3 > m {m = $3} END {print m}' out/soak-samples.txt)

# Clients are gone; tiny_http's pool threads above its minimum exit after 5 s idle.
settled=no
for _ in $(seq 30); do
  read -r rss1 threads1 fds1 < <(snapshot)
  if [ "$threads1" -le "$threads0" ] && [ "$fds1" -le "$fds0" ]; then settled=yes; break; fi
  sleep 1
done
closes=$(curl -s "$url/metrics" | grep '^analytics_ws_closes_total' | sed 's/analytics_ws_closes_total//' | tr '\n' ' ')
skipped=$(curl -s "$url/metrics" | awk '/^analytics_(ws_frames_skipped|samples_missed)_total/ {n += $2} END {print n}')
lost=$(jq .samples_lost <<<"$result")

{
  if [ $hostile = yes ]; then
    echo "## Hostile soak: $clients clients for $minutes min, $churn leave and join per second, every hostile case in a loop"
  else
    echo "## Soak: $clients clients for $minutes min, $churn leave and join per second"
  fi
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr); command: scripts/soak.sh --clients $clients --minutes $minutes --churn $churn"
  echo
  echo "| measure | value |"
  echo "|---|---|"
  echo "| samples received / lost / duplicated | $(jq .samples_received <<<"$result") / $lost / $(jq .duplicates <<<"$result") |"
  echo "| connections made (churn included) | $(jq .connected <<<"$result") |"
  echo "| fan-out spread p50 / p99 / max (ms) | $(jq -r '.spread_ms | "\(.p50) / \(.p99) / \(.max)"' <<<"$result") |"
  echo "| interval jitter p50 / p99 (ms) | $(jq -r '.jitter_ms | "\(.p50) / \(.p99)"' <<<"$result") |"
  echo "| server RSS start / peak / after (MB) | $((rss0 / 1024)) / $((peak_rss / 1024)) / $((rss1 / 1024)) |"
  echo "| server threads start / peak / after | $threads0 / $peak_threads / $threads1 |"
  echo "| server descriptors start / after | $fds0 / $fds1 |"
  echo "| server WebSocket closes by code | ${closes:-none} |"
  echo "| frames skipped (slow clients) | ${skipped:-0} |"
  echo "| load generator CPU | $(jq '.loadgen_cpu_pct * 10 | round / 10' <<<"$result") % |"
  if [ $hostile = yes ]; then
    echo "| hostile cases run (each) | $(jq -c .runs out/soak-hostile.json) |"
    echo "| hostile cases answered wrongly | $(jq -c .wrong out/soak-hostile.json) |"
    echo "| /healthz probes / failures / slowest | $(jq -r '.health | "\(.probes) / \(.failures) / \(.slowest_ms | round) ms"' out/soak-hostile.json) |"
  fi
} | tee out/soak.md

[ "$lost" = 0 ] || { echo "soak: $lost samples lost" >&2; exit 1; }
[ "$settled" = yes ] || { echo "soak: threads/descriptors did not return to the start ($threads1/$fds1 vs $threads0/$fds0)" >&2; exit 1; }
if [ $hostile = yes ]; then
  [ "$(jq '.wrong | length' out/soak-hostile.json)" = 0 ] || { echo "soak: hostile cases answered wrongly" >&2; exit 1; }
  [ "$(jq '.health.failures' out/soak-hostile.json)" = 0 ] || { echo "soak: /healthz failed" >&2; exit 1; }
  [ "$(jq '.health.slowest_ms < 1000' out/soak-hostile.json)" = true ] || { echo "soak: /healthz took 1 s or more" >&2; exit 1; }
fi
echo "soak: passed"
