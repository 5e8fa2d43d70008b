//! Server-Sent Events on `/api/analytics`, over real sockets: framing, resume with
//! `Last-Event-ID`, the shared cap, slow and vanished clients, proxies' `Connection:
//! close`, pipelining, heartbeats and graceful shutdown.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// A raw event-stream client: the head, then one event at a time.
struct Events {
    status: u16,
    headers: HashMap<String, String>,
    reader: BufReader<TcpStream>,
}

/// One event: its fields (`id`, `event`, `data`, `retry`), or a comment.
#[derive(Debug, Default)]
struct Event {
    fields: HashMap<String, String>,
    comment: Option<String>,
}

impl Event {
    fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    fn id(&self) -> u64 {
        self.get("id").expect("id").parse().unwrap()
    }

    fn data(&self) -> serde_json::Value {
        serde_json::from_str(self.get("data").expect("data")).unwrap()
    }
}

impl Events {
    fn open(addr: SocketAddr, target: &str, headers: &[&str]) -> Events {
        Events::send(
            TcpStream::connect(addr).unwrap(),
            target,
            "HTTP/1.1",
            headers,
        )
    }

    fn send(stream: TcpStream, target: &str, version: &str, headers: &[&str]) -> Events {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut head =
            format!("GET {target} {version}\r\nHost: test\r\nAccept: text/event-stream\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        (&stream).write_all(head.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = HashMap::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
        }
        Events {
            status,
            headers,
            reader,
        }
    }

    /// The next event or comment; `None` at the end of the stream.
    fn next(&mut self) -> Option<Event> {
        let mut event = Event::default();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).unwrap() == 0 {
                return None;
            }
            let l = line.strip_suffix('\n').expect("lines end with \\n");
            if l.is_empty() {
                if event.fields.is_empty() && event.comment.is_none() {
                    continue;
                }
                return Some(event);
            }
            if let Some(c) = l.strip_prefix(':') {
                event.comment = Some(c.trim().to_string());
                continue;
            }
            let (k, v) = l.split_once(": ").expect("field: value");
            event.fields.insert(k.to_string(), v.to_string());
        }
    }

    /// The next sample event, skipping comments.
    fn sample(&mut self) -> Event {
        loop {
            let e = self.next().expect("the stream goes on");
            if e.get("event") == Some("sample") {
                return e;
            }
            assert!(e.comment.is_some(), "only samples and comments: {e:?}");
        }
    }

    fn welcome(&mut self) -> Event {
        let welcome = self.next().unwrap();
        assert_eq!(welcome.get("event"), Some("welcome"));
        welcome
    }
}

