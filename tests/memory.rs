//! Memory per streaming client: 1000 idle WebSocket clients, then 1000 idle SSE clients,
//! on the built binary, RSS read from /proc. Prints the figures quoted in the README;
//! asserts only a generous bound (the default tungstenite read buffer alone would be
//! 128 KiB per client).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};

use common::*;

const CLIENTS: usize = 1000;

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Opens a WebSocket with a raw socket and reads the 101 and the welcome: a client that
/// then stays idle costs the server, not this process.
fn open_websocket(addr: SocketAddr) -> TcpStream {
    let (stream, mut reader) = raw_upgrade(addr, "/api/analytics");
    let mut head = [0u8; 4];
    reader.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x81, "the welcome frame follows");
    stream
}

/// An event stream, read up to its first sample.
fn open_sse(addr: SocketAddr) -> TcpStream {
    open_event_stream(addr, "").0
}

#[test]
fn rss_per_idle_websocket_client_is_small() {
    measure("WebSocket", open_websocket);
}

#[test]
fn rss_per_idle_sse_client_is_small() {
    measure("SSE", open_sse);
}

fn measure(kind: &str, open: fn(SocketAddr) -> TcpStream) {
    let p = Process::spawn(&[
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("MAX_WS_CLIENTS", "5000"),
    ]);
    let addr = p.wait_until_listening();
    let pid = p.child.id();
    // Warm up: one client in and out, so one-time allocations are in the baseline.
    drop(open(addr));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = status_field(pid, "VmRSS:");
    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| open(addr)).collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = status_field(pid, "VmRSS:");
    let threads = status_field(pid, "Threads:");
    let per_client = (after.saturating_sub(before)) * 1024 / CLIENTS as u64;
    println!(
        "{CLIENTS} idle {kind} clients: RSS {before} kB -> {after} kB, {per_client} bytes \
         ({:.1} KiB) per client, {threads} threads",
        per_client as f64 / 1024.0
    );
    assert!(threads as usize >= CLIENTS, "a thread per client");
    assert!(
        per_client < 64 * 1024,
        "RSS per idle client is {per_client} bytes"
    );
    assert_eq!(get(addr, "/api/analytics").status, 200, "still answering");
    drop(clients);
}
