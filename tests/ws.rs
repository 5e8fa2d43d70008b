//! WebSocket over real sockets: welcome, streaming cadence, shared bytes, REST agreement,
//! refusals, control frames, limits, slow and dead clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn every_path_welcomes_but_only_analytics_streams() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(200));
    for path in [
        "/",
        "/api",
        "//api//",
        "/api/analytics",
        "/api//analytics/?x=1",
    ] {
        let (mut ws, welcome) = ws_connect(s.addr, path);
        let streaming = path.contains("analytics");
        assert_eq!(welcome["streaming"], streaming, "{path}");
        assert_eq!(welcome["interval_ms"], 200);
        assert_eq!(welcome["fields"].as_array().unwrap().len(), 4);
        assert!(welcome["message"].as_str().unwrap().contains("Connected"));
        if streaming {
            assert_eq!(welcome["path"], "/api/analytics");
            assert_sample(&next_json(&mut ws));
        } else {
            // Nothing else arrives on a welcome-only path, even across several ticks.
            ws.get_mut()
                .set_read_timeout(Some(Duration::from_millis(700)))
                .unwrap();
            match ws.read() {
                Err(tungstenite::Error::Io(e)) => assert!(matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )),
                other => panic!("{path}: expected silence, got {other:?}"),
            }
        }
    }
}

#[test]
fn first_sample_at_once_then_one_per_interval() {
    let interval = Duration::from_millis(500);
    let s = TestServer::with(|c| c.interval = interval);
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let connected_ms = unix_ms();
    let (mut ws, _) = ws_connect(s.addr, "/api/analytics");
    let first = next_json(&mut ws);
    assert_sample(&first);
    let ts = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    // Immediate: the sample already published when the client connected, not the next.
    assert!(
        ts(&first) <= connected_ms,
        "the first sample is the latest, sent at once"
    );
    let mut previous = ts(&first);
    for _ in 0..5 {
        let sample = next_json(&mut ws);
        let arrived = unix_ms();
        assert_sample(&sample);
        assert_eq!(ts(&sample) - previous, 500, "consecutive ticks");
        // On the clock's grid: never before its tick; late only by scheduling (generous).
        assert!(
            arrived >= ts(&sample),
            "sample {} arrived early, at {arrived}",
            ts(&sample)
        );
        assert!(
            arrived < ts(&sample) + 5000,
            "sample {} arrived at {arrived}",
            ts(&sample)
        );
        previous = ts(&sample);
    }
}

#[test]
fn two_clients_get_the_same_bytes_for_a_tick_and_rest_agrees() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(300));
    let (mut a, _) = ws_connect(s.addr, "/api/analytics");
    let (mut b, _) = ws_connect(s.addr, "/api/analytics");
    let mut from_a = std::collections::HashMap::new();
    for _ in 0..4 {
        let t = next_text(&mut a);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        from_a.insert(v["timestamp"].as_str().unwrap().to_string(), t);
    }
    let mut matched = 0;
    for _ in 0..4 {
        let t = next_text(&mut b);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if let Some(same) = from_a.get(v["timestamp"].as_str().unwrap()) {
            assert_eq!(same, &t, "identical bytes for one tick");
            matched += 1;
        }
    }
    assert!(matched >= 3, "the clients saw the same ticks ({matched})");

    // REST returns the last streamed sample (retry if a tick lands in between).
    let agreed = (0..5).any(|_| {
        let streamed = next_text(&mut a);
        get(s.addr, "/api/analytics").text() == streamed
    });
    assert!(agreed, "REST equals the latest streamed sample");
}

#[test]
fn upgrades_to_unknown_paths_are_refused_without_101() {
    let s = TestServer::start();
    for path in [
        "/nope",
        "/api/analytics/x",
        "/api/%61nalytics",
        "/api/../api",
    ] {
        let r = send_raw(s.addr, upgrade_request(s.addr, path, HANDSHAKE).as_bytes());
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found");
    }
}

