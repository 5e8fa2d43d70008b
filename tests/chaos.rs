//! Chaos on request (`?chaos=`), over real sockets with a 100 ms interval: every fault
//! on the streams and on REST, reproducibility by seed, the server-wide default, and that
//! faults touch nobody else.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use realtime_analytics_backend::chaos::Defaults;
use serde_json::Value;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

const INTERVAL_MS: u64 = 100;

fn server() -> TestServer {
    TestServer::with(|c| c.interval = Duration::from_millis(INTERVAL_MS))
}

/// The sample's `seq` if `text` is a sample a strict client accepts: a JSON object with
/// the four fields, counts not negative, and `seq`.
fn strict(text: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(text).ok()?;
    v["timestamp"].as_str()?;
    v["active_users"].as_u64()?;
    v["page_views"].as_u64()?;
    v["avg_session_duration"].as_f64()?;
    v["seq"].as_u64()
}

/// The next `n` samples' seqs (all must be valid samples).
fn seqs(ws: &mut Ws, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let text = next_text(ws);
            strict(&text).unwrap_or_else(|| panic!("not a valid sample: {text}"))
        })
        .collect()
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// How a WebSocket ended: its close frame, or `None` when the connection was cut.
fn ws_end(ws: &mut Ws) -> Option<(CloseCode, String)> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                return frame.map(|f| (f.code, f.reason.to_string()));
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) => {
                assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "timed out");
                return None;
            }
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ),
            ) => return None,
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

/// One server-sent event's fields, or `None` at the end of the stream (or a reset).
fn next_event(reader: &mut BufReader<TcpStream>) -> Option<Vec<(String, String)>> {
    let mut fields = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading the event stream: {e}"),
        }
        let line = line.trim_end_matches('\n');
        if line.is_empty() {
            if !fields.is_empty() {
                return Some(fields);
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(": ") {
            fields.push((k.to_string(), v.to_string()));
        }
    }
}

fn field<'a>(event: &'a [(String, String)], name: &str) -> Option<&'a str> {
    event
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Opens an event stream on `target` and returns its reader, at the first event.
fn event_stream(addr: SocketAddr, target: &str) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        &stream,
        "GET {target} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let head = read_response(&mut reader, true);
    assert_eq!(head.status, 200);
    reader
}

/// The welcome says which faults are on and their seed; the same seed gives two
/// connections the same gaps, duplicates and swaps, tick for tick; another seed does not;
/// and a client without chaos on the same server gets every tick once, in order.
#[test]
fn the_same_seed_gives_the_same_faults_and_nobody_else_sees_them() {
    let s = server();
    let chaos = "chaos=gap:0.3,dup:0.2,reorder:0.2&seq=1";
    let (mut a, welcome) = ws_connect(s.addr, &format!("/api/analytics?{chaos}&chaos_seed=42"));
    assert_eq!(welcome["chaos"]["faults"], "gap:0.3,dup:0.2,reorder:0.2");
    assert_eq!(welcome["chaos"]["seed"], 42);
    assert!(
        welcome["chaos"]["note"]
            .as_str()
            .unwrap()
            .contains("on purpose")
    );
    let (mut b, _) = ws_connect(s.addr, &format!("/api/analytics?{chaos}&chaos_seed=42"));
    let (mut c, _) = ws_connect(s.addr, &format!("/api/analytics?{chaos}&chaos_seed=43"));
    let (mut clean, _) = ws_connect(s.addr, "/api/analytics?seq=1");
    let (a, b, c) = (seqs(&mut a, 60), seqs(&mut b, 60), seqs(&mut c, 60));
    let clean = seqs(&mut clean, 40);
    assert!(clean.windows(2).all(|w| w[1] == w[0] + 1), "{clean:?}");
    // Compare the ticks both saw live: from a few after the later start to a few before
    // the earlier end (a swap may straddle either edge).
    let window = |v: &[u64], from: u64, to: u64| -> Vec<u64> {
        v.iter().copied().filter(|&t| t > from && t < to).collect()
    };
    let (from, to) = (a[1].max(b[1]) + 2, a[59].min(b[59]) - 2);
    assert!(to > from + 20, "the connections overlap: {a:?} {b:?}");
    assert_eq!(window(&a, from, to), window(&b, from, to));
    assert_ne!(window(&a, from, to), window(&c, from, to));
    // Each fault shows: a missing tick, a repeated one, one out of order.
    let live = &a[1..];
    assert!(live.windows(2).any(|w| w[1] > w[0] + 1), "no gap: {a:?}");
    assert!(live.windows(2).any(|w| w[1] == w[0]), "no duplicate: {a:?}");
    assert!(live.windows(2).any(|w| w[1] < w[0]), "no swap: {a:?}");
}