#[test]
fn an_event_stream_carries_the_same_samples_as_the_websocket() {
    let s = TestServer::start();
    let mut es = Events::open(s.addr, "/api//analytics/", &[]);
    assert_eq!(es.status, 200);
    assert_eq!(
        es.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(es.headers["cache-control"].contains("no-cache"));
    assert_eq!(es.headers["access-control-allow-origin"], "*");
    assert!(!es.headers.contains_key("content-length"));
    assert!(es.headers["date"].ends_with(" GMT"), "RFC 9110 §6.6.1");
    assert_eq!(es.headers["vary"], "Accept");
    let welcome = es.welcome();
    assert_eq!(welcome.get("retry"), Some("2000"));
    let w = welcome.data();
    assert_eq!(w["type"], "welcome");
    assert!(w["resume"].as_str().unwrap().contains("Last-Event-ID"));

    let (mut ws, _) = ws_connect(s.addr, "/api/analytics");
    let first = es.sample();
    assert_eq!(first.id(), w["seq"].as_u64().unwrap());
    assert_sample(&first.data());
    // The next tick reaches both transports as the same bytes.
    let next = es.sample();
    assert_eq!(next.id(), first.id() + 1);
    let frames: Vec<String> = (0..3).map(|_| next_text(&mut ws)).collect();
    assert!(
        frames.iter().any(|f| f == next.get("data").unwrap()),
        "{frames:?} has {next:?}"
    );
    assert_eq!(
        s.server().stream_clients(),
        2,
        "SSE and WebSocket share the count"
    );
    assert_eq!(metric(s.addr, "analytics_sse_clients"), 1.0);
    let sent = metric(s.addr, "analytics_sse_events_sent_total");
    assert!(sent >= 2.0, "{sent}");
}

#[test]
fn query_options_apply_to_the_event_stream() {
    let s = TestServer::start();
    let mut es = Events::open(
        s.addr,
        "/api/analytics?seq=1&fields=all&scenario=spike",
        &[],
    );
    let w = es.welcome().data();
    assert_eq!(w["scenario"], "spike");
    let e = es.sample();
    assert_eq!(e.data()["seq"].as_u64(), Some(e.id()));
    assert!(e.data()["devices"].is_object());

    let bad = request(
        s.addr,
        "GET",
        "/api/analytics?every=0",
        &["Accept: text/event-stream"],
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["parameter"], "every");
}

#[test]
fn last_event_id_resumes_without_gap_or_duplicate() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(100));
    let mut es = Events::open(s.addr, "/api/analytics", &[]);
    es.welcome();
    let mut last = es.sample().id();
    for _ in 0..3 {
        let id = es.sample().id();
        assert_eq!(id, last + 1);
        last = id;
    }
    drop(es);
    // Gone long enough to miss several samples.
    let live = s.server();
    assert!(eventually(TIMEOUT, || live.stream_clients() == 0));
    std::thread::sleep(Duration::from_millis(500));

    let resume = format!("Last-Event-ID: {last}");
    let mut es = Events::open(s.addr, "/api/analytics", &[&resume]);
    let w = es.welcome().data();
    assert_eq!(w["replay"]["from"].as_u64(), Some(last + 1));
    let to = w["replay"]["to"].as_u64().unwrap();
    assert!(to >= last + 4, "several samples were missed: {w}");
    for _ in 0..(to - last + 5) {
        let id = es.sample().id();
        assert_eq!(id, last + 1, "every sample once, in order");
        last = id;
    }
    assert!(last > to, "went on live after the replay");

    // An explicit `since` wins over the header; a non-numeric header is not resumed from.
    let mut es = Events::open(
        s.addr,
        &format!("/api/analytics?since={}", last - 2),
        &["Last-Event-ID: 1"],
    );
    assert_eq!(
        es.welcome().data()["replay"]["from"].as_u64(),
        Some(last - 1)
    );
    let mut es = Events::open(s.addr, "/api/analytics", &["Last-Event-ID: abc"]);
    assert!(es.welcome().data().get("replay").is_none());
}

/// An `EventSource` sends its `Last-Event-ID` back by itself, and gives up for good on an
/// error: an id the server cannot resume from (ahead of the latest sample, as after
/// `INTERVAL_MS` changed, too large, or not a seq) starts the live stream, the welcome
/// saying why. A `since` typed in the query keeps its 400.
#[test]
fn a_last_event_id_that_cannot_be_resumed_from_starts_the_live_stream() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(100));
    let latest = get(s.addr, "/api/analytics?seq=1").json()["seq"]
        .as_u64()
        .unwrap();
    for (id, why) in [
        ((latest + 1000).to_string(), "ahead of the latest sample"),
        ("99999999999999999999999".into(), "is not a sample's seq"),
        ("abc".into(), "is not a sample's seq"),
    ] {
        let header = format!("Last-Event-ID: {id}");
        let mut es = Events::open(s.addr, "/api/analytics", &[&header]);
        assert_eq!(es.status, 200, "{header}");
        let w = es.welcome().data();
        let note = w["resume_ignored"].as_str().unwrap_or_default();
        assert!(note.contains(why), "{header}: {w}");
        assert!(w.get("replay").is_none(), "{w}");
        assert_eq!(
            es.sample().id(),
            w["seq"].as_u64().unwrap(),
            "live, from the latest sample"
        );
    }
    let typed = request(
        s.addr,
        "GET",
        &format!("/api/analytics?since={}", latest + 1000),
        &["Accept: text/event-stream", "Last-Event-ID: 1"],
    );
    assert_eq!(typed.status, 400);
    assert_eq!(typed.json()["parameter"], "since");
}

