#!/usr/bin/env bash
# Soak test: N WebSocket clients on /api/analytics for M minutes with churn, against the
# release binary. Reports samples lost, the server's RSS, threads and descriptors at the
# start, during and after, and WebSocket closes by code. Fails if a sample was lost, the
# server ended a client or exited, or the threads and descriptors did not come back to
# their starting counts.
#
#   scripts/soak.sh                              # 1000 clients, 10 minutes, 10 leave/join per second
#   scripts/soak.sh --clients 100 --minutes 0.3  # a short one (what CI runs)
#   scripts/soak.sh --hostile                    # the same while every hostile case of issues
#                                                # 10 and 20 repeats (scripts/hostile.py), the
#                                                # server in a 512 MiB memory cgroup
#   scripts/soak.sh --hostile --clients 200 --minutes 1   # a quick check: each case once
#
# --hostile also fails if /healthz failed or took 1 s or more, a hostile case was answered
# wrongly, the server's peak RSS reached the budget (512 MiB) or the cgroup OOM-killed it.
# It makes the cgroup itself (scripts/memcg.sh: v2 or v1, whichever has the memory
# controller), which takes root; without one it fails saying what it needs.
#
# Writes its report to out/soak.md as well as stdout; the load generator's and
# hostile.py's own results to out/soak-loadgen.json and out/soak-hostile.json.
set -euo pipefail
cd "$(dirname "$0")/.."

clients=1000 minutes=10 churn=10 hostile=no
budget=$((512 << 20))
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
. scripts/memcg.sh
release=$(release_dir)
cargo build --release --locked -q --workspace
mkdir -p out
log=out/soak-server.log
pid= sampler= attack=
# The cgroup goes once the server has exited.
cleanup() {
  for job in $attack $sampler; do kill "$job" 2>/dev/null || true; done
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  memcg_remove || true
}
trap cleanup EXIT
launch=()
if [ $hostile = yes ]; then
  memcg_create "soak-$$" "$budget" || exit 1
  # The server joins the cgroup before it allocates anything: the shell moves itself, then
  # becomes the server.
  launch=(sh -c 'echo $$ > "$0/cgroup.procs" && exec "$1"' "$memcg_dir")
fi
# Emptied here, not by the server's redirection: that may happen after the first look for
# the address below, which would find the previous run's.
: > "$log"
HOST=127.0.0.1 PORT=0 MAX_WS_CLIENTS=$((clients * 2)) \
  "${launch[@]}" "$release/realtime-analytics-backend" 2>>"$log" &
pid=$!
# The log line may be read while it is being written: the address counts once the space
# after it is there.
for _ in $(seq 100); do
  url=$(grep -o 'listening on http://[0-9.:]* ' "$log" | sed 's/listening on //; s/ $//') && [ -n "$url" ] && break
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
(while sleep 2; do echo "$(date +%s) $(snapshot)"; done) > out/soak-samples.txt 2>/dev/null &
sampler=$!
if [ $hostile = yes ]; then
  scripts/hostile.py --url "$url" --seconds "$seconds" --pid "$pid" > out/soak-hostile.json &
  attack=$!
fi
result=$("$release/loadgen" --url "ws://${url#http://}/api/analytics" \
  --clients "$clients" --seconds "$seconds" --ramp 1000 --churn "$churn")
echo "$result" > out/soak-loadgen.json
if [ -n "$attack" ]; then
  wait "$attack" || { echo "soak: scripts/hostile.py failed" >&2; exit 1; }
  attack=
fi
kill $sampler 2>/dev/null || true
sampler=
peak_threads=$(awk 'BEGIN {m = 0} $3 > m {m = $3} END {print m}' out/soak-samples.txt)

# A size in MiB, from bytes or (with "kB") kibibytes; "-" stays "-".
mib() {
  if [ "$1" = - ]; then echo -; elif [ "${2:-}" = kB ]; then echo $(($1 >> 10)); else echo $(($1 >> 20)); fi
}
failed=()
exited=
if kill -0 "$pid" 2>/dev/null; then
  peak_rss=$(awk '/^VmHWM:/ {print $2}' /proc/$pid/status)
  # Clients are gone; tiny_http's pool threads above its minimum exit after 5 s idle.
  settled=no
  for _ in $(seq 30); do
    read -r rss1 threads1 fds1 < <(snapshot)
    if [ "$threads1" -le "$threads0" ] && [ "$fds1" -le "$fds0" ]; then settled=yes; break; fi
    sleep 1
  done
  [ $settled = yes ] ||
    failed+=("threads/descriptors did not return to the start ($threads1/$fds1 vs $threads0/$fds0)")
  metrics=$(curl -s "$url/metrics") || failed+=("the server did not answer GET /metrics at the end")
  closes=$(awk 'sub(/^analytics_ws_closes_total/, "") {printf "%s ", $0}' <<<"$metrics")
  skipped=$(awk '/^analytics_(ws_frames_skipped|samples_missed)_total/ {n += $2} END {print n}' <<<"$metrics")
