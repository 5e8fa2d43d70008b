//! POSIX: macOS, the BSDs, and the parts Linux shares with them.

use std::io;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, bounded};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use socket2::{SockRef, TcpKeepalive};

#[allow(dead_code)] // unused when the Linux backend wraps this one
pub const NAME: &str = "posix";

pub fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write one `rlimit` we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                // macOS refuses more than OPEN_MAX for the soft limit.
                rlim_cur: if cfg!(target_os = "macos") {
                    limit.rlim_max.min(10_240)
                } else {
                    limit.rlim_max
                },
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on most targets, not all
    Some(limit.rlim_cur as u64)
}

/// The machine's physical memory (`sysconf`): a POSIX system has no container limit
/// that this backend can read.
pub fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf takes an integer and returns one; no memory is passed.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (pages, size) = (u64::try_from(pages).ok()?, u64::try_from(size).ok()?);
    pages.checked_mul(size).filter(|&bytes| bytes > 0)
}

#[allow(dead_code)] // unused when the Linux backend wraps this one
pub fn memory_limit() -> Option<(u64, &'static str)> {
    physical_memory().map(|bytes| (bytes, "physical memory"))
}

#[allow(dead_code)]
pub fn thread_limit() -> Option<usize> {
    None
}

#[allow(dead_code)] // unused when the Linux backend wraps this one
pub fn cpu_limit() -> Option<f64> {
    None
}

/// Threads keep their priority: only Linux sets one thread's (see
/// `platform::lower_priority`).
#[allow(dead_code)] // unused when the Linux backend wraps this one
pub fn lower_priority() {}

/// No futex hash to size (Linux has one; see `platform::expect_threads`).
#[allow(dead_code)] // unused when the Linux backend wraps this one
pub fn expect_threads(_threads: usize) -> bool {
    false
}

#[allow(dead_code)]
pub fn tune(socket: &SockRef<'_>, idle: Duration, interval: Duration) -> io::Result<()> {
    keepalive(socket, idle, interval)
}

pub fn keepalive(socket: &SockRef<'_>, idle: Duration, interval: Duration) -> io::Result<()> {
    let keepalive = TcpKeepalive::new().with_time(idle);
    #[cfg(not(any(target_os = "openbsd", target_os = "haiku")))]
    let keepalive = keepalive.with_interval(interval).with_retries(3);
    #[cfg(any(target_os = "openbsd", target_os = "haiku"))]
    let _ = interval;
    socket.set_tcp_keepalive(&keepalive)
}

pub fn waiting(socket: &TcpStream, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and recv only writes
    // initialised bytes into it.
    let buf = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    match SockRef::from(socket).recv_with_flags(buf, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok(read) => Some(read),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(0),
        Err(_) => None,
    }
}

#[allow(dead_code)]
pub fn process_stats() -> Option<(u64, u64)> {
    None
}

/// SIGHUP (the terminal closed, a run without `nohup`) would end the process at once,
/// with no close frame for any stream and nothing logged: it stops the server as SIGTERM
/// does.
pub fn shutdown_signals() -> io::Result<Receiver<&'static str>> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = bounded(1);
    thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = tx.send(match signal {
                    SIGINT => "SIGINT",
                    SIGHUP => "SIGHUP",
                    _ => "SIGTERM",
                });
            }
        })?;
    Ok(rx)
}
