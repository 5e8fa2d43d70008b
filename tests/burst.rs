//! No connection is left unserved. tiny_http's task pool can lose a wake-up when several
//! connections arrive at once: the later ones sit queued with no thread until some other
//! connection ends (seen as 52-62 of 64 `wrk -c64` connections unserved when tiny_http
//! served client sockets, and 12 of 1000 handshakes in the design before the edge). The
//! edge now accepts every connection itself and tiny_http only sees its few internal ones
//! (src/edge); these bursts stay as the proof: every connection must get its answer, in
//! every round. A load tier: `cargo test -- --include-ignored` (as `scripts/test.sh` does).

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const ROUNDS: usize = 20;
/// Generous: a served connection answers in milliseconds; an unserved one never does.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// A thousand upgrades at once take longer (two threads each); in this test no connection
/// ends before all are answered, so a stuck one is never released by accident.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(5);

/// The bursts run one at a time. Together, 1000 handshakes (two threads each) and the 64
/// keep-alive clients share two cores, and a client can miss the 1 s deadline from CPU
/// alone: not the lost wake-up these tests are for.
static ONE_BURST: Mutex<()> = Mutex::new(());

/// `n` clients connect at once, each sending keep-alive requests until `hold` passes.
/// Returns how many never got an answer.
fn keep_alive_burst(addr: std::net::SocketAddr, n: usize, hold: Duration) -> usize {
    let barrier = Arc::new(Barrier::new(n));
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                let Ok(stream) = TcpStream::connect(addr) else {
                    return false;
                };
                stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let started = Instant::now();
                let mut answered = false;
                while !answered || started.elapsed() < hold {
                    if write!(&stream, "GET /api/analytics HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
                        return answered;
                    }
                    let mut line = String::new();
                    if std::io::BufRead::read_line(&mut reader, &mut line).is_err()
                        || line.is_empty()
                    {
                        return answered;
                    }
                    let _ = read_rest(&mut reader);
                    answered = true;
                }
                true
            })
        })
        .collect();
    clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .filter(|served| !served)
        .count()
}

/// Reads headers and body of a response whose status line was already read.
fn read_rest(reader: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut len = 0;
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(reader, &mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)
}

/// `n` WebSocket handshakes at once from `threads` threads; returns how many got no 101.
fn handshake_burst(addr: std::net::SocketAddr, n: usize, threads: usize) -> usize {
    let barrier = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                // Open all of this thread's connections first, then read the answers, so
                // the handshakes really are concurrent.
                let streams: Vec<TcpStream> = (0..n / threads)
                    .filter_map(|_| {
                        let s = TcpStream::connect(addr).ok()?;
                        s.set_read_timeout(Some(HANDSHAKE_WITHIN)).unwrap();
                        (&s).write_all(upgrade_request(addr, "/api", HANDSHAKE).as_bytes())
                            .ok()?;
                        Some(s)
                    })
                    .collect();
                let mut missing = n / threads - streams.len();
                for s in &streams {
                    let mut head = [0u8; 12];
                    let ok = (&*s).read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 101";
                    missing += usize::from(!ok);
                }
                missing
            })
        })
        .collect();
    workers.into_iter().map(|w| w.join().unwrap()).sum()
}

#[test]
#[ignore = "load tier (about 25 s): scripts/test.sh runs it"]
fn every_keep_alive_connection_in_a_burst_is_served() {
    let _one = ONE_BURST.lock().unwrap_or_else(|e| e.into_inner());
    let s = TestServer::start();
    for round in 0..ROUNDS {
        // Connections stay busy longer than the answer deadline, as wrk's do: a connection
        // that ends would free a pool thread and hide the bug.
        let unserved = keep_alive_burst(s.addr, 64, ANSWER_WITHIN + Duration::from_millis(200));
        assert_eq!(
            unserved, 0,
            "round {round}: {unserved} of 64 connections never answered"
        );
    }
}

#[test]
#[ignore = "load tier (about 7 s): scripts/test.sh runs it"]
fn every_websocket_handshake_in_a_burst_is_answered() {
    let _one = ONE_BURST.lock().unwrap_or_else(|e| e.into_inner());
    let s = TestServer::with(|c| c.max_ws_clients = Some(5000));
    for round in 0..ROUNDS {
        let missing = handshake_burst(s.addr, 1000, 20);
        assert_eq!(
            missing, 0,
            "round {round}: {missing} of 1000 handshakes never answered"
        );
        assert!(
            eventually(Duration::from_secs(20), || s.server().stream_clients() == 0),
            "round {round}: clients left"
        );
    }
}
