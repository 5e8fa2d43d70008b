#!/usr/bin/env python3
"""Every hostile case of issues 10 and 20, repeated in a loop against one server for a set
time, while a prober asks GET /healthz five times a second. Used by `scripts/soak.sh
--hostile` beside well-behaved streaming clients; prints one JSON line with how often each
case ran, which ones the server answered wrongly, what the issue 20 cases measured, and
the slowest health answer.

    scripts/hostile.py --url http://127.0.0.1:4000 --seconds 600 [--pid SERVER_PID]

With --pid, the ping flood also reports the server's CPU time during it. Traffic goes only
to the given loopback address; every case is bounded in connections and time (at most the
server's HTTP cap, and about 15 s).
"""
import argparse
import json
import os
import random
import re
import resource
import selectors
import socket
import threading
import time


def connect(host, port, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect((host, port))
    return s


def exchange(host, port, data):
    """Sends data, half-closes, reads to the end; returns what came back."""
    try:
        s = connect(host, port)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        s.close()
        return out
    except OSError:
        return b""


def get(host, port, target):
    """GET target; returns the status (0 for no answer) and the body."""
    answer = exchange(host, port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
    head, _, body = answer.partition(b"\r\n\r\n")
    return status(head), body


def status(answer):
    """The status of an HTTP/1.1 answer, 0 if there is none."""
    match = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    return int(match.group(1)) if match else 0


def send_unread(host, port, data):
    """A connection with a 4 KiB receive buffer that sent data and will read nothing."""
    try:
        s = connect(host, port, rcvbuf=4096)
        s.sendall(data)
        return s
    except OSError:
        return None


def close_all(sockets):
    for s in sockets:
        if s:
            s.close()


SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
FRAMING = [
    b"Content-Length: 10\r\n", b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n",
    b"Content-Length: 37, 37\r\n", b"Content-Length: +37\r\n", b"Content-Length: abc\r\n",
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 1\r\nContent-Length: 2\r\n", b"X-A: 1\r\n folded: in\r\n",
]


def upgrade(target):
    return (b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % target)


def event_stream(target):
    return b"GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n" % target


def masked(opcode, payload):
    mask = b"\x12\x34\x56\x78"
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def frames(answer):
    """The server's (unmasked) frames after a 101's head, as (opcode, payload)."""
    data = answer.partition(b"\r\n\r\n")[2]
    out = []
    while len(data) >= 2:
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        if len(data) < start + length:
            break
        out.append((data[0] & 0x0F, data[start:start + length]))
        data = data[start + length:]
    return out


def close_code(answer):
    """The code of the server's close frame, 0 if there is none."""
    return next((int.from_bytes(p[:2], "big") for op, p in frames(answer) if op == 0x8 and len(p) >= 2), 0)


def cpu_seconds(pid):
    """The CPU time (user and system) process pid has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Bounds of the issue 20 cases (each case holds its connections about 3 s).
HOLD_SECONDS = 3
REPLAYS = 30  # WebSocket and SSE each
HISTORIES = 30
SLOW_HISTORIES = 20
SLOW_BYTES_PER_SECOND = 1_000_000
SLOW_SECONDS = 15
FLOOD_SECONDS = 6
FLOOD_BOUND_SECONDS = 3
REFUSALS_PER_SECOND = 250
REFUSAL_SECONDS = 3
FILL_MAX = 6000
CLOSES = 20
# The series analytics_ws_closes_total may gain from CLOSES client codes (a bucket or two).
CLOSE_SERIES_GROWTH = 2
# The client close codes: a different draw each round, the same over runs.
CLOSE_CODES = random.Random(20)


def cases(host, port, pid, measured):
    """Each case: a name and a function that runs it once and returns whether the server
    answered as it must. Cases of issue 20 add what they measured to `measured`."""

    def tally(case, key):
        counts = measured.setdefault(case, {})
        counts[key] = counts.get(key, 0) + 1

    def service():
        code, body = get(host, port, b"/")
        return json.loads(body) if code == 200 else {}

    def smuggling():
        ok = True
        for h in FRAMING:
            answer = exchange(host, port, b"GET /api/analytics HTTP/1.1\r\nHost: x\r\n" + h
                              + b"\r\n0\r\n\r\n" + SMUGGLED)
            ok &= answer.count(b"HTTP/1.1") == 1 and b'"ok"' not in answer
        return ok

    def http2():
        return all(exchange(host, port, b"GET / %s\r\nHost: x\r\n\r\n" % v).startswith(b"HTTP/1.1 505")
                   for v in (b"HTTP/2.0", b"HTTP/3.0"))

    def never_reading():
        held = [send_unread(host, port, raw) for raw in (
            b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 300,
            b"GET /api/analytics/history?last=4h&step=1500ms&fields=all&seq=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n") for _ in range(4)]
        time.sleep(1)
        close_all(held)
        return True

    def ping_flood():
        s = send_unread(host, port, upgrade(b"/api"))
        try:
            s.settimeout(1)
            burst = masked(0x9, b"p" * 125) * 1000
            until = time.time() + 2
            while time.time() < until:
                s.sendall(burst)
        except (OSError, AttributeError):
            pass
        close_all([s])
        return True

    def slowloris():
        held = [send_unread(host, port, b"GET /api/analytics HTTP/1.1\r\nX-Slow: ") for _ in range(50)]
        time.sleep(1)
        close_all(held)
        return True

    def huge_head():
        answer = exchange(host, port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
        return answer == b"" or answer.startswith(b"HTTP/1.1 431")

    def sse_with_data():
        answer = exchange(host, port, event_stream(b"/api/analytics") + SMUGGLED)
        return b"event: close" in answer and b'"ok"' not in answer

    def garbage():
        data = bytes((i * 2654435761 >> 13) & 0xFF for i in range(8192))
        answer = exchange(host, port, data)
        return answer == b"" or answer.startswith(b"HTTP/1.1 400")

    def replay_unread():
        """Finding 1: WebSocket and SSE resumes 9999 samples back, all fields, never read."""
        code, body = get(host, port, b"/api/analytics?seq=1")
        if code != 200:
            return False
        target = b"/api/analytics?since=%d&fields=all" % (json.loads(body)["seq"] - 9999)
        held = [send_unread(host, port, request(target))
                for _ in range(REPLAYS) for request in (upgrade, event_stream)]
        time.sleep(HOLD_SECONDS)
        close_all(held)
        return True

    def worst_history():
        """The largest history one request may ask for: 10 000 points of every field."""
        interval = service().get("interval_ms", 1500)
        return b"/api/analytics/history?last=%dms&step=%dms&fields=all" % (9999 * interval, interval)

    def history_unread():
        """Finding 2: worst-case histories never read."""
        raw = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % worst_history()
        held = [send_unread(host, port, raw) for _ in range(HISTORIES)]
        time.sleep(HOLD_SECONDS)
        close_all(held)
        return True

    def history_slow():
        """Finding 2: worst-case histories read at about 1 MB/s each: every one must get its
        whole answer, or a 503 with Retry-After."""
        raw = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % worst_history()
        outcomes = []

        def read_slowly():
            answer, silent = bytearray(), False
            try:
                s = connect(host, port, rcvbuf=65536)
                s.settimeout(SLOW_SECONDS)
                s.sendall(raw)
                started = time.time()
                while time.time() - started < SLOW_SECONDS:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                    ahead = len(answer) / SLOW_BYTES_PER_SECOND - (time.time() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                s.close()
            except socket.timeout:
                silent = True
            except OSError:
                pass
            head, _, body = bytes(answer).partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if status(head) == 200 and length and len(body) == int(length.group(1)):
                outcomes.append("whole")
            elif status(head) == 503 and re.search(rb"(?i)\r\nretry-after:", head):
                outcomes.append("503")
            else:
                outcomes.append(f"silent_{SLOW_SECONDS}s" if silent and not answer else "empty" if not answer
                                else "cut" if status(head) == 200 else f"status {status(head)}")

        readers = [threading.Thread(target=read_slowly) for _ in range(SLOW_HISTORIES)]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
        for outcome in outcomes:
            tally("history_slow", outcome)
        return all(o in ("whole", "503") for o in outcomes)

    def ping_flood_unread():
        """Finding 3: pings on a stream as fast as the socket takes them, nothing read: the
        server must stop taking them within FLOOD_BOUND_SECONDS."""
        s = send_unread(host, port, upgrade(b"/api/analytics"))
        if not s:
            return False
        s.settimeout(1)
        burst = masked(0x9, b"p" * 125) * 1000
        cpu = cpu_seconds(pid) if pid else 0
        started, sent, stopped = time.time(), 0, None
        while time.time() - started < FLOOD_SECONDS:
            try:
                s.sendall(burst)
                sent += len(burst)
            except socket.timeout:
                stopped = time.time() - started - 1
            except OSError:
                stopped = time.time() - started
            if stopped is not None:
                break
        took = time.time() - started
        s.close()
        worst = measured.setdefault("ping_flood_unread", {})
        worst["most_mb_taken"] = max(worst.get("most_mb_taken", 0), round(sent / 1e6, 1))
        worst["latest_stop_s"] = max(worst.get("latest_stop_s", 0), round(stopped or took, 1))
        if stopped is None:
            tally("ping_flood_unread", "never_stopped")
        if pid:
            share = (cpu_seconds(pid) - cpu) / took
            worst["most_server_cpu_per_s"] = max(worst.get("most_server_cpu_per_s", 0), round(share, 2))
        return stopped is not None and stopped <= FLOOD_BOUND_SECONDS

    def refused_upgrades():
        """Finding 4: upgrades with an invalid option, REFUSALS_PER_SECOND, the close
        handshake never answered: each gets its error frame and 1008, or a 503."""
        request = upgrade(b"/api/analytics?scenario=spiky")
        answers = {}
        selector = selectors.DefaultSelector()

        def take(timeout):
            for key, _ in selector.select(timeout):
                try:
                    chunk = key.fileobj.recv(65536)
                except OSError:
                    chunk = b""
                answers[key.fileobj] += chunk
                if not chunk:
                    selector.unregister(key.fileobj)

        started, unsent = time.time(), 0
        for i in range(REFUSALS_PER_SECOND * REFUSAL_SECONDS):
            while time.time() < started + i / REFUSALS_PER_SECOND:
                take(max(0, started + i / REFUSALS_PER_SECOND - time.time()))
            try:
                s = connect(host, port)
                s.sendall(request)
                s.setblocking(False)
                answers[s] = b""
                selector.register(s, selectors.EVENT_READ)
            except OSError:
                unsent += 1
        until = time.time() + HOLD_SECONDS
        while selector.get_map() and time.time() < until:
            take(0.1)
        outcomes = ["closed_1008" if close_code(a) == 1008 else "503" if status(a) == 503
                    else "no_answer" if not a else f"status {status(a)} close {close_code(a)}"
                    for a in answers.values()]
        close_all(answers)
        selector.close()
        for outcome in outcomes + ["unsent"] * unsent:
            tally("refused_upgrades", outcome)
        return unsent == 0 and all(o in ("closed_1008", "503") for o in outcomes)

    def fill_http_cap():
        """Finding 5: idle connections up to MAX_HTTP_CONNECTIONS (any other request gets
        503 then); /healthz must still be 200."""
        cap = service().get("limits", {}).get("max_http_connections", 0)
        if not cap:
            return False
        idle = []
        for _ in range(min(cap, FILL_MAX)):
            try:
                idle.append(connect(host, port))
            except OSError:
                break
        for _ in range(20):
            extra, _ = get(host, port, b"/api/analytics")
            if extra == 503:
                break
            time.sleep(0.1)
        health = []
        for _ in range(5):
            health.append(get(host, port, b"/healthz")[0])
            time.sleep(0.2)
        close_all(idle)
        measured.setdefault("fill_http_cap", {}).update(cap=cap, held=len(idle), other_request=extra)
        for code in health:
            tally("fill_http_cap", f"healthz_{code or 'none'}")
        return extra == 503 and all(code == 200 for code in health)

    def close_codes():
        """Finding 6: WebSocket closes with client codes from 3000 to 4999: each answered,
        and analytics_ws_closes_total gains at most CLOSE_SERIES_GROWTH series from them."""
        def series():
            _, metrics = get(host, port, b"/metrics")
            return len(re.findall(rb"(?m)^analytics_ws_closes_total\{", metrics))

        before, ok = series(), True
        for _ in range(CLOSES):
            answer = b""
            try:
                s = connect(host, port)
                s.sendall(upgrade(b"/api/analytics")
                          + masked(0x8, CLOSE_CODES.randint(3000, 4999).to_bytes(2, "big") + b"bye"))
                s.settimeout(2)
                while not close_code(answer):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                s.close()
            except OSError:
                pass
            ok &= close_code(answer) != 0
        after = series()
        measured["close_codes"] = {"series": after}
        return ok and after - before <= CLOSE_SERIES_GROWTH

    def long_method():
        """Finding 6: a 4000-character method gets a refusal."""
        answer = exchange(host, port, b"A" * 4000 + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
        measured["long_method"] = {"reply_bytes": len(answer)}
        return 400 <= status(answer) < 600

    return [("smuggling", smuggling), ("http2", http2), ("never_reading", never_reading),
            ("ping_flood", ping_flood), ("slowloris", slowloris), ("huge_head", huge_head),
            ("sse_with_data", sse_with_data), ("garbage", garbage),
            ("replay_unread", replay_unread), ("history_unread", history_unread),
            ("history_slow", history_slow), ("ping_flood_unread", ping_flood_unread),
            ("refused_upgrades", refused_upgrades), ("fill_http_cap", fill_http_cap),
            ("close_codes", close_codes), ("long_method", long_method)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--pid", type=int, help="the server's process id, for its CPU time")
    args = parser.parse_args()
    host, port = args.url.split("//", 1)[1].rsplit(":", 1)
    port = int(port)
    # Filling the server's HTTP cap takes that many descriptors here.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    until = time.time() + args.seconds
    health = {"slowest_ms": 0.0, "probes": 0, "failures": 0, "statuses": {}}

    def probe():
        while time.time() < until:
            started = time.time()
            answer = exchange(host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            took = (time.time() - started) * 1000
            health["probes"] += 1
            if status(answer) != 200:
                health["failures"] += 1
                code = str(status(answer) or "none")
                health["statuses"][code] = health["statuses"].get(code, 0) + 1
            health["slowest_ms"] = max(health["slowest_ms"], took)
            time.sleep(0.2)

    prober = threading.Thread(target=probe)
    prober.start()
    runs, wrong, measured, errors = {}, {}, {}, {}
    while time.time() < until:
        for name, case in cases(host, port, args.pid, measured):
            if time.time() >= until:
                break
            runs[name] = runs.get(name, 0) + 1
            try:
                ok = case()
            except Exception as e:  # an answer a case cannot read (or no server) is wrong too
                ok, errors[name] = False, f"{type(e).__name__}: {e}"[:120]
            if not ok:
                wrong[name] = wrong.get(name, 0) + 1
    prober.join()
    print(json.dumps({"runs": runs, "wrong": wrong, "measured": measured, "errors": errors,
                      "health": health}))


if __name__ == "__main__":
    main()
