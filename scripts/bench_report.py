#!/usr/bin/env python3
"""Turns scripts/bench.sh's measurements (JSON lines) into the Markdown of BENCHMARKS.md:
the machine, the commands, the raw numbers side by side, and each goal met or not."""
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone

rows = [json.loads(line) for line in open(sys.argv[1])]
quick = sys.argv[2] == "yes"


def pick(server, kind, clients=None):
    for r in rows:
        if r["server"] == server and r["kind"] == kind and (clients is None or r.get("clients") == clients):
            return r
    return None


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def f(x, digits=1):
    return "–" if x is None else f"{x:,.{digits}f}"


ours_start, node_start = pick("ours", "start"), pick("node", "start")
ours_rest, node_rest = pick("ours", "rest"), pick("node", "rest")
floor_rest = pick("floor", "rest")
fanouts = sorted({r["clients"] for r in rows if r["kind"] == "fanout"})
node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
wrk_line = "wrk -t2 -c64 -d2s --latency" if quick else "wrk -t2 -c64 -d10s --latency"

out = []
w = out.append
w("# Benchmarks" + (" (quick run: tiny scale, not for comparison)" if quick else ""))
w("")
w(f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {subprocess.getoutput('nproc')} cores "
  f"({cpu_model()}), Linux {platform.release()}, Node {node_version}. Command: "
  f"`scripts/bench.sh{' --quick' if quick else ''}`. One server at a time on the same machine, "
  f"loopback. Ours: `target/release/realtime-analytics-backend` (defaults, `LOG_LEVEL=warn`). "
  f"Node: `PORT=N node server-broadcast.js` from `../shared/peers/node-seed` (one shared 1.5 s timer, "
  f"the best the original design does). The floor: `target/release/floor` (below). "
  f"Raw numbers: `out/bench-results.jsonl`.")
w("")
w("## Goals")
w("")
w("| goal | ours | Node | met? |")
w("|---|---|---|---|")


def goal(name, ours, node, ok, gap=""):
    w(f"| {name} | {ours} | {node} | {'met' if ok else 'not met' + (f' ({gap})' if gap else '')} |")


if ours_start and node_start:
    rss = ours_start["idle_rss_kb"] / 1024
    goal("idle RSS ≤ 3 MB", f"{rss:.1f} MB", f"{node_start['idle_rss_kb'] / 1024:.1f} MB", rss <= 3.0,
         f"{rss - 3:.1f} MB over")
    ms = ours_start["first_answer_ms"]
    goal("start to first answer ≤ 10 ms", f"{ms:.1f} ms", f"{node_start['first_answer_ms']:.1f} ms", ms <= 10,
         f"{ms - 10:.1f} ms over")
if ours_rest and node_rest:
    ratio = ours_rest["rps"] / node_rest["rps"]
    served = ours_rest["timeouts"] == 0 and ours_rest["errors"] == 0
    goal("REST ≥ 2× Node's requests/s, every connection served",
         f"{ours_rest['rps']:,.0f}/s ({ratio:.2f}×), {ours_rest['timeouts']} timeouts",
         f"{node_rest['rps']:,.0f}/s", ratio >= 2 and served, f"{ratio:.2f}×")
for n, cpu_x, p99 in [(1000, 1.5, 40), (5000, 3.0, 200)]:
    o, d = pick("ours", "fanout", n), pick("node", "fanout", n)
    if not (o and d):
        continue
    ratio = o["cpu_pct"] / max(d["cpu_pct"], 0.01)
    goal(f"{n} clients: CPU ≤ {cpu_x}× Node's", f"{o['cpu_pct']:.2f} % ({ratio:.1f}×)", f"{d['cpu_pct']:.2f} %",
         ratio <= cpu_x, f"{ratio:.1f}×")
    goal(f"{n} clients: fan-out p99 ≤ {p99} ms", f"{o['spread_p99_ms']:.1f} ms", f"{d['spread_p99_ms']:.1f} ms",
         o["spread_p99_ms"] <= p99, f"{o['spread_p99_ms'] - p99:.1f} ms over")
    if n == 5000:
        goal("5000 clients: zero samples lost", str(o["lost"]), str(d["lost"]), o["lost"] == 0)
