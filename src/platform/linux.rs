//! Linux: the POSIX backend plus what only Linux has.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use socket2::SockRef;

pub use super::posix::{raise_fd_limit, shutdown_signals, waiting};

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

/// A cgroup limit at or above this means none (v1 writes `PAGE_COUNTER_MAX` pages).
const NO_LIMIT: u64 = 1 << 60;

/// The tightest cgroup memory limit over this process's cgroups and their ancestors (v2
/// `memory.max`, v1 `memory.limit_in_bytes`; both where a host mounts both), else the
/// machine's physical memory.
pub fn memory_limit() -> Option<(u64, &'static str)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = cgroup_dirs(&cgroups, "memory")
        .into_iter()
        .map(|(dir, v2)| match v2 {
            true => format!("{dir}/memory.max"),
            false => format!("{dir}/memory.limit_in_bytes"),
        })
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .filter_map(|value| value.trim().parse::<u64>().ok())
        .filter(|&bytes| bytes > 0 && bytes < NO_LIMIT)
        .min();
    match (limit, super::posix::physical_memory()) {
        (Some(limit), Some(physical)) if physical < limit => Some((physical, "physical memory")),
        (Some(limit), _) => Some((limit, "cgroup limit")),
        (None, physical) => physical.map(|bytes| (bytes, "physical memory")),
    }
}

/// The tightest cgroup CPU quota over this process's cgroups and their ancestors, in
/// CPUs (v2 `cpu.max`, v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`): 0.1 on a host
/// that gives a tenth of a core.
pub fn cpu_limit() -> Option<f64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let read = |file: String| std::fs::read_to_string(file).ok();
    cgroup_dirs(&cgroups, "cpu")
        .into_iter()
        .filter_map(|(dir, v2)| {
            let (quota, period) = match v2 {
                true => {
                    let max = read(format!("{dir}/cpu.max"))?;
                    let (quota, period) = max.trim().split_once(' ')?;
                    (quota.parse::<f64>().ok()?, period.parse::<f64>().ok()?)
                }
                false => (
                    read(format!("{dir}/cpu.cfs_quota_us"))?
                        .trim()
                        .parse()
                        .ok()?,
                    read(format!("{dir}/cpu.cfs_period_us"))?
                        .trim()
                        .parse()
                        .ok()?,
                ),
            };
            (quota > 0.0 && period > 0.0).then(|| quota / period)
        })
        .min_by(f64::total_cmp)
}

/// The directories of the cgroups named in `/proc/self/cgroup` (`hierarchy:controllers:path`
/// lines) that may hold a limit of `controller`, each cgroup's and every ancestor's, with
/// whether they are v2: at the usual mount points of v2 (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts) and of v1's controller.
fn cgroup_dirs(cgroups: &str, controller: &str) -> Vec<(String, bool)> {
    let v1 = format!("/sys/fs/cgroup/{controller}");
    let mut dirs = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let places: &[(&str, bool)] = if controllers.is_empty() {
            &[("/sys/fs/cgroup", true), ("/sys/fs/cgroup/unified", true)]
        } else if controllers.split(',').any(|c| c == controller) {
            &[(&v1, false)]
        } else {
            continue;
        };
        let mut dir = path.trim_end_matches('/');
        loop {
            for &(root, v2) in places {
                dirs.push((format!("{root}{dir}"), v2));
            }
            match dir.rfind('/') {
                Some(parent) => dir = &dir[..parent],
                None => break,
            }
        }
    }
    dirs
}

/// `prctl(PR_FUTEX_HASH, ...)` (Linux 6.16), not yet in the libc crate.
const PR_FUTEX_HASH: libc::c_int = 78;
const PR_FUTEX_HASH_SET_SLOTS: libc::c_ulong = 1;
/// The largest futex hash asked for: 64 bytes of kernel memory a bucket, so 4 MiB.
const MAX_FUTEX_SLOTS: usize = 1 << 16;

/// Sizes this process's private futex hash to `threads` buckets (a power of two). Older
/// kernels, and kernels built without private hashes, refuse: nothing changes there.
pub fn expect_threads(threads: usize) -> bool {
    let slots = threads.next_power_of_two().clamp(16, MAX_FUTEX_SLOTS) as libc::c_ulong;
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let set = unsafe { libc::prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, slots, 0, 0) };
    if set != 0 {
        log::debug!(
            "futex hash left as the kernel sized it: {}",
            io::Error::last_os_error()
        );
    }
    set == 0
}

/// The process's futex hash buckets, if it has a private hash.
#[cfg(test)]
fn futex_slots() -> Option<libc::c_int> {
    const PR_FUTEX_HASH_GET_SLOTS: libc::c_ulong = 2;
    // SAFETY: as above.
    let slots = unsafe { libc::prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0) };
    (slots > 0).then_some(slots)
}

/// The lowest priority: a scheduling weight of 15 against a nice-0 thread's 1024.
const LOWEST_NICE: libc::c_int = 19;

/// Lowers the calling thread to nice 19. Linux applies `setpriority` to one thread when
/// given its id (POSIX says the process). A refusal changes nothing and is not an error.
pub fn lower_priority() {
    // SAFETY: gettid and setpriority take and return integers only.
    unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            LOWEST_NICE,
        );
    }
}

pub fn tune(socket: &SockRef<'_>, idle: Duration, interval: Duration) -> io::Result<()> {
    super::posix::keepalive(socket, idle, interval)?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// (RSS in bytes, thread count) from /proc/self/status, read by one thread at a time:
/// the caps count one descriptor for it.
pub fn process_stats() -> Option<(u64, u64)> {
    static READING: Mutex<()> = Mutex::new(());
    let status = {
        let _one = crate::sync::lock(&READING);
        std::fs::read_to_string("/proc/self/status").ok()?
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")? * 1024, field("Threads:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_looked_for_in_every_cgroup_and_its_ancestors() {
        let dirs = cgroup_dirs("4:memory:/a/b\n3:cpu:/a\n0::/c\n", "memory");
        assert_eq!(
            dirs,
            [
                ("/sys/fs/cgroup/memory/a/b".to_string(), false),
                ("/sys/fs/cgroup/memory/a".to_string(), false),
                ("/sys/fs/cgroup/memory".to_string(), false),
                ("/sys/fs/cgroup/c".to_string(), true),
                ("/sys/fs/cgroup/unified/c".to_string(), true),
                ("/sys/fs/cgroup".to_string(), true),
                ("/sys/fs/cgroup/unified".to_string(), true),
            ]
        );
        let dirs = cgroup_dirs("4:memory:/a/b\n3:cpu:/a\n", "cpu");
        assert_eq!(
            dirs,
            [
                ("/sys/fs/cgroup/cpu/a".to_string(), false),
                ("/sys/fs/cgroup/cpu".to_string(), false),
            ]
        );
        let (bytes, _) = memory_limit().expect("Linux always tells its memory");
        assert!(bytes > 0);
    }

    #[test]
    fn the_futex_hash_is_sized_for_the_threads_where_the_kernel_has_one() {
        if expect_threads(5000) {
            assert_eq!(futex_slots(), Some(8192));
            assert!(expect_threads(1 << 30), "sizes are capped, not refused");
            assert_eq!(futex_slots(), Some(MAX_FUTEX_SLOTS as libc::c_int));
        } else {
            eprintln!(
                "this kernel has no private futex hash (Linux < 6.16): nothing to size, \
                 checked that asking changes nothing"
            );
            assert_eq!(futex_slots(), None);
        }
    }
}
