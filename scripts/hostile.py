#!/usr/bin/env python3
"""Every hostile case of issue 10, repeated in a loop against one server for a set time,
while a prober asks GET /healthz five times a second. Used by `scripts/soak.sh --hostile`
beside well-behaved streaming clients; prints one JSON line with what it did and the
slowest health answer.

    scripts/hostile.py --url http://127.0.0.1:4000 --seconds 600

Traffic goes only to the given loopback address; every loop is bounded in time.
"""
import argparse
import json
import socket
import struct
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


SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
FRAMING = [
    b"Content-Length: 10\r\n", b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n",
    b"Content-Length: 37, 37\r\n", b"Content-Length: +37\r\n", b"Content-Length: abc\r\n",
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 1\r\nContent-Length: 2\r\n", b"X-A: 1\r\n folded: in\r\n",
]
UPGRADE = (b"GET /api HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def masked(opcode, payload):
    mask = b"\x12\x34\x56\x78"
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def cases(host, port):
    """Each case: a name and a function that runs it once and returns whether the server
    answered as it must."""
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
        held = []
        for raw in (b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 300,
                    b"GET /api/analytics/history?last=4h&step=1500ms&fields=all&seq=1 HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"):
            for _ in range(4):
                try:
                    s = connect(host, port, rcvbuf=4096)
                    s.settimeout(1)
                    s.sendall(raw)
                except OSError:
                    pass
                held.append(s)
        time.sleep(1)
        for s in held:
            s.close()
        return True

    def ping_flood():
        try:
            s = connect(host, port)
            s.sendall(UPGRADE)
            s.settimeout(1)
            burst = masked(0x9, b"p" * 125) * 1000
            until = time.time() + 2
            while time.time() < until:
                s.sendall(burst)
        except OSError:
            pass
        finally:
            s.close()
        return True

    def slowloris():
        held = []
        for _ in range(50):
            try:
                s = connect(host, port)
                s.sendall(b"GET /api/analytics HTTP/1.1\r\nX-Slow: ")
                held.append(s)
            except OSError:
                pass
        time.sleep(1)
        for s in held:
            s.close()
        return True

    def huge_head():
        answer = exchange(host, port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
        return answer == b"" or answer.startswith(b"HTTP/1.1 431")

    def sse_with_data():
        answer = exchange(host, port, b"GET /api/analytics HTTP/1.1\r\nHost: x\r\n"
                          b"Accept: text/event-stream\r\n\r\n" + SMUGGLED)
        return b"event: close" in answer and b'"ok"' not in answer

    def garbage():
        data = bytes((i * 2654435761 >> 13) & 0xFF for i in range(8192))
        answer = exchange(host, port, data)
        return answer == b"" or answer.startswith(b"HTTP/1.1 400")

    return [("smuggling", smuggling), ("http2", http2), ("never_reading", never_reading),
            ("ping_flood", ping_flood), ("slowloris", slowloris), ("huge_head", huge_head),
            ("sse_with_data", sse_with_data), ("garbage", garbage)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    host, port = args.url.split("//", 1)[1].rsplit(":", 1)
    port = int(port)
    until = time.time() + args.seconds
    health = {"slowest_ms": 0.0, "probes": 0, "failures": 0}

    def probe():
        while time.time() < until:
            started = time.time()
            answer = exchange(host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            took = (time.time() - started) * 1000
            health["probes"] += 1
            if not answer.startswith(b"HTTP/1.1 200"):
                health["failures"] += 1
            health["slowest_ms"] = max(health["slowest_ms"], took)
            time.sleep(0.2)

    prober = threading.Thread(target=probe)
    prober.start()
    runs, wrong = {}, {}
    while time.time() < until:
        for name, case in cases(host, port):
            if time.time() >= until:
                break
            runs[name] = runs.get(name, 0) + 1
            if not case():
                wrong[name] = wrong.get(name, 0) + 1
    prober.join()
    print(json.dumps({"runs": runs, "wrong": wrong, "health": health}))


if __name__ == "__main__":
    main()
