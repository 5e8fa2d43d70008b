//! Timeouts, limits, health, readiness and metrics over real sockets.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Reads until the server closes the connection; returns what it sent.
fn read_until_closed(stream: &TcpStream, limit: Duration) -> Option<String> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut all = Vec::new();
    match (&*stream).read_to_end(&mut all) {
        Ok(_) => Some(String::from_utf8_lossy(&all).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(String::new()),
        Err(_) => None,
    }
}

#[test]
fn idle_and_trickling_connections_are_closed_while_others_are_served() {
    let header_timeout = Duration::from_millis(2000);
    let s = TestServer::with(|c| {
        c.header_timeout = header_timeout;
        c.max_http_connections = Some(3000);
    });
    // 1000 connections that send nothing.
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    // 200 that trickle a request head one byte at a time, never finishing it.
    let mut trickling: Vec<TcpStream> = (0..200)
        .map(|_| {
            let t = TcpStream::connect(s.addr).unwrap();
            (&t).write_all(b"GET /api/analytics HTTP/1.1\r\nX-Slow: ")
                .unwrap();
            t
        })
        .collect();
    let started = Instant::now();
    let trickler = thread::spawn(move || {
        while started.elapsed() < Duration::from_secs(5) {
            for t in &mut trickling {
                let _ = t.write_all(b"a");
            }
            thread::sleep(Duration::from_millis(200));
        }
        trickling
    });

    // Meanwhile a normal client is served promptly.
    thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let r = get(s.addr, "/api/analytics");
    assert_eq!(r.status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );

    // Every idle connection is answered 408 and closed after the header timeout.
    for conn in idle.iter().step_by(50) {
        let answer = read_until_closed(conn, header_timeout * 3).expect("closed by the server");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("request_timeout"), "{answer:?}");
    }
    let trickling = trickler.join().unwrap();
    let t0 = Instant::now();
    for conn in &trickling {
        read_until_closed(conn, header_timeout * 3).expect("trickler closed by the server");
    }
    assert!(t0.elapsed() < header_timeout * 3);
    assert!(eventually(Duration::from_secs(5), || {
        get(s.addr, "/metrics")
            .text()
            .contains("analytics_http_closed_total{reason=\"header_timeout\"} 1200")
    }));
}

#[test]
fn idle_keep_alive_connections_are_closed_and_busy_ones_are_not() {
    let s = TestServer::with(|c| c.idle_timeout = Duration::from_millis(1000));
    let busy = TcpStream::connect(s.addr).unwrap();
    busy.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut busy_reader = BufReader::new(busy.try_clone().unwrap());
    let idle = TcpStream::connect(s.addr).unwrap();
    write!(&idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut idle_reader = BufReader::new(idle.try_clone().unwrap());
    assert_eq!(read_response(&mut idle_reader, false).status, 200);
    let started = Instant::now();
    // The busy connection makes a request every 400 ms for 2.5 s.
    while started.elapsed() < Duration::from_millis(2500) {
        write!(&busy, "GET /api/analytics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut busy_reader, false).status, 200);
        thread::sleep(Duration::from_millis(400));
    }
    // The idle one was closed (EOF, no response) after about a second.
    idle.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        idle_reader.read(&mut buf).unwrap(),
        0,
        "idle connection closed"
    );
}

#[test]
fn oversized_request_heads_get_431() {
    let s = TestServer::with(|c| c.max_header_bytes = 8 * 1024);
    // Arriving whole: parsed by tiny_http, refused by the worker.
    let big = format!(
        "GET /api/analytics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let r = send_raw(s.addr, big.as_bytes());
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "headers_too_large");
    // Never finishing: refused by the connections checker.
    let stream = TcpStream::connect(s.addr).unwrap();
    (&stream)
        .write_all(b"GET / HTTP/1.1\r\nX-Endless: ")
        .unwrap();
    for _ in 0..4 {
        let _ = (&stream).write_all(&[b'a'; 4096]);
    }
    let answer = read_until_closed(&stream, TIMEOUT).expect("closed");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:?}"
    );
    assert_eq!(get(s.addr, "/api/analytics").status, 200);
}

#[test]
fn connections_over_the_cap_get_503_and_the_server_keeps_answering() {
    let s = TestServer::with(|c| c.max_http_connections = Some(20));
    assert_eq!(s.server().caps().http, 20);
    let conns: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    // The ten over the cap get 503: eight at once, and the two on the places kept for
    // health probes once they send no probe within its deadline (2 s). The rest stay open.
    // The watchdog's probe may hold a place meanwhile, so allow one more. The edge accepts
    // in order: read from the last, the refused ones first.
    let mut refused = 0;
    for (i, c) in conns.iter().enumerate().rev() {
        let wait = if i >= 20 { 3000 } else { 100 };
        c.set_read_timeout(Some(Duration::from_millis(wait)))
            .unwrap();
        let mut answer = String::new();
        if (&*c).read_to_string(&mut answer).is_ok() {
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
            assert!(answer.contains("Retry-After: 5") && answer.contains("too_many_connections"));
            refused += 1;
        }
    }
    assert!(refused == 10 || refused == 11, "{refused} refused");
    drop(conns);
    // Their threads see them go, and the places are free again.
    let mut retried = 0;
    assert!(eventually(TIMEOUT, || {
        let served = get(s.addr, "/api/analytics").status == 200;
        retried += usize::from(!served);
        served
    }));
    let metrics = get(s.addr, "/metrics").text();
    let rejected: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("analytics_http_rejected_total "))
        .unwrap()
        .parse()
        .unwrap();
    // Ours, and perhaps one watchdog probe that came while every place was taken.
    let ours = refused + retried;
    assert!(
        rejected == ours || rejected == ours + 1,
        "{rejected}, {ours} ours"
    );
}