else
  status=0
  wait "$pid" || status=$?
  pid=
  exited="status $status"
  peak_rss=$(awk 'BEGIN {m = 0} $2 > m {m = $2} END {print m}' out/soak-samples.txt)
  rss1=- threads1=- fds1=- closes=- skipped=-
  failed+=("the server exited during the soak ($exited)")
fi
lost=$(jq .samples_lost <<<"$result")
[ "$lost" = 0 ] || failed+=("$lost samples lost")
# A client the server closed misses every sample after; a healthy run closes none.
dropped=$(jq -c '.closes | del(.client_churn, .refused)' <<<"$result")
[ "$dropped" = '{}' ] || failed+=("the server ended honest clients: $dropped")
if [ $hostile = yes ]; then
  read -r cgroup_peak oom_kills < <(memcg_stats)
  [ "$((peak_rss * 1024))" -lt "$budget" ] ||
    failed+=("the server's peak RSS $((peak_rss >> 10)) MiB reached the budget ($((budget >> 20)) MiB)")
  [ "$oom_kills" = 0 ] || [ "$oom_kills" = - ] || failed+=("the cgroup OOM-killed the server ($oom_kills)")
  hostile_json=out/soak-hostile.json
  [ "$(jq '.wrong | length' $hostile_json)" = 0 ] ||
    failed+=("hostile cases answered wrongly: $(jq -c .wrong $hostile_json)")
  [ "$(jq '.health.failures' $hostile_json)" = 0 ] ||
    failed+=("/healthz failed $(jq '.health.failures' $hostile_json) times: $(jq -c .health.statuses $hostile_json)")
  [ "$(jq '.health.slowest_ms < 1000' $hostile_json)" = true ] ||
    failed+=("/healthz took $(jq '.health.slowest_ms | round' $hostile_json) ms (1 s or more)")
fi

{
  if [ $hostile = yes ]; then
    echo "## Hostile soak: $clients clients for $minutes min, $churn leave and join per second, every hostile case in a loop, in a $((budget >> 20)) MiB memory cgroup"
  else
    echo "## Soak: $clients clients for $minutes min, $churn leave and join per second"
  fi
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr); command: scripts/soak.sh --clients $clients --minutes $minutes --churn $churn$([ $hostile = no ] || echo ' --hostile')"
  echo
  echo "| measure | value |"
  echo "|---|---|"
  echo "| samples received / lost / duplicated | $(jq .samples_received <<<"$result") / $lost / $(jq .duplicates <<<"$result") |"
  echo "| connections made (churn included) | $(jq .connected <<<"$result") |"
  echo "| upgrades refused (each retried a second later) | $(jq -c '.refused' <<<"$result") |"
  echo "| clients ended by the server, by how | $dropped |"
  echo "| fan-out spread p50 / p99 / max (ms) | $(jq -r '.spread_ms | "\(.p50) / \(.p99) / \(.max)"' <<<"$result") |"
  echo "| interval jitter p50 / p99 (ms) | $(jq -r '.jitter_ms | "\(.p50) / \(.p99)"' <<<"$result") |"
  echo "| server RSS start / peak / after (MiB) | $(mib $rss0 kB) / $(mib $peak_rss kB) / $(mib $rss1 kB) |"
  echo "| server threads start / peak / after | $threads0 / $peak_threads / $threads1 |"
  echo "| server descriptors start / after | $fds0 / $fds1 |"
  [ -z "$exited" ] || echo "| server exited during the soak | $exited |"
  echo "| server WebSocket closes by code | ${closes:-none} |"
  echo "| frames skipped (slow clients) | ${skipped:-0} |"
  echo "| load generator CPU | $(jq '.loadgen_cpu_pct * 10 | round / 10' <<<"$result") % |"
  if [ $hostile = yes ]; then
    echo "| memory cgroup | v$memcg_version, limit $((budget >> 20)) MiB, swap none |"
    echo "| server peak RSS / budget (MiB) | $(mib $peak_rss kB) / $((budget >> 20)) |"
    echo "| cgroup peak usage, page cache included / budget (MiB) | $(mib $cgroup_peak) / $((budget >> 20)) |"
    echo "| OOM kills in the cgroup | $oom_kills |"
    echo "| /healthz probes / failures / slowest | $(jq -r '.health | "\(.probes) / \(.failures) \(.statuses) / \(.slowest_ms | round) ms"' $hostile_json) |"
    echo "| longest server log line (characters) | $(awk 'length($0) > m {m = length($0)} END {print m + 0}' "$log") |"
    echo
    echo "| hostile case | runs | answered wrongly | measured |"
    echo "|---|---|---|---|"
    jq -r '. as $r | .runs | to_entries[] | "| \(.key) | \(.value) | \($r.wrong[.key] // 0) | \(
      [($r.measured[.key] // {} | to_entries[] | "\(.key) \(.value)"), ($r.errors[.key] // empty)]
      | join(", ")) |"' $hostile_json
  fi
  echo
  if [ ${#failed[@]} = 0 ]; then
    echo "**Passed.**"
  else
    echo "**Failed:** $(printf '%s; ' "${failed[@]}" | sed 's/; $//')."
  fi
} | tee out/soak.md

if [ ${#failed[@]} -gt 0 ]; then
  printf 'soak: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "soak: passed"