#[test]
fn bad_handshakes_get_400_or_426_with_a_reason() {
    let s = TestServer::start();
    let no_key = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n";
    let r = send_raw(
        s.addr,
        upgrade_request(s.addr, "/api/analytics", no_key).as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("Sec-WebSocket-Key")
    );

    let bad_key = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n";
    let r = send_raw(s.addr, upgrade_request(s.addr, "/", bad_key).as_bytes());
    assert_eq!(r.status, 400);

    let old = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let r = send_raw(s.addr, upgrade_request(s.addr, "/api", old).as_bytes());
    assert_eq!(r.status, 426);
    assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"));
    assert_eq!(r.json()["error"], "unsupported_websocket_version");

    let no_connection = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let r = send_raw(
        s.addr,
        upgrade_request(s.addr, "/api", no_connection).as_bytes(),
    );
    assert_eq!(r.status, 400);

    let post = format!("POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{HANDSHAKE}\r\n");
    assert_eq!(send_raw(s.addr, post.as_bytes()).status, 400);

    // The server still upgrades a good request afterwards.
    let (mut ws, _) = ws_connect(s.addr, "/api/analytics");
    assert_sample(&next_json(&mut ws));
}

/// RFC 6455 4.2.1, 11.3.1 and 11.3.5: an upgrade over HTTP/1.0, or with
/// `Sec-WebSocket-Key` or `Sec-WebSocket-Version` twice, is refused with 400.
#[test]
fn repeated_handshake_headers_and_http_1_0_are_refused() {
    let s = TestServer::start();
    let twice = |header: &str| {
        upgrade_request(
            s.addr,
            "/api/analytics",
            &format!("{HANDSHAKE}{header}\r\n"),
        )
    };
    for (raw, named) in [
        (
            twice("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="),
            "Sec-WebSocket-Key",
        ),
        (
            twice("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="),
            "Sec-WebSocket-Key",
        ),
        (twice("Sec-WebSocket-Version: 13"), "Sec-WebSocket-Version"),
        (twice("sec-websocket-version: 8"), "Sec-WebSocket-Version"),
        (
            format!("GET /api/analytics HTTP/1.0\r\nHost: x\r\n{HANDSHAKE}\r\n"),
            "HTTP/1.1",
        ),
    ] {
        let r = send_raw(s.addr, raw.as_bytes());
        assert_eq!(r.status, 400, "{raw}");
        assert_eq!(r.json()["error"], "bad_handshake", "{raw}");
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains(named), "{message}");
    }
    let (mut ws, _) = ws_connect(s.addr, "/api/analytics");
    assert_sample(&next_json(&mut ws));
}

#[test]
fn the_101_is_a_valid_rfc6455_handshake() {
    let s = TestServer::start();
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(upgrade_request(s.addr, "/api", HANDSHAKE).as_bytes())
        .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    // Parsed here rather than with `raw_upgrade`: this test is about the 101 itself.
    let r = read_response(&mut reader, false);
    assert_eq!(r.status, 101);
    // The RFC's own example key and accept value.
    assert_eq!(
        r.header("Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(
        r.header("Upgrade")
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );
    assert!(
        r.header("Connection")
            .unwrap()
            .eq_ignore_ascii_case("upgrade")
    );
    assert_eq!(
        r.header("Content-Length"),
        None,
        "no Content-Length on a 101"
    );
    // The welcome follows as an unmasked text frame.
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x81, "FIN + text");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
}

#[test]
fn pings_get_pongs_with_the_same_payload() {
    let s = TestServer::with(|c| c.interval = Duration::from_secs(60));
    let (mut ws, _) = ws_connect(s.addr, "/api");
    ws.send(Message::Ping("are you there".into())).unwrap();
    let started = Instant::now();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once, not at the next tick"
    );
}

#[test]
fn client_close_completes_the_close_handshake() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(200));
    let (mut ws, _) = ws_connect(s.addr, "/api/analytics");
    let _ = next_json(&mut ws);
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    let echoed = read_close(&mut ws);
    assert_eq!(echoed.map(|f| f.code), Some(CloseCode::Normal));
    // Then the server closes the TCP connection.
    assert!(matches!(
        ws.read(),
        Err(tungstenite::Error::ConnectionClosed)
    ));
    assert!(eventually(TIMEOUT, || s.server().stream_clients() == 0));
}

