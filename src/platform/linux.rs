//! Linux: the POSIX backend plus what only Linux has.

use std::io;
use std::time::Duration;

use socket2::SockRef;

pub use super::posix::{raise_fd_limit, send_now, shutdown_signals};

pub const NAME: &str = "linux";

/// Unacknowledged data older than this aborts the connection.
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Each thread costs a few memory mappings (stack, guard page, and what the allocator
/// maps); past `vm.max_map_count` thread creation fails or the process aborts.
pub fn thread_limit() -> Option<usize> {
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(65_530);
    Some(max.saturating_sub(2000) / 5)
}

pub fn tune(socket: &SockRef<'_>, idle: Duration, interval: Duration) -> io::Result<()> {
    super::posix::keepalive(socket, idle, interval)?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// (RSS in bytes, thread count) from /proc/self/status.
pub fn process_stats() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")? * 1024, field("Threads:")?))
}