# The floor goals (issue 14): ours within 15 % of the design's floor, and within 6 KiB a client.
for n in (1000, 5000):
    o, fl = pick("ours", "fanout", n), pick("floor", "fanout", n)
    if not (o and fl):
        continue
    cpu = o["cpu_pct"] / max(fl["cpu_pct"], 0.01)
    goal(f"{n} clients: CPU ≤ 1.15× the floor's", f"{o['cpu_pct']:.2f} % ({cpu:.2f}×)",
         f"floor: {fl['cpu_pct']:.2f} %", cpu <= 1.15, f"{cpu:.2f}×")
    if n == 5000:
        p99 = o["spread_p99_ms"] / max(fl["spread_p99_ms"], 0.01)
        goal("5000 clients: fan-out p99 ≤ 1.15× the floor's", f"{o['spread_p99_ms']:.1f} ms ({p99:.2f}×)",
             f"floor: {fl['spread_p99_ms']:.1f} ms", p99 <= 1.15, f"{p99:.2f}×")
        extra = (o["rss_per_client_bytes"] - fl["rss_per_client_bytes"]) / 1024
        goal("5000 clients: RSS per client ≤ the floor's + 6 KiB", f"{o['rss_per_client_bytes'] / 1024:.1f} KiB",
             f"floor: {fl['rss_per_client_bytes'] / 1024:.1f} KiB", extra <= 6, f"{extra:+.1f} KiB")
live_events, live_visitors = pick("live", "events"), pick("live", "visitors")
if live_events and ours_rest:
    share = live_events["rps"] / ours_rest["rps"]
    goal("live: events/s ≥ ½ of REST's requests/s", f"{live_events['rps']:,.0f}/s ({share:.2f}×)", "–",
         share >= 0.5, f"{share:.2f}×")
    goal("live: events p99 < 10 ms", f"{live_events['p99_ms']:.2f} ms", "–", live_events["p99_ms"] < 10,
         f"{live_events['p99_ms']:.1f} ms")
    goal("live: every event accepted", f"{live_events['refused']} refused, {live_events['errors']} errors", "–",
         live_events["refused"] == 0 and live_events["errors"] == 0 and live_events["timeouts"] == 0)
if live_visitors:
    b = live_visitors["rss_per_visitor_bytes"]
    goal(f"live: RSS per tracked visitor ≤ 200 B (at {live_visitors['visitors']:,})", f"{b} B", "–", b <= 200,
         f"{b} B")
    t = live_visitors["tick_active_ms"]
    goal(f"live: a tick with {live_visitors['visitors']:,} active visitors ≤ 5 ms", f"{t:.2f} ms", "–", t <= 5,
         f"{t:.1f} ms")
biggest = max(fanouts) if fanouts else None
o = pick("ours", "fanout", biggest) if biggest else None
if o:
    kb = o["rss_per_client_bytes"] / 1024
    d = pick("node", "fanout", biggest)
    goal(f"RSS per WebSocket client ≤ 24 KiB (at {biggest})", f"{kb:.1f} KiB",
         f"{d['rss_per_client_bytes'] / 1024:.1f} KiB" if d else "–", kb <= 24, f"{kb - 24:.1f} KiB over")

w("")
w("## REST")
w("")
w(f"`{wrk_line} http://127.0.0.1:PORT/api/analytics`")
w("")
w("| server | requests/s | p50 | p99 | timeouts | socket errors |")
w("|---|---|---|---|---|---|")
for name, r in [("ours", ours_rest), ("floor", floor_rest), ("Node", node_rest)]:
    if r:
        w(f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['timeouts']} | {r['errors']} |")
if ours_rest and floor_rest and node_rest:
    w("")
    w(f"The floor answers each request on the connection's own thread, with no guard (it reads a "
      f"head by lines and writes the latest sample): what thread per connection can do here. Ours is "
      f"{ours_rest['rps'] / floor_rest['rps']:.2f}× the floor (each request crosses from the "
      f"connection's thread to tiny_http's to a worker's); the floor is "
      f"{floor_rest['rps'] / node_rest['rps']:.2f}× Node.")
