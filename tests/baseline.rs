//! After every client (WebSocket, event stream, HTTP) leaves, the server's thread and descriptor counts return to what
//! they were before (read from /proc/self: this binary runs only this test, so the counts
//! are the server's and this test's own).
#![cfg(target_os = "linux")] // threads and descriptors are counted in /proc

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use tungstenite::Message;

#[test]
fn threads_and_descriptors_return_to_baseline_after_clients_leave() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(100));
    // Warm up once so that lazily created threads (tiny_http's pool) exist at baseline.
    let _ = get(s.addr, "/api/analytics");
    let (ws, _) = ws_connect(s.addr, "/api/analytics");
    drop(ws);
    assert!(eventually(TIMEOUT, || s.server().stream_clients() == 0));
    let settled = || {
        let (t, f) = threads_and_fds();
        std::thread::sleep(Duration::from_millis(200));
        (t, f) == threads_and_fds()
    };
    assert!(eventually(Duration::from_secs(15), settled));
    let baseline = threads_and_fds();

    // 60 WebSocket clients on all paths, and 20 keep-alive HTTP connections.
    let mut sockets = Vec::new();
    for i in 0..60 {
        let path = ["/", "/api", "/api/analytics"][i % 3];
        sockets.push(ws_connect(s.addr, path).0);
    }
    // 30 event streams: keep-alive, and `Connection: close` as proxies send.
    let mut events = Vec::new();
    for i in 0..30 {
        let stream = TcpStream::connect(s.addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let close = if i % 2 == 0 {
            "Connection: close\r\n"
        } else {
            ""
        };
        events.push(open_event_stream(s.addr, close));
    }
    let mut http = Vec::new();
    for _ in 0..20 {
        let stream = TcpStream::connect(s.addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(&stream, "GET /api/analytics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        assert_eq!(read_response(&mut reader, false).status, 200);
        http.push(stream);
    }
    assert_eq!(s.server().stream_clients(), 90);
    let (threads, fds) = threads_and_fds();
    assert!(
        threads >= baseline.0 + 90,
        "a thread per WebSocket and event stream: {threads}"
    );
    assert!(fds >= baseline.1 + 90);

    // They leave every way a client can: close handshake, vanishing, half-close.
    for (i, mut ws) in sockets.into_iter().enumerate() {
        match i % 3 {
            0 => {
                ws.close(None).unwrap();
                while ws.read().is_ok() {}
            }
            1 => drop(ws),
            _ => {
                let _ = ws.send(Message::Ping("x".into()));
                ws.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
            }
        }
    }
    drop(http);
    drop(events);

    assert!(
        eventually(Duration::from_secs(20), || s.server().stream_clients() == 0),
        "every connection thread ended"
    );
    // tiny_http's pool threads above its minimum exit after 5 s idle.
    let back = eventually(Duration::from_secs(20), || {
        let (t, f) = threads_and_fds();
        t <= baseline.0 && f <= baseline.1
    });
    assert!(back, "baseline {baseline:?}, now {:?}", threads_and_fds());
}