/// `drop` cuts the stream with no close frame (a reset), `close` ends it cleanly with
/// 1012 and a reconnect hint; both 0.5 to 1.5 times the duration after it opened, and
/// streams opened on the same tick with the same seed are cut on the same tick.
#[test]
fn drop_is_abrupt_and_close_is_clean() {
    let s = server();
    // Two streams opened on the same tick (retried until they are).
    let (mut a, mut b) = loop {
        let (a, wa) = ws_connect(s.addr, "/api/analytics?chaos=drop:1s&chaos_seed=5&seq=1");
        let (b, wb) = ws_connect(s.addr, "/api/analytics?chaos=drop:1s&chaos_seed=5&seq=1");
        if wa["seq"] == wb["seq"] {
            break (a, b);
        }
    };
    let opened = Instant::now();
    let last = |ws: &mut Ws| {
        let mut last = None;
        loop {
            match ws.read() {
                Ok(Message::Text(t)) => last = strict(&t),
                Ok(Message::Close(frame)) => panic!("a drop sent a close frame: {frame:?}"),
                Ok(_) => {}
                Err(_) => return last,
            }
        }
    };
    let cut_a = last(&mut a);
    let elapsed = opened.elapsed();
    assert_eq!(cut_a, last(&mut b), "the same seed and tick, the same cut");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );

    let (mut ws, _) = ws_connect(s.addr, "/api/analytics?chaos=close:1s");
    let (code, reason) = ws_end(&mut ws).expect("a close frame");
    assert_eq!(code, CloseCode::Restart);
    let reason: Value = serde_json::from_str(&reason).unwrap();
    assert_eq!(reason["reason"], "chaos close");
    let hint = reason["reconnect_after_ms"].as_u64().unwrap();
    assert!((1000..=5000).contains(&hint), "{reason}");

    // Over SSE: the stream ends without `event: close`, or with it.
    let mut sse = event_stream(s.addr, "/api/analytics?chaos=drop:1s");
    while let Some(event) = next_event(&mut sse) {
        assert_ne!(field(&event, "event"), Some("close"), "a drop said goodbye");
    }
    let mut sse = event_stream(s.addr, "/api/analytics?chaos=close:1s");
    let close = std::iter::from_fn(|| next_event(&mut sse))
        .find(|e| field(e, "event") == Some("close"))
        .expect("an event: close");
    let data: Value = serde_json::from_str(field(&close, "data").unwrap()).unwrap();
    assert_eq!(data["reason"], "chaos close");
    let retry: u64 = field(&close, "retry").unwrap().parse().unwrap();
    assert_eq!(Some(retry), data["reconnect_after_ms"].as_u64());
    assert!(eventually(TIMEOUT, || s.server().stream_clients() == 0));
}