/// Idle clients holding every place under `MAX_HTTP_CONNECTIONS` do not make a healthy
/// server look dead: health and readiness probes have places of their own beyond the cap,
/// where only `GET` or `HEAD` of `/healthz` and `/readyz` is answered, and anything else
/// (or nothing within the probe's deadline) gets the cap's 503.
/// `cap` keep-alive clients that were served, holding every place for IDLE_TIMEOUT_MS.
/// (The watchdog's probe may hold one for a moment: retried.)
fn fill_the_cap(addr: std::net::SocketAddr, cap: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    while held.len() < cap {
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(&conn, "GET /api/analytics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        if read_response(&mut reader, false).status == 200 {
            held.push(conn);
        }
    }
    held
}

/// At the cap, two sockets that connect, say nothing and reconnect the moment they are
/// closed held both probes' places for good: every health check got the cap's 503 (found
/// from outside, 101 of 101 in 30 s). A new connection now takes the place of one that
/// has sent nothing, so a probe, which speaks at once, is answered.
#[cfg(unix)] // the edge can see what a socket sent there (platform::waiting)
#[test]
fn idle_sockets_reconnecting_at_the_cap_do_not_keep_probes_out() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = TestServer::with(|c| c.max_http_connections = Some(2));
    let held = fill_the_cap(s.addr, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let squatters: Vec<_> = (0..2)
        .map(|_| {
            let (addr, stop) = (s.addr, Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(idle) = TcpStream::connect(addr) {
                        let _ = read_until_closed(&idle, TIMEOUT);
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let mut answers = Vec::new();
    for _ in 0..10 {
        let probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        answers.push(send_raw(s.addr, probe).status);
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for squatter in squatters {
        squatter.join().unwrap();
    }
    assert!(
        answers.iter().all(|&status| status == 200),
        "health checks: {answers:?}"
    );
    drop(held);
}

#[test]
fn health_and_readiness_answer_at_the_connection_cap() {
    let s = TestServer::with(|c| c.max_http_connections = Some(3));
    let held = fill_the_cap(s.addr, 3);
    let over = get(s.addr, "/api/analytics");
    assert_eq!(over.status, 503);
    assert_eq!(over.json()["error"], "too_many_connections");
    // A probe's place is free again once the connection before it is closed, a moment
    // after its answer arrived: a probe sent at once may find both still closing.
    let probe = |raw: &str| {
        let mut answer = None;
        let placed = eventually(TIMEOUT, || {
            let r = send_raw(s.addr, raw.as_bytes());
            let full = r.status == 503;
            answer = Some(r);
            !full
        });
        assert!(placed, "{raw:?} met the cap's 503 throughout");
        answer.unwrap()
    };
    let r = probe("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = probe("GET //readyz/?probe=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );
    let r = probe("HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    // A probe's place serves one answer, even to a client that asked to keep it.
    let r = probe("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    for refused in [
        request(s.addr, "GET", "/metrics", &[]),
        request(s.addr, "OPTIONS", "/healthz", &[]),
        send_raw(
            s.addr,
            upgrade_request(s.addr, "/api/analytics", HANDSHAKE).as_bytes(),
        ),
    ] {
        assert_eq!(refused.status, 503);
        assert_eq!(refused.json()["error"], "too_many_connections");
    }
    // A connection that says nothing is refused once the probe's deadline passes, long
    // before HEADER_TIMEOUT_MS.
    let silent = TcpStream::connect(s.addr).unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&silent, TIMEOUT).expect("answered");
    assert!(answer.contains("too_many_connections"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(held);
    assert!(eventually(TIMEOUT, || get(s.addr, "/api/analytics").status == 200));
}

/// A dead generator is not healthy: `/healthz` turns 503 once the latest sample is older
/// than two intervals (and the watchdog, which probes it, then restarts the process).
#[test]
fn health_fails_when_the_generator_stops() {
    let mut s = TestServer::with(|c| c.interval = Duration::from_millis(100));
    assert_eq!(get(s.addr, "/healthz").status, 200);
    s.server_mut().stop_generator();
    assert!(
        eventually(Duration::from_secs(5), || get(s.addr, "/healthz").status
            == 503),
        "/healthz stayed 200 with the generator stopped"
    );
    let r = get(s.addr, "/healthz");
    assert_eq!(r.json()["error"], "stale");
    assert!(r.json()["message"].as_str().unwrap().contains("generator"));
    assert_eq!(r.header("Retry-After"), Some("5"));
}

#[test]
fn health_readiness_and_metrics_answer() {
    let s = TestServer::start();
    let r = get(s.addr, "/healthz");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = get(s.addr, "//readyz/");
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );
    let (mut ws, _) = ws_connect(s.addr, "/api/analytics");
    let _ = next_json(&mut ws);
    let _ = get(s.addr, "/nope");
    let r = get(s.addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/plain; version=0.0.4"));
    let text = r.text();
    for needle in [
        "analytics_ws_clients{path=\"/api/analytics\"} 1",
        "analytics_ws_frames_sent_total ",
        "analytics_ws_frames_skipped_total 0",
        "analytics_samples_generated_total ",
        "analytics_http_connections ",
        "analytics_http_requests_total{route=\"other\",status=\"404\"} 1",
        "analytics_http_requests_total{route=\"/healthz\",status=\"200\"}",
        "analytics_ws_rejected_total 0",
        "analytics_http_rejected_total 0",
        "# TYPE analytics_ws_closes_total counter",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    if realtime_analytics_backend::platform::NAME == "linux" {
        for needle in ["process_resident_memory_bytes ", "process_threads "] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
    }
    // Every line is a comment or `name{labels} value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    // Operators' paths do not take WebSocket upgrades.
    let r = send_raw(
        s.addr,
        upgrade_request(s.addr, "/metrics", HANDSHAKE).as_bytes(),
    );
    assert_eq!(r.status, 404);
    drop(ws);
    assert!(eventually(TIMEOUT, || get(s.addr, "/metrics")
        .text()
        .contains("analytics_ws_closes_total{code=\"lost\"} 1")));
}

#[test]
fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let s = TestServer::start();
    let raw = "POST /api/analytics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/analytics HTTP/1.1\r\nHost: x\r\n\r\n";
    let stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    (&stream).write_all(raw.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let r = read_response(&mut reader, false);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "ambiguous_framing");
    // The smuggled second request is never answered: the connection is closed.
    let mut rest = String::new();
    let _ = reader.read_line(&mut rest);
    assert!(!rest.starts_with("HTTP/1.1 200"), "{rest:?}");
}

/// With a `CORS_ORIGINS` allowlist, answers the server makes itself (a refused head, a
/// timeout, the cap) never carry `*`, and a browser upgrade from an origin not on the
/// list is refused, while clients without `Origin` (not browsers) are let in.
#[test]
fn the_cors_allowlist_governs_server_made_errors_and_websocket_origins() {
    let s = TestServer::with(|c| {
        c.cors = realtime_analytics_backend::config::Cors::Only(vec!["https://app.example".into()]);
        c.max_header_bytes = 2048;
        c.header_timeout = Duration::from_millis(500);
    });
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4096)
    );
    let r = send_raw(s.addr, big.as_bytes());
    assert_eq!(r.status, 431);
    assert_eq!(r.header("Access-Control-Allow-Origin"), None);
    let r = send_raw(
        s.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.status, 413);
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://app.example")
    );
    let idle = TcpStream::connect(s.addr).unwrap();
    let answer = read_until_closed(&idle, TIMEOUT).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(!answer.contains("Access-Control-Allow-Origin"), "{answer}");

    let upgrade = |origin: Option<&str>| {
        let extra = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        let raw = upgrade_request(s.addr, "/api/analytics", &format!("{HANDSHAKE}{extra}"));
        send_raw(s.addr, raw.as_bytes())
    };
    let r = upgrade(Some("https://evil.example"));
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    assert_eq!(upgrade(Some("https://app.example")).status, 101);
    assert_eq!(upgrade(None).status, 101);
}

/// The heaviest legal requests, many at once: ordinary requests stay fast meanwhile, and
/// each history is answered, or refused with 503 and `Retry-After` when it waited too
/// long for one of the server's turns.
#[test]
fn concurrent_heavy_histories_leave_health_checks_fast() {
    let s = TestServer::start();
    let addr = s.addr;
    let heavy: Vec<_> = (0..32)
        .map(|_| {
            thread::spawn(move || {
                get(
                    addr,
                    "/api/analytics/history?last=4h&step=1500ms&fields=all&seq=1",
                )
                .status
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let asked = Instant::now();
        assert_eq!(get(addr, "/healthz").status, 200);
        slowest = slowest.max(asked.elapsed());
        thread::sleep(Duration::from_millis(50));
    }
    let answered = heavy
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|status| match status {
            200 => true,
            503 => false,
            other => panic!("a history answered {other}"),
        })
        .count();
    assert!(
        answered >= s.server().budget().turns.min(32),
        "{answered} answered"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz took {slowest:?}"
    );
    eprintln!("slowest /healthz during 32 heavy histories: {slowest:?}");
}