w("")
w("## WebSocket fan-out on /api/analytics")
w("")
w("Clients ramp at 1000/s; CPU is the server's, over the steady window after the ramp; spread is, per "
  "tick, the time from the first to the last client receiving that tick's sample; jitter is how far each "
  "arrival is from one interval after the previous one.")
w("")
w("| clients | server | CPU (% of a core) | RSS | RSS/client | spread p50 / p99 | jitter p50 / p99 | lost | loadgen CPU |")
w("|---|---|---|---|---|---|---|---|---|")
SERVERS = [("ours", "ours"), ("floor", "floor"), ("floor_reader", "floor + reader thread"), ("node", "Node")]
for n in fanouts:
    for name, label in SERVERS:
        r = pick(name, "fanout", n)
        if r:
            w(f"| {n} | {label} | {r['cpu_pct']:.2f} | {r['rss_kb'] / 1024:.1f} MB | {r['rss_per_client_bytes'] / 1024:.1f} KiB | "
              f"{r['spread_p50_ms']:.1f} / {r['spread_p99_ms']:.1f} ms | {r['jitter_p50_ms']:.1f} / {r['jitter_p99_ms']:.1f} ms | "
              f"{r['lost']} | {r['loadgen_cpu_pct']:.1f} % |")
w("")
w("## Against the design's floor")
w("")
w("The floor (`bench/src/bin/floor.rs`) is the least this design can cost: one thread per client "
  "blocked on a bounded channel, one generator thread framing each sample once, one write per "
  "client-sample, nothing else. *+ reader thread* adds the second thread per client that "
  "tiny_http's upgrade used to pin (ours no longer has it). Ratios are ours over the other; for "
  "RSS, ours minus the floor.")
w("")
w("| clients | CPU ours / floor | spread p99 ours / floor | RSS per client ours − floor | CPU ours / Node | spread p99 ours / Node |")
w("|---|---|---|---|---|---|")


def ratio(a, b, key):
    return f"{a[key] / b[key]:.2f}×" if a and b and b[key] > 0 else "–"


for n in fanouts:
    o, fl, d = pick("ours", "fanout", n), pick("floor", "fanout", n), pick("node", "fanout", n)
    extra = f"{(o['rss_per_client_bytes'] - fl['rss_per_client_bytes']) / 1024:+.1f} KiB" if o and fl else "–"
    w(f"| {n} | {ratio(o, fl, 'cpu_pct')} | {ratio(o, fl, 'spread_p99_ms')} | {extra} | "
      f"{ratio(o, d, 'cpu_pct')} | {ratio(o, d, 'spread_p99_ms')} |")
w("")
w("## Capacity")
w("")
w("| server | clients held | for | samples lost | one step above | connected | refused | answering after |")
w("|---|---|---|---|---|---|---|---|")
for name, label in [("ours", "ours"), ("node", "Node")]:
    r = pick(name, "capacity")
    if r:
        refused = ", ".join(f"{k}: {v}" for k, v in r["above_refused"].items()) or "none"
        w(f"| {label} | {r['clients']} | {r['held_s']:.0f} s | {r['lost']} | {r['above']} | {r['above_connected']} | {refused} | {r['answering_after']} |")
