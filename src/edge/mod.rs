//! The edge: every client connection, from accept to close, and the only code that reads
//! or writes a client's socket before a stream takes it over.
//!
//! The edge owns the listening socket. Each accepted connection gets a thread of its own
//! (thread per connection, as the whole server), which reads request heads under a
//! deadline and a size bound, checks them strictly ([`head`]), refuses what it must, and
//! writes the rest, canonical, to tiny_http over an internal connection ([`upstream`]).
//! tiny_http parses it and hands it to a worker; the worker decides and hands back one
//! value ([`handoff::Connection::decide`]), which the connection's thread carries out:
//! it writes the reply, or runs the stream the connection becomes. tiny_http never sees a client's
//! bytes, and its own listener is closed once those connections are open, so none of its
//! limitations can be reached from the network, nor from another process on the host:
//!
//! | tiny_http 0.12 limitation | how the edge contains it | what would let us delete it |
//! |---|---|---|
//! | no timeouts of any kind (slowloris, idle keep-alive) | `HEADER_TIMEOUT_MS` for each head, `IDLE_TIMEOUT_MS` between requests, on the connection's own thread | read timeouts in tiny_http |
//! | no write deadline: a client that does not read pins a worker | workers never write to a client: the connection's thread writes every reply under `WRITE_TIMEOUT_MS` | non-blocking or timed writes in tiny_http |
//! | no bound on header size or count | `MAX_HEADER_BYTES`, 100 header lines | limits in tiny_http |
//! | lax framing: chunked bodies never read, `Content-Length` parsed loosely, bare LF and obs-fold accepted | strict heads ([`head`]); no body is ever accepted; a refused head closes the connection | RFC 9112 parsing in tiny_http |
//! | deadlocks writing its 505 for `HTTP/2.0`/`3.0`, leaking a thread and two descriptors | 505 from the edge; tiny_http only ever reads HTTP/1.1 | the 505 path fixed upstream |
//! | its own listener has no timeouts and no cap, and any local process can connect to it: 300 idle connections held 300 threads, and each `HTTP/2.0` line leaked as above | the listener is open only at start-up: once the internal connections are open (a few milliseconds), the edge ends tiny_http's accept loop, which closes it, and start-up fails if the loop does not end ([`upstream`]) | a way to give tiny_http connected sockets instead of a listener, or timeouts and a cap in tiny_http |
//! | its accept loop ends for good on an accept error, and panics on `EMFILE` | it only accepts our few internal connections, and is ended on purpose after; our accept loop never ends, and out of descriptors closes a spare to answer 503 | error handling in tiny_http's accept loop |
//! | its task pool can lose a wake-up and leave a connection with no thread | internal connections are opened one at a time and confirmed, then kept for the life of the process (a broken one is not reopened: the others carry its clients) | a fixed task pool |
//! | an upgrade pins a pool thread and two descriptors per stream | a stream runs on the connection's own thread with its only descriptor; tiny_http's request is finished at once | upgrades that release the connection |
//! | no connection cap | `MAX_HTTP_CONNECTIONS`, enforced at accept with a 503; places beyond it for health probes only | a cap in tiny_http |
//!
//! Its files, by job: [`accept`] (the accept loop and the caps), [`connection`] (one
//! connection's HTTP loop), [`handoff`] (what passes between a connection's thread and
//! the workers), [`head`] (strict heads), [`render`] (a reply's bytes) and [`upstream`]
//! (the internal connections to tiny_http). This file holds what they share: the
//! [`Edge`], its limits and its start and stop.
//!
//! What this costs and gains in requests per second is measured in BENCHMARKS.md.

mod accept;
mod connection;
mod handoff;
mod head;
mod identity;
mod render;
mod upstream;

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::budget::Turns;
use crate::http::Cors;
use crate::metrics::Metrics;
use crate::sync::lock;

pub use accept::PROBE_PLACES;
use accept::Places;
pub use handoff::{Ack, Connections, Hop, finish};
pub use identity::PeerNames;
pub use upstream::LINKS as INTERNAL_CONNECTIONS;
use upstream::Upstream;

/// Stack for connection threads: they parse heads, and run a stream (tungstenite's
/// framing) when the connection becomes one. Only touched pages count towards RSS: two
/// per thread, as `tests/memory.rs` measures (glibc's thread block and TLS take the top
/// 4.6 KiB, which leaves a stream about 3.5 KiB of frames; see `stream::Client::run`).
/// The deepest path measured, a stream client with options of its own, reaches 8.8 KiB.
pub const STACK: usize = 128 * 1024;

/// The bounds on HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// `TRUSTED_PROXY_HOPS`: see [`identity`].
    pub trusted_proxy_hops: usize,
    /// The log names no peer by its address (live mode: any peer may be a site's
    /// visitor), only by a digest.
    pub peer_names: PeerNames,
    /// Digests the same in every instance: live mode's state is shared (`REDIS_URL`).
    pub fleet_digests: bool,
}

