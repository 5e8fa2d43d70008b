//! The watcher: one epoll thread that turns "this client sent bytes" into a channel
//! message.
//!
//! Each WebSocket thread must react to two things: new samples (a crossbeam channel from
//! the hub) and frames from its client (pings, close). A thread can block on only one of
//! them, so the socket side is converted to the other: the watcher waits on every
//! WebSocket's socket at once and, when one becomes readable (or hangs up), sends a unit
//! message on that connection's channel. The connection thread then blocks in a single
//! `select!` and wakes once per sample and once per client frame, never on a timer.
//!
//! Registrations are one-shot: the connection re-arms after it has read everything, so a
//! client that sends faster than its thread reads costs one wake-up, not one per byte.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, bounded};

const STOP: u64 = 0;
const EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;

pub struct Watcher {
    shared: Arc<Shared>,
    stop: UnixStream,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    epoll: OwnedFd,
    wakers: Mutex<HashMap<u64, Sender<()>>>,
    next_token: AtomicU64,
}

/// One watched socket. `readable` receives a message when the socket has data (or was
/// closed); call [`Watch::rearm`] after reading until `WouldBlock`.
pub struct Watch {
    shared: Arc<Shared>,
    fd: RawFd,
    token: u64,
    pub readable: Receiver<()>,
}

impl Watcher {
    pub fn start() -> io::Result<Watcher> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `epoll` is a descriptor we just created and own.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let shared = Arc::new(Shared {
            epoll,
            wakers: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(STOP + 1),
        });
        // Writing to `stop` wakes the thread so that it can exit.
        let (stop, stop_rx) = UnixStream::pair()?;
        shared.ctl(
            libc::EPOLL_CTL_ADD,
            stop_rx.as_raw_fd(),
            libc::EPOLLIN as u32,
            STOP,
        )?;
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("ws-watcher".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _keep_open = stop_rx;
                thread_shared.run();
            })?;
        Ok(Watcher {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Starts watching `fd`. Data that arrived before this call is reported at once.
    pub fn watch(&self, fd: RawFd) -> io::Result<Watch> {
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = bounded(1);
        self.shared.lock().insert(token, tx);
        let watch = Watch {
            shared: Arc::clone(&self.shared),
            fd,
            token,
            readable: rx,
        };
        self.shared.ctl(libc::EPOLL_CTL_ADD, fd, EVENTS, token)?;
        Ok(watch)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = (&self.stop).write_all(&[1]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Watch {
    /// Asks for the next readiness event.
    pub fn rearm(&self) -> io::Result<()> {
        self.shared
            .ctl(libc::EPOLL_CTL_MOD, self.fd, EVENTS, self.token)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.shared.ctl(libc::EPOLL_CTL_DEL, self.fd, 0, self.token);
        self.shared.lock().remove(&self.token);
    }
}

impl Shared {
    fn run(&self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            // SAFETY: `events` has room for `events.len()` entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    -1,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("WebSocket watcher stopped: epoll_wait failed: {err}");
                return;
            }
            let wakers = self.lock();
            for event in &events[..n as usize] {
                let token = event.u64;
                if token == STOP {
                    return;
                }
                if let Some(tx) = wakers.get(&token) {
                    // Full means a wake-up is already pending: nothing to add.
                    let _ = tx.try_send(());
                }
            }
        }
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Sender<()>>> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }
}
