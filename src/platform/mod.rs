//! The platform seam: the only code that knows which operating system it runs on.
//!
//! Everything else in `src/` is portable std and crates. Three backends:
//!
//! | backend | where | what it adds |
//! |---|---|---|
//! | `linux` | Linux (unless the `portable` feature is on) | `TCP_USER_TIMEOUT`, a lower priority for one thread, the cgroup memory limit (v1 and v2), the thread budget from `vm.max_map_count`, a futex hash sized for it, RSS and thread count from `/proc` |
//! | `posix` | macOS, the BSDs, and Linux with `--features portable` (what CI runs a second time) | descriptor limits (`getrlimit`), physical memory (`sysconf`), signals (SIGTERM, SIGINT, SIGHUP) |
//! | `windows` | Windows | nothing beyond std: no descriptor limit to raise, replies are written by the connection's thread, Ctrl-C through signal-hook's flag |
//!
//! What the edge relies on from the OS is small on purpose: a listening socket, blocking
//! reads and writes with timeouts (std), readiness (mio: epoll, kqueue, or AFD on
//! Windows), and the functions below. Where a backend has no equivalent, the function says
//! so and the caller degrades as documented in the README's platforms table.

#![allow(unsafe_code)] // the seam is where the OS is called directly; each block says why it is sound

#[cfg(all(target_os = "linux", not(feature = "portable")))]
mod linux;
#[cfg(unix)]
mod posix;
#[cfg(windows)]
mod windows;

#[cfg(all(target_os = "linux", not(feature = "portable")))]
use linux as os;
#[cfg(all(unix, not(all(target_os = "linux", not(feature = "portable")))))]
use posix as os;
#[cfg(windows)]
use windows as os;

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use crossbeam_channel::Receiver;

/// Which backend this build uses: `linux`, `posix` or `windows`.
pub const NAME: &str = os::NAME;

/// Raises the soft limit on open descriptors to the hard limit and returns it. `None`
/// where the OS has no such per-process limit (Windows).
pub fn raise_fd_limit() -> Option<u64> {
    os::raise_fd_limit()
}

/// How many threads the process can create before the OS refuses, if the OS says.
pub fn thread_limit() -> Option<usize> {
    os::thread_limit()
}

/// Memory this process may use, in bytes, and where that figure comes from: the
/// container's limit (Linux cgroups, v2 `memory.max` or v1 `memory.limit_in_bytes`,
/// the tightest over the process's cgroup and its ancestors) when there is one, else the
/// machine's physical memory. `None` where the OS does not say cheaply (Windows).
pub fn memory_limit() -> Option<(u64, &'static str)> {
    os::memory_limit()
}

/// The CPU this process may use, in CPUs, where a container's quota says (Linux cgroups,
/// v2 `cpu.max` or v1 `cpu.cfs_quota_us`, the tightest over the process's cgroup and its
/// ancestors): 0.1 on a host that gives a tenth of a core. `None` without a quota, or
/// where the OS does not say cheaply.
pub fn cpu_limit() -> Option<f64> {
    os::cpu_limit()
}

/// Prepares the process for up to `threads` threads blocked at once (parked stream
/// threads). Linux from 6.16 gives each process a private futex hash sized by its CPUs,
/// not its threads: 16 buckets on 2 CPUs, so with 5000 parked threads every wake-up walked
/// a chain of about 300 waiters. Sized here to one bucket per expected thread. A no-op
/// where the OS has no such table or refuses; returns whether it was applied. It can take
/// the kernel tens of milliseconds: call it once serving.
pub fn expect_threads(threads: usize) -> bool {
    os::expect_threads(threads)
}

/// Lowers the calling thread's CPU priority below the server's own threads (the generator,
/// accept, the watchdog, health probes), so that clients' work, however many threads it
/// keeps busy, cannot starve them on a host with a fraction of a CPU. It cannot be raised
/// again. Linux only; elsewhere a no-op.
pub fn lower_priority() {
    os::lower_priority()
}

/// Options for an accepted client socket: no Nagle delay (small frames go out at once),
/// keepalive probes (a peer that vanished is found after about 90 s of silence), and on
/// Linux `TCP_USER_TIMEOUT` (a peer that stops acknowledging is dropped after 30 s, not
/// after 15 minutes of retransmissions).
pub fn tune(socket: &TcpStream) -> io::Result<()> {
    socket.set_nodelay(true)?;
    let sock = socket2::SockRef::from(socket);
    sock.set_keepalive(true)?;
    os::tune(&sock, Duration::from_secs(60), Duration::from_secs(10))
}

/// Copies into `buf` the first bytes the peer of `socket` has sent that are waiting to be
/// read, without blocking and without taking them: how many (0 when none, or the peer
/// closed). `None` where the OS cannot tell cheaply (Windows), or the socket failed.
pub fn waiting(socket: &TcpStream, buf: &mut [u8]) -> Option<usize> {
    os::waiting(socket, buf)
}

/// Resident memory in bytes and thread count of this process, where the OS tells cheaply.
pub fn process_stats() -> Option<(u64, u64)> {
    os::process_stats()
}

/// A channel that receives `"SIGTERM"`, `"SIGINT"` (Ctrl-C on Windows) or `"SIGHUP"`
/// (not on Windows, which has none) once: each asks for a graceful shutdown.
pub fn shutdown_signals() -> io::Result<Receiver<&'static str>> {
    os::shutdown_signals()
}
