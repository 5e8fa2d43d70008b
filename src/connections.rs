//! HTTP connections: timeouts, limits and unserved connections, enforced from outside
//! tiny_http.
//!
//! tiny_http gives each connection a thread that reads requests forever, with no
//! timeouts, no header size limit and no connection cap, and its task pool can lose a
//! wake-up and leave a new connection queued with no thread at all. It shows us a
//! connection only once a whole request has been parsed, which is too late for all four.
//! So a thread of ours looks at every accepted socket every 100 ms (more, with thousands
//! of WebSockets open: see `CHECK_EVERY`) through the kernel
//! (`TCP_INFO`, `FIONREAD`) and acts on the socket directly:
//!
//! | what it sees | what it does |
//! |---|---|
//! | received bytes nobody has read for a whole check | connects to the listener once ("poke"): the new connection's pool thread then serves the queued one |
//! | no request within `HEADER_TIMEOUT_MS` of connecting or of the first byte of the next one (slowloris, trickling) | answers 408 and closes |
//! | more than `MAX_HEADER_BYTES` received without a request being parsed | answers 431 and closes |
//! | no bytes for `IDLE_TIMEOUT_MS` after the last request | closes (keep-alive idle) |
//! | more than `MAX_HTTP_CONNECTIONS` connections | answers 503 to the newest ones that have not sent a request, and closes them |
//!
//! Closing is `shutdown(2)` through a duplicate of the descriptor that is first checked to
//! still be the same connection; tiny_http's thread then reads end-of-file and exits.
//! Answers are written with one non-blocking `send`: best effort, since the client may be
//! the reason we are closing.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::http;
use crate::metrics::Metrics;
use crate::socket::{Accepted, Registry};

/// How often connections are checked, with few WebSockets open; also the granularity of
/// every bound below. A check lists every open descriptor (/proc/self/fd), so its cost
/// grows with the number of WebSocket clients: the period grows with it, by 100 ms per
/// thousand clients, up to a second (measured: at 5000 clients, checking every 100 ms
/// cost 7.7 % of a core).
const CHECK_EVERY: Duration = Duration::from_millis(100);
const CHECK_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// Pokes per check at most: a lost wake-up strands at most a burst's worth.
const MAX_POKES: usize = 256;

/// The bounds enforced on HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub max_header_bytes: u64,
    pub max_connections: usize,
}

/// Shared with the HTTP workers, which report each request's peer.
pub struct Connections {
    limits: Limits,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Where to connect to poke the accept loop.
    listener: SocketAddr,
    requests: Mutex<HashMap<SocketAddr, Instant>>,
}

/// What we remember of a connection between checks.
struct Tracked {
    first_seen: Instant,
    /// When the last request we know of was received (None: none yet).
    last_request: Option<Instant>,
    /// Bytes received up to the end of the last request (approximately).
    mark: u64,
    /// When bytes past `mark` were first seen: a request is in progress since then.
    started: Option<Instant>,
    /// (bytes received, bytes unread) at the previous check.
    previous: (u64, u32),
    /// We closed it; tiny_http has not noticed yet.
    closed: bool,
}

/// The kernel's view of one socket.
struct Seen {
    received: u64,
    unread: u32,
}

impl Connections {
    pub fn new(
        limits: Limits,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        listener: SocketAddr,
    ) -> Connections {
        Connections {
            limits,
            registry,
            metrics,
            listener,
            requests: Mutex::default(),
        }
    }

    /// Called by the HTTP workers for every request, so that a connection's timers restart.
    pub fn saw_request(&self, peer: SocketAddr) {
        self.lock().insert(peer, Instant::now());
    }

    /// Closes `peer`'s connection after the response to its request was written: for
    /// requests whose framing we refuse, where reading on could desynchronise.
    pub fn hang_up(&self, peer: SocketAddr) {
        match self.registry.connections() {
            Ok(open) => open.iter().filter(|c| c.peer == peer).for_each(|c| {
                close(c, None);
            }),
            Err(e) => log::warn!("cannot hang up on {peer}: {e}"),
        }
    }

    /// The largest request head accepted.
    pub fn max_header_bytes(&self) -> u64 {
        self.limits.max_header_bytes
    }

    /// Starts the checking thread; it stops when `stop` is disconnected.
    pub fn spawn(self: &Arc<Self>, stop: Receiver<()>) -> std::io::Result<JoinHandle<()>> {
        let this = Arc::clone(self);
        thread::Builder::new()
            .name("connections".into())
            .stack_size(256 * 1024)
            .spawn(move || this.run(&stop))
    }

    fn run(&self, stop: &Receiver<()>) {
        let mut tracked: HashMap<Accepted, Tracked> = HashMap::new();
        loop {
            let clients = self.registry.adopted() as u32 / 2;
            let period = (CHECK_EVERY * (1 + clients / 1000)).min(CHECK_AT_MOST_EVERY);
            match stop.recv_timeout(period) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            match self.registry.connections() {
                Ok(open) => self.check(&mut tracked, open),
                Err(e) => log::warn!("cannot list connections: {e}"),
            }
        }
    }