pub struct Edge {
    listener: TcpListener,
    addr: SocketAddr,
    limits: Limits,
    /// Digests of the senders of events.
    identity: identity::Identity,
    cors: Cors,
    /// The server's turns (`budget::Turns`): each request but a probe's is worked on
    /// under one, from its head to its reply.
    turns: Turns,
    metrics: Arc<Metrics>,
    upstream: Upstream,
    clients: Arc<Connections>,
    next_id: AtomicU64,
    /// Places under `MAX_HTTP_CONNECTIONS`.
    places: Arc<Places>,
    /// Places for health probes beyond it (see `PROBE_PLACES`).
    probe_places: Arc<Places>,
    /// The connections on probes' places whose head has not been read, oldest first: a
    /// new connection at the caps may take the place of one that sent nothing
    /// ([`Edge::evict`]).
    waiting_probes: Mutex<VecDeque<(u64, Arc<TcpStream>)>>,
    /// Refusals are logged at most [`REFUSALS_LOGGED`] a second.
    refusals_logged: LogQuota,
    stopping: AtomicBool,
}

/// The most refusals logged in a second: a flood of bad requests, one line each, would
/// flood the log (disk, and CPU on a small host). `/metrics` counts them all.
const REFUSALS_LOGGED: u32 = 10;

/// Log lines of one kind left this second, and how many were not written since the last.
#[derive(Default)]
struct LogQuota(Mutex<(u64, u32, u64)>);

impl LogQuota {
    /// `None` past the quota (the line is counted, not written); otherwise what to add
    /// to the line: how many were not written before it, if any.
    fn take(&self) -> Option<String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        self.take_at(now.map_or(0, |d| d.as_secs()))
    }

    fn take_at(&self, second: u64) -> Option<String> {
        let mut quota = lock(&self.0);
        let (at, written, unwritten) = &mut *quota;
        if *at != second {
            (*at, *written) = (second, 0);
        }
        if *written == REFUSALS_LOGGED {
            *unwritten += 1;
            return None;
        }
        *written += 1;
        Some(match std::mem::take(unwritten) {
            0 => String::new(),
            n => format!(" ({n} more refusals before this one not logged)"),
        })
    }
}

impl Edge {
    /// Takes the listener and opens the internal connections to tiny_http through
    /// `tiny_http`, a second handle of its listener, which is closed once they are open.
    /// tiny_http's workers must already be running with `clients` (they confirm the
    /// connections and the close, acknowledging on `acked`).
    pub fn new(
        listener: TcpListener,
        tiny_http: TcpListener,
        (clients, acked): (Arc<Connections>, Receiver<Ack>),
        limits: Limits,
        cors: Cors,
        turns: Turns,
        metrics: Arc<Metrics>,
    ) -> io::Result<Edge> {
        let addr = listener.local_addr()?;
        let upstream = Upstream::open(tiny_http, &clients.secret, &acked)?;
        Ok(Edge {
            identity: identity::Identity::new(
                limits.trusted_proxy_hops,
                limits.peer_names,
                limits.fleet_digests,
            ),
            listener,
            addr,
            limits,
            cors,
            turns,
            upstream,
            clients,
            next_id: AtomicU64::new(1),
            places: Places::new(limits.max_connections, Some(Arc::clone(&metrics))),
            probe_places: Places::new(PROBE_PLACES, None),
            waiting_probes: Mutex::default(),
            refusals_logged: LogQuota::default(),
            metrics,
            stopping: AtomicBool::new(false),
        })
    }

    /// Starts the accept loop.
    pub fn spawn(self: &Arc<Self>) -> io::Result<JoinHandle<()>> {
        let edge = Arc::clone(self);
        thread::Builder::new()
            .name("accept".into())
            .stack_size(64 * 1024)
            .spawn(move || edge.accept_loop())
    }

    /// Stops accepting and closes every HTTP connection (streams end on their own).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(&loopback(self.addr), Duration::from_secs(1));
        for client in lock(&self.clients.map).values() {
            let _ = client.socket.shutdown(Shutdown::Both);
        }
    }
}

/// The address to reach a listener bound to `addr` at.
pub fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = if addr.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_past_the_quota_are_counted_in_the_next_line() {
        let quota = LogQuota::default();
        for _ in 0..REFUSALS_LOGGED {
            assert_eq!(quota.take_at(7).as_deref(), Some(""));
        }
        assert_eq!(quota.take_at(7), None);
        assert_eq!(quota.take_at(7), None);
        let next = quota.take_at(8).unwrap();
        assert!(next.contains("(2 more refusals"), "{next}");
        assert_eq!(quota.take_at(8).as_deref(), Some(""));
    }
}
