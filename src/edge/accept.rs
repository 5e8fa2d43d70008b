//! Accept and the caps: the accept loop gives each connection a place under
//! `MAX_HTTP_CONNECTIONS` (or one of the probes' places beyond it) and a thread, or
//! answers the cap's 503; it tells a health probe from other requests at the caps by
//! looking at what the socket has sent, without taking it.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::paths::Route;
use crate::platform;
use crate::sync::lock;

use super::head::{EdgeError, Head};
use super::{Edge, STACK};

/// Places for health and readiness probes beyond `MAX_HTTP_CONNECTIONS`, so that idle
/// clients holding every place do not make a platform's health check (or the watchdog's)
/// see a healthy server as dead. A connection on one gets one answer, to `GET` or `HEAD`
/// of `/healthz` or `/readyz` only.
pub const PROBE_PLACES: usize = 2;

/// Connections evicted from probes' places that may still be closing (their threads
/// answer and exit) when a newcomer takes their place: enough that a host too busy to
/// run those threads at once still lets probes in. Half of them only for a newcomer
/// that has sent a probe's whole head: sockets that connect and say nothing, however
/// fast they reconnect on a starved host, cannot use them all.
const CLOSING: usize = 8;

/// How much of a request at the caps is looked at to tell whether it is a probe's: a
/// health checker's whole head.
const PROBE_PEEK: usize = 1024;

/// Kernel send buffer of an HTTP connection (Linux doubles it). Every reply but a long
/// history fits; a fixed size stops the kernel from growing it to megabytes for a client
/// that does not read, memory no budget of ours would see.
const HTTP_SEND_BUFFER: usize = 64 << 10;

/// Places for connections of one kind: at most `limit` held at once. Only the accept
/// loop takes them.
pub(super) struct Places {
    held: AtomicUsize,
    limit: usize,
    /// The metrics whose gauge of HTTP connections follows these places (the clients',
    /// not the probes').
    gauge: Option<Arc<Metrics>>,
}

/// One connection's place, held from accept until its socket is closed (or, when the
/// connection becomes a stream, until the stream's slot holds it instead).
pub(super) struct Place(Arc<Places>);

impl Places {
    pub(super) fn new(limit: usize, gauge: Option<Arc<Metrics>>) -> Arc<Places> {
        Arc::new(Places {
            held: AtomicUsize::new(0),
            limit,
            gauge,
        })
    }

    pub(super) fn full(&self) -> bool {
        self.held.load(Ordering::SeqCst) >= self.limit
    }

    fn take(self: &Arc<Self>) -> Option<Place> {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()?;
        Some(self.placed())
    }

    /// A place past the limit, for one whose holder is being closed (see `Edge::evict`):
    /// at most `closing` such at once, so closings in flight stay bounded too.
    fn take_over(self: &Arc<Self>, closing: usize) -> Option<Place> {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.limit + closing).then_some(n + 1)
            })
            .ok()?;
        Some(self.placed())
    }

    fn placed(self: &Arc<Self>) -> Place {
        if let Some(metrics) = &self.gauge {
            metrics.http_connections(self.held.load(Ordering::SeqCst));
        }
        Place(Arc::clone(self))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let held = self.0.held.fetch_sub(1, Ordering::SeqCst) - 1;
        if let Some(metrics) = &self.0.gauge {
            metrics.http_connections(held);
        }
    }
}

impl Edge {
    /// Accepts every connection, gives it a place and a thread, or answers 503 at the
    /// caps. The loop's own descriptor is a spare (a copy of the listener) while places
    /// are free; when none is, the spare is closed to take the connection and refuse it.
    /// When accepting fails all the same (out of descriptors: the caps count every one
    /// the server opens, not ones it inherited), the spare is closed to take the waiting
    /// connection and refuse it too, rather than leave it in the backlog.
    pub(super) fn accept_loop(self: Arc<Self>) {
        let mut spare = self.listener.try_clone().ok();
        // The spare was closed for want of descriptors: the next connection is refused.
        let mut short = false;
        let mut last_warning: Option<Instant> = None;
        loop {
            if self.places.full() && self.probe_places.full() {
                spare = None;
            } else if spare.is_none() && !short {
                spare = self.listener.try_clone().ok();
            }
            let (socket, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(_) if self.stopping.load(Ordering::SeqCst) => return,
                Err(e) => {
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        continue;
                    }
                    if spare.take().is_some() {
                        short = true;
                        continue;
                    }
                    // Out of descriptors without a spare, or out of memory: wait for
                    // connections to end.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        log::error!("cannot accept connections: {e}; retrying");
                        last_warning = Some(Instant::now());
                    }
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            if std::mem::take(&mut short) {
                self.over_capacity(&socket, peer);
                continue;
            }
            let _ = platform::tune(&socket);
            let _ = socket2::SockRef::from(&socket).set_send_buffer_size(HTTP_SEND_BUFFER);
            let (place, probe) = match self.places.take() {
                Some(place) => (place, false),
                None => match sent(&socket) {
                    // Not a probe: no need to look for a place of its own.
                    Sent::Other => {
                        self.over_capacity(&socket, peer);
                        continue;
                    }
                    newcomer => {
                        let closing = match newcomer {
                            Sent::Probe => CLOSING,
                            _ => CLOSING / 2,
                        };
                        match self.probe_places.take().or_else(|| self.evict(closing)) {
                            Some(place) => (place, true),
                            None => {
                                self.over_capacity(&socket, peer);
                                continue;
                            }
                        }
                    }
                },
            };
            let edge = Arc::clone(&self);
            let accepted = Instant::now();
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let socket = Arc::new(socket);
            if probe {
                // Listed here, not by its thread, which may not run for a while on a
                // busy host: a newcomer can take its place from the start.
                lock(&self.waiting_probes).push_back((id, Arc::clone(&socket)));
            }
            let spawned = thread::Builder::new()
                .name("conn".into())
                .stack_size(STACK)
                .spawn(move || {
                    // A stream runs here, after `serve` has returned: its frames start
                    // at the top of the stack, not below the HTTP phase's.
                    if let Some((run, socket, leftover)) =
                        edge.serve(id, socket, peer, accepted, place, probe)
                    {
                        platform::lower_priority();
                        run(socket, leftover);
                    }
                });
            if let Err(e) = spawned {
                self.stop_waiting(id);
                let peer = self.identity.name(peer);
                log::error!(
                    "cannot start a connection thread: {e}; connection from {peer} dropped"
                );
            }
        }
    }