/// Clients choose their own close codes (3000-4999): they share one series in /metrics,
/// so that clients cannot grow it.
#[test]
fn close_codes_clients_choose_do_not_add_series() {
    let s = TestServer::start();
    for code in (3000..4999).step_by(6).take(300) {
        let (mut ws, _) = ws_connect(s.addr, "/api");
        ws.close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        }))
        .unwrap();
        read_close(&mut ws);
    }
    assert!(eventually(TIMEOUT, || s.server().stream_clients() == 0));
    let metrics = get(s.addr, "/metrics").text();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("analytics_ws_closes_total{"))
        .collect();
    assert_eq!(
        series.len(),
        1,
        "one series for every code a client chose: {:?}",
        &series[..series.len().min(5)]
    );
    assert_eq!(series[0], "analytics_ws_closes_total{code=\"other\"} 300");
}

#[test]
fn oversized_messages_are_closed_with_1009() {
    let s = TestServer::start();
    let (mut ws, _) = ws_connect(s.addr, "/api");
    ws.send(Message::Text("x".repeat(64 * 1024).into()))
        .unwrap();
    let frame = read_close(&mut ws);
    let frame = frame.expect("a close code");
    assert_eq!(frame.code, CloseCode::Size);
    assert!(frame.reason.contains("16384"), "{}", frame.reason);
}

#[test]
fn unmasked_client_frames_are_closed_with_1002() {
    let s = TestServer::start();
    let (mut stream, mut reader) = raw_upgrade(s.addr, "/api");
    // An unmasked text frame "hi": forbidden from clients by RFC 6455 5.1.
    stream.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    let mut all = Vec::new();
    let _ = reader.read_to_end(&mut all);
    // welcome frame, then a close frame with code 1002.
    let close = all
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xEA)
        .is_some();
    assert!(close, "close 1002 in {:?}", String::from_utf8_lossy(&all));
}

#[test]
fn a_stalled_client_is_dropped_and_never_delays_the_others() {
    let interval = Duration::from_millis(100);
    let s = TestServer::with(|c| {
        c.interval = interval;
        c.ws_max_skipped = 5;
    });
    // The stalled client: a tiny receive window, and it never reads.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    socket.connect(&s.addr.into()).unwrap();
    let mut stalled: TcpStream = socket.into();
    stalled
        .write_all(upgrade_request(s.addr, "/api/analytics?fields=all", HANDSHAKE).as_bytes())
        .unwrap();

    let (mut fast, _) = ws_connect(s.addr, "/api/analytics");
    let ts = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let mut last = ts(&next_json(&mut fast));
    let started = Instant::now();
    let mut closed_after = None;
    while started.elapsed() < Duration::from_secs(40) {
        let sample = next_json(&mut fast);
        let t = ts(&sample);
        assert_eq!(t - last, 100, "the fast client misses nothing");
        last = t;
        if closed_after.is_none() && s.server().stream_clients() == 1 {
            closed_after = Some(started.elapsed());
        }
        if let Some(after) = closed_after {
            // Keep streaming for a while after the close to show the fast client is fine.
            if started.elapsed() > after + Duration::from_secs(1) {
                break;
            }
        }
    }
    // The server queued a close 1008 for it, but a client that reads nothing cannot see it:
    // what is observable is that its connection was dropped.
    let after = closed_after.expect("the stalled client was closed");
    eprintln!("stalled client closed after {after:?}");
}

#[test]
fn a_vanished_client_is_noticed_and_its_thread_ends() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(100));
    let (ws, _) = ws_connect(s.addr, "/api/analytics");
    assert_eq!(s.server().stream_clients(), 1);
    // Drop the TCP connection without a close frame.
    drop(ws);
    assert!(eventually(TIMEOUT, || s.server().stream_clients() == 0));
}

