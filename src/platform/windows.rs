//! Windows: std and crates only; see the README's platforms table for what it lacks.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, bounded};
use signal_hook::consts::{SIGINT, SIGTERM};
use socket2::{SockRef, TcpKeepalive};

pub const NAME: &str = "windows";

/// Sockets are handles, and the handle table has no small per-process limit.
pub fn raise_fd_limit() -> Option<u64> {
    None
}

/// Not read here: the caller uses its documented default (see `budget`).
pub fn memory_limit() -> Option<(u64, &'static str)> {
    None
}

pub fn thread_limit() -> Option<usize> {
    None
}

pub fn cpu_limit() -> Option<f64> {
    None
}

/// Threads keep their priority: only Linux sets one thread's (see
/// `platform::lower_priority`).
pub fn lower_priority() {}

/// No futex hash to size (Linux has one; see `platform::expect_threads`).
pub fn expect_threads(_threads: usize) -> bool {
    false
}

pub fn tune(socket: &SockRef<'_>, idle: Duration, interval: Duration) -> io::Result<()> {
    socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle).with_interval(interval))
}

/// Winsock has no per-call non-blocking flag to peek with: never known.
pub fn waiting(_socket: &TcpStream, _buf: &mut [u8]) -> Option<usize> {
    None
}

pub fn process_stats() -> Option<(u64, u64)> {
    None
}

/// Ctrl-C arrives as SIGINT through the C runtime (SIGTERM only if raised in-process); a
/// flag is all a handler may set there, so a thread looks at it ten times a second.
pub fn shutdown_signals() -> io::Result<Receiver<&'static str>> {
    let int = Arc::new(AtomicBool::new(false));
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(SIGINT, Arc::clone(&int))?;
    signal_hook::flag::register(SIGTERM, Arc::clone(&term))?;
    let (tx, rx) = bounded(1);
    thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                thread::sleep(Duration::from_millis(100));
                if int.load(Ordering::Relaxed) {
                    let _ = tx.send("SIGINT");
                    return;
                }
                if term.load(Ordering::Relaxed) {
                    let _ = tx.send("SIGTERM");
                    return;
                }
            }
        })?;
    Ok(rx)
}
