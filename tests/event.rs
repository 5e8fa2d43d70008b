//! `POST /api/event` over real sockets: the only request whose body is read, and how its
//! framing is held to (length known up front, at most 4 KiB, whole by the head's
//! deadline), so that a body never bleeds into the next request on a connection.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const EVENT: &str = r#"{"n":"pageview","u":"https://example.com/","d":"example.com"}"#;

fn post(body: &str, extra: &str) -> String {
    format!(
        "POST /api/event HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n{extra}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One connection, for requests that must keep it open.
fn connect(addr: std::net::SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

#[test]
fn in_sim_mode_an_event_is_refused_with_the_way_to_live_mode() {
    let s = TestServer::start();
    let r = send_raw(s.addr, post(EVENT, "Connection: close\r\n").as_bytes());
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "not_live");
    assert!(r.json()["message"].as_str().unwrap().contains("MODE=live"));
    let r = get(s.addr, "/api/event");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("POST, OPTIONS"));
    let r = request(
        s.addr,
        "OPTIONS",
        "/api/event",
        &[
            "Origin: https://example.com",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: content-type",
        ],
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("Access-Control-Allow-Methods"),
        Some("POST, OPTIONS")
    );
    assert_eq!(
        r.header("Access-Control-Allow-Headers"),
        Some("content-type")
    );
}

#[test]
fn a_read_body_keeps_the_connection_and_pipelined_requests_stay_apart() {
    let s = TestServer::start();
    let (mut stream, mut reader) = connect(s.addr);
    // An event, then a GET, in one write: the body must end exactly where its length says.
    let pipelined = format!(
        "{}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        post(EVENT, "")
    );
    stream.write_all(pipelined.as_bytes()).unwrap();
    let r = read_response(&mut reader, false);
    assert_eq!(r.status, 409);
    assert_eq!(
        r.header("Connection"),
        None,
        "the body was read: keep-alive"
    );
    let r = read_response(&mut reader, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok");
    // A body sent in pieces, within the deadline, is waited for.
    let request = post(EVENT, "");
    let (head, body) = request.split_at(request.len() - 10);
    stream.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_response(&mut reader, false).status, 409);
}

#[test]
fn a_body_longer_than_its_length_is_read_as_the_next_request() {
    let s = TestServer::start();
    // Content-Length 5 of `{"n":...}`: the rest is the next "request", refused as such.
    let raw =
        format!("POST /api/event HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{EVENT}\r\n\r\n");
    let (mut stream, mut reader) = connect(s.addr);
    stream.write_all(raw.as_bytes()).unwrap();
    assert_eq!(read_response(&mut reader, false).status, 409);
    let r = read_response(&mut reader, false);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("Connection"), Some("close"));
}

#[test]
fn a_body_shorter_than_its_length_times_out_with_408() {
    let s = TestServer::with(|c| c.header_timeout = Duration::from_millis(800));
    let raw = "POST /api/event HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"n\":";
    let (mut stream, mut reader) = connect(s.addr);
    let sent = Instant::now();
    stream.write_all(raw.as_bytes()).unwrap();
    let r = read_response(&mut reader, false);
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.json()["error"], "request_timeout");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "the head's deadline holds the body too"
    );
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0, "then closed");
}

#[test]
fn events_too_large_or_chunked_are_refused_before_they_are_read() {
    let s = TestServer::start();
    let big = "x".repeat(4097);
    let r = send_raw(s.addr, post(&big, "").as_bytes());
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body_too_large");
    assert_eq!(r.header("Connection"), Some("close"));
    let r = send_raw(
        s.addr,
        post(&"x".repeat(4096), "Connection: close\r\n").as_bytes(),
    );
    assert_eq!(r.status, 409, "4 KiB is taken");
    // A length far past the limit is refused from its head alone.
    let raw = "POST /api/event HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999\r\n\r\n";
    assert_eq!(send_raw(s.addr, raw.as_bytes()).status, 413);
    let raw = "POST /api/event HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"n\":\r\n0\r\n\r\n";
    let r = send_raw(s.addr, raw.as_bytes());
    assert_eq!(r.status, 411);
    assert_eq!(r.json()["error"], "length_required");
    // Other routes still take no body: route first, then the body.
    let raw = format!(
        "POST /api/analytics HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{EVENT}",
        EVENT.len()
    );
    assert_eq!(send_raw(s.addr, raw.as_bytes()).status, 405);
    let raw = format!(
        "GET /api/event HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{EVENT}",
        EVENT.len()
    );
    let r = send_raw(s.addr, raw.as_bytes());
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("POST, OPTIONS"));
}

#[test]
fn the_tracker_is_small_and_keeps_nothing_on_the_visitors_browser() {
    let s = TestServer::start();
    let r = get(s.addr, "/tracker.js");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());
    let script = r.text();
    for kept in ["cookie", "localStorage", "sessionStorage", "indexedDB"] {
        assert!(!script.contains(kept), "{kept}");
    }
    for part in [
        "/api/event",
        "sendBeacon",
        "pushState",
        "popstate",
        "data-domain",
    ] {
        assert!(script.contains(part), "{part}");
    }
}