if live_events and live_visitors:
    w("")
    w("## Live mode: ingestion and visitors")
    w("")
    w("A server in live mode (`MODE=live SITES=example.com TRUSTED_PROXY_HOPS=1 "
      f"ACTIVE_WINDOW=...`, `LOG_LEVEL=warn`), sent page views by wrk: `VISITORS={live_visitors['few']} "
      f"{wrk_line} -s bench/events.lua http://127.0.0.1:PORT/api/event` (each request a page view "
      "as Plausible's tracker sends it, from the next of `VISITORS` addresses in `X-Forwarded-For`, "
      "so that none reaches the per-address limit). Then the same with "
      f"`VISITORS={live_visitors['visitors']}`: the RSS it adds per visitor (each visitor's entry, "
      "its address's rate-limit bucket and the index by last event), and the longest tick "
      "(`analytics_live_tick_seconds_max`) while they are all active, and once they have all left "
      "the window.")
    w("")
    e = live_events
    w("| events/s | against REST's GET | p50 | p99 | refused | socket errors |")
    w("|---|---|---|---|---|---|")
    w(f"| {e['rps']:,.0f} | {e['rps'] / ours_rest['rps']:.2f}× ({ours_rest['rps']:,.0f}/s) | "
      f"{e['p50_ms']:.2f} ms | {e['p99_ms']:.2f} ms | {e['refused']} | {e['errors'] + e['timeouts']} |")
    w("")
    v = live_visitors
    w("| visitors | RSS | RSS per visitor | evicted | longest tick, all active | longest tick, as they leave |")
    w("|---|---|---|---|---|---|")
    w(f"| {v['visitors']:,} | {v['rss_kb'] / 1024:.1f} MB | {v['rss_per_visitor_bytes']} B | {v['evicted']} | "
      f"{v['tick_active_ms']:.2f} ms | {v['tick_leaving_ms']:.2f} ms |")
redis_events = pick("live-redis", "events")
if live_events and redis_events:
    w("")
    w("## Live mode with its state in Redis")
    w("")
    w("The same wrk run against a server with `REDIS_URL` (Debian's redis-server on loopback, "
      "no persistence): every event is one call of `record.lua` in Redis. Redis's CPU is read "
      "from /proc over the run; its memory per visitor from `used_memory` before and after, over "
      "the visitors it then tracks (their record, their place in the index by last event, and "
      "the run's tick totals).")
    w("")
    r = redis_events
    per_1000 = r["redis_cpu_pct"] / (r["rps"] / 1000)
    per_visitor = r.get("redis_bytes_per_visitor")
    w("| state | events/s | p50 | p99 | refused | Redis CPU | Redis CPU per 1000 events/s | Redis memory per visitor |")
    w("|---|---|---|---|---|---|---|---|")
    w(f"| in the process | {live_events['rps']:,.0f} | {live_events['p50_ms']:.2f} ms | "
      f"{live_events['p99_ms']:.2f} ms | {live_events['refused']} | – | – | – |")
    w(f"| in Redis | {r['rps']:,.0f} ({r['rps'] / live_events['rps']:.2f}×) | {r['p50_ms']:.2f} ms | "
      f"{r['p99_ms']:.2f} ms | {r['refused']} | {r['redis_cpu_pct']:.1f} % | {per_1000:.1f} % | "
      f"{per_visitor if per_visitor is not None else '–'} B ({r.get('visitors', 0):,} visitors) |")
fleet_rows = [r for r in rows if r["kind"] == "fleet"]
if fleet_rows:
    w("")
    w("## Several instances behind haproxy")
    w("")
    w("The README's haproxy configuration in front of 3 instances, then one instance alone with a "
      "third of the clients (`scripts/bench.sh --fleet` at full scale).")
    w("")
    w("| run | instances | clients | CPU, instances together | haproxy CPU | spread p50 / p99 | lost |")
    w("|---|---|---|---|---|---|---|")
    for r in fleet_rows:
        lb = f"{r['haproxy_cpu_pct']:.2f} %" if "haproxy_cpu_pct" in r else "–"
        w(f"| {r['server']} | {r['instances']} | {r['clients']} | {r['cpu_pct']:.2f} % | {lb} | "
          f"{r['spread_p50_ms']:.1f} / {r['spread_p99_ms']:.1f} ms | {r['lost']} |")
# Measurements bench.sh does not take (soak, sizing) are kept from the current file.
KEEP = "<!-- Everything below is kept by scripts/bench.sh"
try:
    kept = open("BENCHMARKS.md").read()
    if KEEP in kept:
        w("")
        w(kept[kept.index(KEEP):].rstrip("\n"))
except FileNotFoundError:
    pass
print("\n".join(out))