/// After a drop, resuming with `since` replays what was missed, intact (the opening of
/// a stream is never faulted).
#[test]
fn a_resume_after_a_drop_fills_the_gap() {
    let s = server();
    let (mut ws, _) = ws_connect(s.addr, "/api/analytics?chaos=drop:500ms&seq=1");
    let mut last = 0;
    while let Ok(message) = ws.read() {
        if let Message::Text(t) = message {
            last = strict(&t).unwrap();
        }
    }
    thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
    let (mut ws, welcome) = ws_connect(
        s.addr,
        &format!("/api/analytics?chaos=drop:1m,gap:1&seq=1&since={last}"),
    );
    let latest = welcome["seq"].as_u64().unwrap();
    assert!(latest >= last + 3);
    let replay = seqs(&mut ws, (latest - last) as usize);
    assert_eq!(replay, (last + 1..=latest).collect::<Vec<_>>());
}

/// `latency` delays each sample (order kept) and each REST answer, without holding the
/// HTTP workers: `/healthz` stays fast while eight delayed requests wait.
#[test]
fn latency_delays_samples_and_responses_in_order() {
    let s = server();
    for (chaos, lo, hi) in [
        ("latency:300ms", 290, 1500),
        ("latency:200ms..600ms", 190, 1500),
    ] {
        let (mut ws, _) = ws_connect(s.addr, &format!("/api/analytics?chaos={chaos}&seq=1"));
        let first = seqs(&mut ws, 1)[0];
        let mut previous = first;
        for _ in 0..10 {
            let seq = seqs(&mut ws, 1)[0];
            let late = now_ms().saturating_sub(seq * INTERVAL_MS);
            assert!(
                (lo..hi).contains(&late),
                "{chaos}: seq {seq} came {late} ms late"
            );
            assert!(seq > previous, "{chaos}: order");
            previous = seq;
        }
    }
    let delayed: Vec<_> = (0..8)
        .map(|_| {
            let addr = s.addr;
            thread::spawn(move || {
                let start = Instant::now();
                let r = get(addr, "/api/analytics?chaos=latency:2s");
                (r.status, start.elapsed())
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(get(s.addr, "/healthz").status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    for t in delayed {
        let (status, took) = t.join().unwrap();
        assert_eq!(status, 200);
        assert!(took >= Duration::from_secs(2), "{took:?}");
    }
}

/// `stall` sends nothing for its pause (not even a keep-alive), then the held samples
/// at once; with `:latest`, only the newest of them.
#[test]
fn stall_holds_then_releases_all_or_the_latest() {
    let s = TestServer::with(|c| {
        c.interval = Duration::from_millis(INTERVAL_MS);
        c.heartbeat = Duration::from_secs(1);
    });
    let check = |mode: &str| {
        let (mut ws, _) = ws_connect(
            s.addr,
            &format!("/api/analytics?chaos=stall:1500ms/2500ms{mode}&seq=1"),
        );
        let mut arrivals = Vec::new();
        let start = Instant::now();
        // Long enough for a whole stall and its release, wherever the stream opened.
        while start.elapsed() < Duration::from_millis(5500) {
            match ws.read().unwrap() {
                Message::Text(t) => arrivals.push((Instant::now(), strict(&t).unwrap())),
                Message::Ping(_) => panic!("a keep-alive during a stall"),
                _ => {}
            }
        }
        let seqs: Vec<u64> = arrivals.iter().map(|a| a.1).collect();
        // A silence of most of the pause, then a release. The opening sample is sent even
        // inside a stall, so a silence right after it may be a stall's end only.
        let release = arrivals[1..]
            .windows(2)
            .position(|w| w[1].0 - w[0].0 >= Duration::from_millis(1200))
            .unwrap_or_else(|| panic!("{mode}: no stall: {seqs:?}"))
            + 2;
        let before = arrivals[release - 1].1;
        let released: Vec<u64> = arrivals[release..]
            .iter()
            .take_while(|(at, _)| *at - arrivals[release].0 < Duration::from_millis(50))
            .map(|a| a.1)
            .collect();
        if mode == ":latest" {
            // The newest held sample, then the tick that ended the stall.
            assert!(released.len() <= 2, "{released:?}");
            assert!(released[0] >= before + 13, "{before} then {released:?}");
        } else {
            assert!(released.len() >= 13, "{released:?}");
            let expected: Vec<u64> = (before + 1..).take(released.len()).collect();
            assert_eq!(released, expected);
        }
    };
    thread::scope(|scope| {
        scope.spawn(|| check(""));
        scope.spawn(|| check(":latest"));
    });
}

/// `error` answers REST with the status asked for (503 with `Retry-After` by default),
/// named in a JSON body and the `X-Chaos` headers; `error:0` never does.
#[test]
fn error_answers_rest_with_the_status_asked_for() {
    let s = server();
    for _ in 0..10 {
        let r = get(s.addr, "/api/analytics?chaos=error:1&chaos_seed=7");
        assert_eq!(r.status, 503);
        assert!(r.header("Retry-After").is_some());
        assert_eq!(r.header("X-Chaos"), Some("error:1"));
        assert_eq!(r.header("X-Chaos-Seed"), Some("7"));
        let body = r.json();
        assert_eq!(body["error"], "chaos");
        assert!(body["message"].as_str().unwrap().contains("chaos=off"));
    }
    let r = get(s.addr, "/api/analytics/history?last=10s&chaos=error:1:500");
    assert_eq!(r.status, 500);
    let seed: u64 = r.header("X-Chaos-Seed").unwrap().parse().unwrap();
    assert!(seed > 0);
    let r = get(s.addr, "/api/analytics?chaos=error:0");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Chaos"), Some("error:0"));
    // About half, with a chance of one half.
    let errors = (0..200)
        .filter(|_| get(s.addr, "/api/analytics?chaos=error:0.5").status == 503)
        .count();
    assert!((60..140).contains(&errors), "{errors}");
    // Without chaos, no trace of it.
    let r = get(s.addr, "/api/analytics");
    assert_eq!(r.status, 200);
    assert!(r.header("X-Chaos").is_none());
}

/// `garbage:1` makes every live sample, and every REST body, something a strict client
/// must reject; the opening sample and other clients are untouched.
#[test]
fn garbage_is_rejected_by_a_strict_client() {
    let s = server();
    let (mut ws, _) = ws_connect(s.addr, "/api/analytics?chaos=garbage:1&seq=1");
    let (mut clean, _) = ws_connect(s.addr, "/api/analytics?seq=1");
    assert!(
        strict(&next_text(&mut ws)).is_some(),
        "the opening sample is intact"
    );
    let mut kinds = std::collections::HashSet::new();
    for _ in 0..30 {
        let text = next_text(&mut ws);
        assert_eq!(strict(&text), None, "garbage passed: {text}");
        kinds.insert(match serde_json::from_str::<Value>(&text) {
            Err(_) => "truncated",
            Ok(Value::Null) => "null",
            Ok(v) if v.get("active_users").is_none() => "missing",
            Ok(_) => "negative",
        });
    }
    assert_eq!(kinds.len(), 4, "every kind in 30 samples: {kinds:?}");
    assert_eq!(seqs(&mut clean, 30).len(), 30);
    for path in [
        "/api/analytics?chaos=garbage:1&seq=1",
        "/api/analytics/history?last=5s&chaos=garbage:1",
    ] {
        for _ in 0..5 {
            let r = get(s.addr, path);
            assert_eq!(r.status, 200);
            let ok = match serde_json::from_slice::<Value>(&r.body) {
                Ok(v) if path.contains("history") => {
                    v["samples"][0]["active_users"].as_u64().is_some()
                        && v["samples"][0]["timestamp"].is_string()
                }
                Ok(v) => strict(&v.to_string()).is_some(),
                Err(_) => false,
            };
            assert!(!ok, "{path}: {}", r.text());
        }
    }
}

/// Faults combine; SSE reports them in its welcome event; bad grammar is a 400 (REST,
/// SSE) or an error frame and 1008 (WebSocket) that shows the grammar.
#[test]
fn faults_combine_and_bad_grammar_is_refused() {
    let s = server();
    // The cut comes after 2-6 s: at least 20 ticks, so that a gap at 0.5 is all but
    // certain (one chance in a million of none), whichever ticks the run meets.
    let target = "/api/analytics?chaos=drop:4s,latency:200ms,gap:0.5&chaos_seed=11&seq=1";
    let mut sse = event_stream(s.addr, target);
    let welcome = next_event(&mut sse).unwrap();
    assert_eq!(field(&welcome, "event"), Some("welcome"));
    let data: Value = serde_json::from_str(field(&welcome, "data").unwrap()).unwrap();
    assert_eq!(data["chaos"]["faults"], "drop:4s,latency:200ms,gap:0.5");
    assert_eq!(data["chaos"]["seed"], 11);
    let mut ids = Vec::new();
    while let Some(event) = next_event(&mut sse) {
        if let Some(id) = field(&event, "id") {
            let id: u64 = id.parse().unwrap();
            if ids.len() > 1 {
                let late = now_ms().saturating_sub(id * INTERVAL_MS);
                assert!(late >= 190, "sample {id} came {late} ms late");
            }
            ids.push(id);
        }
        assert_ne!(field(&event, "event"), Some("close"));
    }
    assert!(ids.len() >= 3, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[1] > w[0]));
    assert!(ids.windows(2).any(|w| w[1] > w[0] + 1), "no gap: {ids:?}");

    for bad in [
        "drop",
        "drop:1",
        "gap:2",
        "latency:1m",
        "warp:9",
        "gap:0.1,gap:0.2",
    ] {
        let r = get(s.addr, &format!("/api/analytics?chaos={bad}"));
        assert_eq!(r.status, 400, "{bad}");
        let body = r.json();
        assert_eq!(body["parameter"], "chaos");
        assert!(
            body["message"].as_str().unwrap().contains("stall:10s/60s"),
            "{body}"
        );
        let r = request(
            s.addr,
            "GET",
            &format!("/api/analytics?chaos={bad}"),
            &["Accept: text/event-stream"],
        );
        assert_eq!(r.status, 400, "SSE {bad}");
    }
    let mut ws = ws_open(s.addr, "/api/analytics?chaos=gap:2");
    assert_eq!(next_json(&mut ws)["parameter"], "chaos");
    assert_eq!(ws_end(&mut ws).unwrap().0, CloseCode::Policy);
}

/// `CHAOS` and `CHAOS_SEED` apply to clients that ask for nothing; `chaos=` overrides
/// them and `chaos=off` turns them off.
#[test]
fn the_server_default_is_overridden_per_client() {
    let s = TestServer::with(|c| {
        c.interval = Duration::from_millis(INTERVAL_MS);
        c.chaos = Defaults {
            faults: realtime_analytics_backend::chaos::Faults {
                error: Some((1.0, 503)),
                gap: 0.5,
                ..Default::default()
            }
            .into(),
            seed: Some(99),
        };
    });
    let (_ws, welcome) = ws_connect(s.addr, "/api/analytics");
    assert_eq!(welcome["chaos"]["faults"], "gap:0.5,error:1");
    assert_eq!(welcome["chaos"]["seed"], 99);
    assert_eq!(get(s.addr, "/api/analytics").status, 503);
    assert_eq!(
        get(s.addr, "/api/analytics?chaos_seed=3").header("X-Chaos-Seed"),
        Some("3")
    );
    assert_eq!(get(s.addr, "/api/analytics?chaos=off").status, 200);
    assert_eq!(get(s.addr, "/api/analytics?chaos=gap:0.1").status, 200);
    let (_ws, welcome) = ws_connect(s.addr, "/api/analytics?chaos=off");
    assert!(welcome.get("chaos").is_none());
    // Paths that do not serve samples are never faulted.
    assert_eq!(get(s.addr, "/healthz").status, 200);
    let (_ws, welcome) = ws_connect(s.addr, "/api");
    assert!(welcome.get("chaos").is_none());
}