/// `Accept: text/event-stream;q=0` refuses the stream: the answer is REST's JSON.
#[test]
fn an_accept_that_refuses_event_streams_gets_json() {
    let s = TestServer::start();
    for accept in [
        "text/event-stream;q=0",
        "text/event-stream; q=0.0, application/json",
    ] {
        let stream = TcpStream::connect(s.addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(
            &stream,
            "GET /api/analytics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        // The head alone first (as for a HEAD): a stream would not end.
        let mut reader = BufReader::new(stream);
        let head = read_response(&mut reader, true);
        assert_eq!(head.status, 200, "{accept}");
        assert_eq!(
            head.header("Content-Type"),
            Some("application/json"),
            "{accept}"
        );
        let mut body = String::new();
        reader.read_to_string(&mut body).unwrap();
        assert_sample(&serde_json::from_str(&body).unwrap());
    }
}

#[test]
fn cors_for_event_source_follows_cors_origins() {
    let s = TestServer::with(|c| {
        c.cors = realtime_analytics_backend::config::Cors::Only(vec!["https://dash.example".into()])
    });
    let es = Events::open(s.addr, "/api/analytics", &["Origin: https://dash.example"]);
    assert_eq!(
        es.headers["access-control-allow-origin"],
        "https://dash.example"
    );
    let es = Events::open(s.addr, "/api/analytics", &["Origin: https://evil.example"]);
    assert!(!es.headers.contains_key("access-control-allow-origin"));
    // A preflight for EventSource's header.
    let r = request(
        s.addr,
        "OPTIONS",
        "/api/analytics",
        &[
            "Origin: https://dash.example",
            "Access-Control-Request-Method: GET",
            "Access-Control-Request-Headers: last-event-id",
        ],
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("Access-Control-Allow-Headers"),
        Some("last-event-id")
    );
}

#[test]
fn the_cap_counts_websocket_and_sse_clients_together() {
    let s = TestServer::with(|c| c.max_ws_clients = Some(2));
    let (_ws, _) = ws_connect(s.addr, "/api/analytics");
    let mut es = Events::open(s.addr, "/api/analytics", &[]);
    es.welcome();
    let refused = request(
        s.addr,
        "GET",
        "/api/analytics",
        &["Accept: text/event-stream"],
    );
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("Retry-After"), Some("5"));
    assert_eq!(refused.json()["error"], "too_many_clients");
    let r = send_raw(
        s.addr,
        upgrade_request(s.addr, "/api/analytics", HANDSHAKE).as_bytes(),
    );
    assert_eq!(r.status, 503);
    // Plain REST still answers at the cap.
    assert_eq!(get(s.addr, "/api/analytics").status, 200);
    drop(es);
    assert!(eventually(TIMEOUT, || s.server().stream_clients() == 1));
    Events::open(s.addr, "/api/analytics", &[]).welcome();
}

#[test]
fn a_stalled_client_is_dropped_and_never_delays_the_others() {
    let s = TestServer::with(|c| {
        c.interval = Duration::from_millis(100);
        c.ws_max_skipped = 5;
    });
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    socket.connect(&s.addr.into()).unwrap();
    // Large samples fill the small windows quickly; it never reads past the head.
    let stalled = Events::send(socket.into(), "/api/analytics?fields=all", "HTTP/1.1", &[]);

    let mut fast = Events::open(s.addr, "/api/analytics", &[]);
    fast.welcome();
    let mut last = fast.sample().id();
    let started = Instant::now();
    while s.server().stream_clients() == 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "never dropped");
        let id = fast.sample().id();
        assert_eq!(id, last + 1, "the fast client misses nothing");
        last = id;
    }
    let skipped = metric(s.addr, "analytics_sse_events_skipped_total");
    assert!(skipped >= 5.0, "{skipped}");
    drop(stalled);
    assert_eq!(fast.sample().id(), last + 1);
}