#[test]
fn shutdown_closes_every_client_with_1001() {
    let s = TestServer::start();
    let (mut a, _) = ws_connect(s.addr, "/api/analytics");
    let (mut b, _) = ws_connect(s.addr, "/");
    let _ = next_json(&mut a);
    let shutdown = std::thread::spawn(move || s.shutdown());
    for ws in [&mut a, &mut b] {
        let frame = read_close(ws).unwrap();
        assert_eq!(frame.code, CloseCode::Away);
        assert!(frame.reason.contains("shutting down"));
    }
    shutdown.join().unwrap();
}

#[test]
fn clients_beyond_the_cap_get_503_with_retry_after() {
    let s = TestServer::with(|c| c.max_ws_clients = Some(2));
    let (_a, _) = ws_connect(s.addr, "/api");
    let (_b, _) = ws_connect(s.addr, "/api");
    let r = send_raw(
        s.addr,
        upgrade_request(s.addr, "/api", HANDSHAKE).as_bytes(),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("5"));
    assert_eq!(r.json()["error"], "too_many_clients");
    // REST still answers at the cap.
    assert_eq!(get(s.addr, "/api/analytics").status, 200);
    drop(_a);
    assert!(eventually(TIMEOUT, || s.server().stream_clients() == 1));
    let (_c, _) = ws_connect(s.addr, "/api");
}

/// A stream client cannot read a refused handshake's body (browsers, Flutter and websocat
/// show only the status), so bad options on a valid handshake are accepted, explained in
/// one error frame with the REST error's JSON, and closed with 1008 and a reason. Until
/// the connection closes it holds a client slot, as a stream does.
#[test]
fn bad_options_are_explained_in_an_error_frame_and_a_1008_close() {
    let s = TestServer::start();
    let mut ws = ws_open(s.addr, "/api/analytics?scenario=spiky");
    let error = next_json(&mut ws);
    assert_eq!(s.server().stream_clients(), 1, "the refusal holds a slot");
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"], "bad_query");
    assert_eq!(error["parameter"], "scenario");
    assert!(
        error["message"].as_str().unwrap().contains("spike"),
        "{error}"
    );
    let close = read_close(&mut ws).expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(
        close.reason.starts_with("bad scenario: "),
        "{}",
        close.reason
    );
    assert!(close.reason.len() <= 123);
    drop(ws);
    assert!(
        eventually(TIMEOUT, || s.server().stream_clients() == 0),
        "the refusal's slot is given back once its connection closes"
    );
}

/// The welcome names query parameters the server does not know (a typo shows).
#[test]
fn the_welcome_names_ignored_parameters() {
    let s = TestServer::start();
    let (_ws, welcome) = ws_connect(s.addr, "/api/analytics?scenaro=spike&_=1");
    assert_eq!(welcome["ignored"], serde_json::json!(["scenaro", "_"]));
    let (_ws, welcome) = ws_connect(s.addr, "/api/analytics?seq=1");
    assert!(welcome.get("ignored").is_none());
}

/// A quiet stream gets a ping after `HEARTBEAT_MS` without a frame, so that proxies see
/// traffic (the client's automatic pong is read and dropped).
#[test]
fn a_quiet_stream_gets_a_ping() {
    // One sample in 200 ticks of 100 ms: 20 s between samples; a ping after 1 s.
    let s = TestServer::with(|c| {
        c.interval = Duration::from_millis(100);
        c.heartbeat = Duration::from_secs(1);
    });
    let (mut ws, _) = ws_connect(s.addr, "/api/analytics?every=200");
    let _first = next_json(&mut ws);
    let mut last_frame = Instant::now();
    let quiet = loop {
        match ws.read().expect("the stream stays open") {
            tungstenite::Message::Ping(_) => break last_frame.elapsed(),
            // A sample on the 200-tick grid may come first: the quiet starts again.
            tungstenite::Message::Text(_) => last_frame = Instant::now(),
            _ => {}
        }
    };
    // Not before the heartbeat; well before the next sample (generous: a loaded machine).
    assert!(
        quiet > Duration::from_millis(900) && quiet < Duration::from_secs(15),
        "{quiet:?}"
    );
    // The stream goes on.
    assert_eq!(s.server().stream_clients(), 1);
}