    /// One check of every open HTTP connection.
    fn check(&self, tracked: &mut HashMap<Accepted, Tracked>, open: Vec<Accepted>) {
        let now = Instant::now();
        let present: HashSet<&Accepted> = open.iter().collect();
        let peers: HashSet<SocketAddr> = open.iter().map(|c| c.peer).collect();
        tracked.retain(|conn, _| present.contains(conn));
        let requests = {
            let mut requests = self.lock();
            requests.retain(|peer, _| peers.contains(peer));
            requests.clone()
        };
        let mut pokes = 0;
        let mut fresh = Vec::new();
        for conn in &open {
            let Some(seen) = observe(conn) else { continue };
            let t = tracked.entry(*conn).or_insert_with(|| Tracked {
                first_seen: now,
                last_request: None,
                mark: 0,
                started: None,
                previous: (u64::MAX, 0),
                closed: false,
            });
            if t.closed {
                continue;
            }
            if let Some(&at) = requests.get(&conn.peer)
                && t.last_request.is_none_or(|last| at > last)
            {
                t.last_request = Some(at);
                t.mark = seen.received - u64::from(seen.unread);
                t.started = None;
            }
            let stuck = seen.unread > 0 && t.previous == (seen.received, seen.unread);
            t.previous = (seen.received, seen.unread);
            if seen.received > t.mark && t.started.is_none() {
                t.started = Some(now);
            }
            let limits = &self.limits;
            if seen.received - t.mark > limits.max_header_bytes {
                self.refuse(conn, 431, "headers_too_large", "header_too_large");
            } else if let Some(since) = t
                .started
                .or(t.last_request.is_none().then_some(t.first_seen))
                && now - since > limits.header_timeout
            {
                self.refuse(conn, 408, "request_timeout", "header_timeout");
            } else if let Some(last) = t.last_request
                && t.started.is_none()
                && now - last > limits.idle_timeout
            {
                close(conn, None);
                self.metrics.http_closed("idle");
            } else if stuck && pokes < MAX_POKES {
                pokes += 1;
                self.poke();
            } else if t.last_request.is_none() {
                fresh.push((t.first_seen, *conn));
            }
        }
        let live = tracked.values().filter(|t| !t.closed).count();
        let over = live.saturating_sub(self.limits.max_connections);
        if over > 0 {
            // The newest connections that have not sent a request yet get the 503. Within
            // one check, a higher descriptor number is usually a later accept.
            fresh.sort_by_key(|(first_seen, conn)| std::cmp::Reverse((*first_seen, conn.fd)));
            for (_, conn) in fresh.into_iter().take(over) {
                if let Some(t) = tracked.get_mut(&conn) {
                    t.closed = self.refuse(&conn, 503, "too_many_connections", "over_capacity");
                }
                Metrics::count(&self.metrics.http_rejected);
            }
        }
        let live = tracked.values().filter(|t| !t.closed).count();
        self.metrics
            .http_connections
            .store(live as i64, Ordering::Relaxed);
    }

    /// Connects to our own listener and hangs up: tiny_http's accept loop hands the new
    /// connection to its pool, whose thread, after this empty connection, takes the oldest
    /// queued one.
    fn poke(&self) {
        Metrics::count(&self.metrics.accept_pokes);
        if let Err(e) = TcpStream::connect_timeout(&self.listener, Duration::from_secs(1)) {
            log::warn!("cannot poke the accept loop at {}: {e}", self.listener);
        }
    }

    /// Answers `status` and closes; returns whether the connection was still there.
    fn refuse(&self, conn: &Accepted, status: u16, error: &str, reason: &'static str) -> bool {
        let message = match status {
            408 => format!(
                "No complete request within {} s. Send the whole request head at once.",
                self.limits.header_timeout.as_secs()
            ),
            431 => format!(
                "Request head over {} bytes. Send fewer or smaller headers.",
                self.limits.max_header_bytes
            ),
            _ => "The server is at its connection limit. Retry in a few seconds.".to_string(),
        };
        let response = http::raw_error(status, error, &message);
        log::info!("{} -> {status} ({reason}), connection closed", conn.peer);
        self.metrics.http_closed(reason);
        close(conn, Some(&response))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bytes received and bytes unread on `conn`'s socket.
fn observe(conn: &Accepted) -> Option<Seen> {
    let fd = conn.fd;
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes of it, and
    // ioctl(FIONREAD) writes one c_int. On a closed or reused number they fail or report
    // another socket, which `claim` catches before we act.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        let mut unread: libc::c_int = 0;
        if rc != 0 || libc::ioctl(fd, libc::FIONREAD, &mut unread) != 0 {
            return None;
        }
        Some(Seen {
            received: info.tcpi_bytes_received,
            unread: unread.max(0) as u32,
        })
    }
}

/// Writes `response` (if any) and shuts the connection down, through a checked duplicate.
/// Returns false if the connection was already gone.
fn close(conn: &Accepted, response: Option<&[u8]>) -> bool {
    let Some(fd) = conn.claim() else { return false };
    if let Some(bytes) = response {
        send(&fd, bytes);
    }
    // SAFETY: shutdown on a descriptor we own.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
    }
    true
}

fn send(fd: &OwnedFd, bytes: &[u8]) {
    // SAFETY: `bytes` is valid for its length; MSG_DONTWAIT never blocks the checker.
    unsafe {
        libc::send(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}