#[test]
fn vanished_clients_are_noticed_on_keep_alive_and_after_connection_close() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(100));
    let mut streams = vec![
        Events::open(s.addr, "/api/analytics", &[]),
        // As nginx proxies by default: HTTP/1.0 and `Connection: close`.
        Events::send(
            TcpStream::connect(s.addr).unwrap(),
            "/api/analytics",
            "HTTP/1.0",
            &["Connection: close"],
        ),
        Events::open(s.addr, "/api/analytics", &["Connection: close"]),
    ];
    for es in &mut streams {
        es.welcome();
        let a = es.sample().id();
        assert_eq!(es.sample().id(), a + 1);
    }
    assert_eq!(s.server().stream_clients(), 3);
    drop(streams);
    assert!(eventually(TIMEOUT, || s.server().stream_clients() == 0));
    // Thread and descriptor counts: tests/baseline.rs, which runs alone in its process.
}

/// A client has nothing to send on an event stream: a request pipelined behind it (in the
/// same packet, or later) ends the stream with a close event and is never answered, so
/// no bytes pile up and no worker waits behind a stream.
#[test]
fn data_after_an_event_stream_request_ends_the_stream_unanswered() {
    let s = TestServer::start();
    let request = b"GET /api/analytics HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n";
    let pipelined = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    for together in [true, false] {
        let stream = TcpStream::connect(s.addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        if together {
            (&stream)
                .write_all(&[&request[..], &pipelined[..]].concat())
                .unwrap();
        } else {
            (&stream).write_all(request).unwrap();
            let mut line = String::new();
            while !line.starts_with("event: welcome") {
                line.clear();
                reader.read_line(&mut line).unwrap();
            }
            (&stream).write_all(pipelined).unwrap();
        }
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert!(rest.contains("event: close"), "{rest}");
        assert!(
            rest.contains("sent data after its event-stream request"),
            "{rest}"
        );
        assert!(
            !rest.contains("HTTP/1.1 200 OK\r\nContent-Type: application/json"),
            "{rest}"
        );
        assert!(
            !rest.contains("\"status\":\"ok\""),
            "the pipelined request was answered: {rest}"
        );
    }
    assert!(eventually(TIMEOUT, || s.server().stream_clients() == 0));
    assert_eq!(get(s.addr, "/healthz").status, 200);
}

#[test]
fn a_quiet_stream_gets_a_keep_alive_comment() {
    // One sample in 200 ticks of 100 ms: 20 s between samples; a comment after 1 s.
    let s = TestServer::with(|c| {
        c.interval = Duration::from_millis(100);
        c.heartbeat = Duration::from_secs(1);
    });
    let mut es = Events::open(s.addr, "/api/analytics?every=200", &[]);
    es.welcome();
    es.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut last_event = Instant::now();
    let (comment, quiet) = loop {
        let e = es.next().unwrap();
        match e.comment {
            Some(c) => break (c, last_event.elapsed()),
            None => last_event = Instant::now(),
        }
    };
    assert_eq!(comment, "keep-alive");
    // Not before the heartbeat; well before the next sample (generous: a loaded machine).
    assert!(
        quiet > Duration::from_millis(900) && quiet < Duration::from_secs(15),
        "{quiet:?}"
    );
}

#[test]
fn shutdown_ends_streams_with_a_close_event_and_a_spread_retry() {
    let s = TestServer::start();
    let mut es = Events::open(s.addr, "/api/analytics", &[]);
    es.welcome();
    es.sample();
    let shutdown = std::thread::spawn(move || s.shutdown());
    let close = std::iter::from_fn(|| es.next())
        .find(|e| e.get("event") != Some("sample"))
        .unwrap();
    assert_eq!(close.get("event"), Some("close"));
    let delay = close.data()["reconnect_after_ms"].as_u64().unwrap();
    assert!((1000..=5000).contains(&delay), "{delay}");
    assert_eq!(close.get("retry"), Some(delay.to_string().as_str()));
    assert!(es.next().is_none(), "then the stream ends");
    shutdown.join().unwrap();
}