    /// Ends the wait of the oldest connection on a probe's place that has not sent a
    /// probe's whole head (it has sent nothing yet, part of a head, or another request),
    /// and gives its place to the connection just accepted, while fewer than `closing`
    /// evicted ones are still closing. A health check sends its request as soon as it
    /// connects, so neither sockets that connect and say nothing (or half a probe) nor
    /// the ordinary requests of clients over the cap can keep it out, however fast they
    /// reconnect. The evicted connection's own thread, woken by the end of its input,
    /// reads what was sent and writes the cap's 503: no other thread writes to a
    /// connection's socket.
    fn evict(&self, closing: usize) -> Option<Place> {
        let place = self.probe_places.take_over(closing)?;
        let (_, evicted) = {
            let mut waiting = lock(&self.waiting_probes);
            let oldest = waiting
                .iter()
                .position(|(_, socket)| sent(socket) != Sent::Probe)?;
            waiting.remove(oldest)?
        };
        let _ = evicted.shutdown(Shutdown::Read);
        Some(place)
    }

    /// Takes a probe's connection off the waiting list once its head is read; false if
    /// [`Edge::evict`] took it first.
    pub(super) fn stop_waiting(&self, id: u64) -> bool {
        let mut waiting = lock(&self.waiting_probes);
        let before = waiting.len();
        waiting.retain(|(waiting, ..)| *waiting != id);
        waiting.len() < before
    }

    /// Answers a connection over the caps with 503 and closes it.
    pub(super) fn over_capacity(&self, socket: &TcpStream, peer: SocketAddr) {
        self.metrics.http_rejected();
        let refusal = EdgeError {
            status: 503,
            error: "too_many_connections",
            message: "The server is at its connection limit. Retry in a few seconds.".into(),
        };
        if let Some(unlogged) = self.refusals_logged.take() {
            let peer = self.identity.name(peer);
            log::info!("{peer} -> 503 (over_capacity), connection closed{unlogged}");
        }
        self.write_refusal(socket, &refusal, None);
    }
}

/// What the peer of a socket at the caps has sent so far, looked at without taking it.
#[derive(PartialEq)]
enum Sent {
    Nothing,
    /// The start of a probe's request (`GET` or `HEAD` of `/healthz` or `/readyz`, as
    /// health checkers send them), its head not yet whole.
    ProbeStart,
    /// A probe's whole head (or the OS cannot tell: Windows; then every connection is
    /// taken for a probe, neither refused at once nor evicted).
    Probe,
    /// Another request.
    Other,
}

fn sent(socket: &TcpStream) -> Sent {
    const PROBES: [&[u8]; 4] = [
        b"GET /healthz ",
        b"GET /readyz ",
        b"HEAD /healthz ",
        b"HEAD /readyz ",
    ];
    let mut start = [0; PROBE_PEEK];
    let start = match platform::waiting(socket, &mut start) {
        None => return Sent::Probe,
        Some(0) => return Sent::Nothing,
        Some(n) => &start[..n],
    };
    if !PROBES
        .iter()
        .any(|p| p.starts_with(start) || start.starts_with(p))
    {
        Sent::Other
    } else if start.windows(4).any(|w| w == b"\r\n\r\n") {
        Sent::Probe
    } else {
        Sent::ProbeStart
    }
}

/// Whether a request is a health or readiness probe: `GET` or `HEAD` of `/healthz` or
/// `/readyz` (`route`: the route its path names).
pub(super) fn is_probe(head: &Head, route: Option<Route>) -> bool {
    matches!(head.method.as_str(), "GET" | "HEAD")
        && matches!(route, Some(Route::Health | Route::Ready))
}
