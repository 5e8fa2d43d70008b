//! Memory per streaming client: 1000 idle WebSocket clients, then 1000 idle SSE clients,
//! on the built binary, RSS read from /proc. Prints the figures quoted in the README;
//! asserts only a generous bound (the default tungstenite read buffer alone would be
//! 128 KiB per client).
#![cfg(target_os = "linux")] // RSS, threads and thread stacks are read from /proc

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;

const CLIENTS: usize = 1000;
/// The connection threads' stack size (`edge::STACK`): how their stacks are told apart.
const STACK: usize = 128 * 1024;

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

/// The deepest a stream thread has written into its stack: thread stacks are mapped
/// zeroed, so the lowest non-zero byte of each is its high-water mark.
fn stack_depths(pid: u32, size: usize) -> Vec<usize> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut depths = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (start, end) = fields[0].split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        // Anonymous read-write mappings of exactly the connection threads' stack size.
        if fields[1] != "rw-p" || fields.len() > 5 || (end - start) as usize != size {
            continue;
        }
        let mut stack = vec![0u8; size];
        use std::io::Seek;
        mem.seek(std::io::SeekFrom::Start(start)).unwrap();
        mem.read_exact(&mut stack).unwrap();
        let lowest = stack.iter().position(|&b| b != 0).unwrap_or(size);
        depths.push(size - lowest);
    }
    depths
}

/// How deep stream threads write into their stacks, after their opening, ten samples and
/// a ping answered. Printed, not asserted: every page of stack a thread touches stays
/// resident for its client's life, so the deepest thread tells how many pages each client
/// pays for (two, 8 KiB, in ARCHITECTURE.md's figures: glibc's thread block and static TLS
/// take the first 4.6 KiB, a stream's frames about 3.5 KiB; see `edge::STACK`), but the
/// depth follows the compiler's frame layout, which changes with its version and inlining.
/// It is a guide for whoever changes a stream's code; what users pay, RSS per idle client,
/// is asserted above. A client with options of its own (`?fields=all&seq=1`) encodes each
/// sample on its thread and reaches a third page (8.8 KiB).
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "measures the release build's frames: cargo test --release (scripts/test.sh) runs it"
)]
fn prints_how_deep_stream_threads_write_into_their_stacks() {
    let p = Process::spawn(&[("HOST", "127.0.0.1"), ("PORT", "0"), ("INTERVAL_MS", "100")]);
    let addr = p.wait_until_listening();
    let mut clients: Vec<TcpStream> = (0..10).map(|_| open_websocket(addr)).collect();
    for ws in &mut clients {
        // An empty masked ping: the thread reads it and writes the pong.
        ws.write_all(&[0x89, 0x80, 1, 2, 3, 4]).unwrap();
    }
    clients.extend((0..10).map(|_| open_sse(addr)));
    let sent = |name: &str| -> u64 {
        let metrics = get(addr, "/metrics").text();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        eventually(TIMEOUT, || sent("analytics_ws_frames_sent_total ")
            >= 10 * 11
            && sent("analytics_sse_events_sent_total ") >= 10 * 11),
        "every stream sends ten samples"
    );
    // Connection threads of the /metrics requests may be among them, or their stacks
    // cached by glibc for the next thread.
    let depths = stack_depths(p.child.id(), STACK);
    let deepest = depths.iter().max().copied().unwrap_or(0);
    println!(
        "stack depth of {} connection threads ({} streams): deepest {deepest} bytes, {} pages \
         of 4 KiB; all: {depths:?}",
        depths.len(),
        clients.len(),
        deepest.div_ceil(4096)
    );
    drop(clients);
}
