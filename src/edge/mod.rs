//! The edge: every client connection, from accept to close, and the only code that reads
//! or writes a client's socket before a stream takes it over.
//!
//! The edge owns the listening socket. Each accepted connection gets a thread of its own
//! (thread per connection, as the whole server), which reads request heads under a
//! deadline and a size bound, checks them strictly ([`head`]), refuses what it must, and
//! writes the rest, canonical, to tiny_http over an internal connection ([`upstream`]).
//! tiny_http parses it and hands it to a worker; the worker decides and sends the reply
//! straight to the client's socket ([`Client::reply`]), or hands the connection back to
//! its thread to become a stream ([`Client::stream`]). tiny_http never sees a client's
//! bytes, and its own listener is closed once those connections are open, so none of its
//! limitations can be reached from the network, nor from another process on the host:
//!
//! | tiny_http 0.12 limitation | how the edge contains it | what would let us delete it |
//! |---|---|---|
//! | no timeouts of any kind (slowloris, idle keep-alive) | `HEADER_TIMEOUT_MS` for each head, `IDLE_TIMEOUT_MS` between requests, on the connection's own thread | read timeouts in tiny_http |
//! | no write deadline: a client that does not read pins a worker | workers never block on a client: one non-blocking send, the rest written by the connection's thread under `WRITE_TIMEOUT_MS` | non-blocking or timed writes in tiny_http |
//! | no bound on header size or count | `MAX_HEADER_BYTES`, 100 header lines | limits in tiny_http |
//! | lax framing: chunked bodies never read, `Content-Length` parsed loosely, bare LF and obs-fold accepted | strict heads ([`head`]); no body is ever accepted; a refused head closes the connection | RFC 9112 parsing in tiny_http |
//! | deadlocks writing its 505 for `HTTP/2.0`/`3.0`, leaking a thread and two descriptors | 505 from the edge; tiny_http only ever reads HTTP/1.1 | the 505 path fixed upstream |
//! | its own listener has no timeouts and no cap, and any local process can connect to it: 300 idle connections held 300 threads, and each `HTTP/2.0` line leaked as above | the listener is open only at start-up: once the internal connections are open (a few milliseconds), the edge ends tiny_http's accept loop, which closes it, and start-up fails if the loop does not end ([`upstream`]) | a way to give tiny_http connected sockets instead of a listener, or timeouts and a cap in tiny_http |
//! | its accept loop ends for good on an accept error, and panics on `EMFILE` | it only accepts our few internal connections, and is ended on purpose after; our accept loop never ends, and out of descriptors closes a spare to answer 503 | error handling in tiny_http's accept loop |
//! | its task pool can lose a wake-up and leave a connection with no thread | internal connections are opened one at a time and confirmed, then kept for the life of the process (a broken one is not reopened: the others carry its clients) | a fixed task pool |
//! | an upgrade pins a pool thread and two descriptors per stream | a stream runs on the connection's own thread with its only descriptor; tiny_http's request is finished at once | upgrades that release the connection |
//! | no connection cap | `MAX_HTTP_CONNECTIONS`, enforced at accept with a 503; places beyond it for health probes only | a cap in tiny_http |
//!
//! Measured on the 2-core machine (`wrk -t2 -c64`): serving through the edge answers
//! 80-100k requests/s where tiny_http serving the sockets itself gives 12-80k (its lost
//! wake-up strands connections), and a full relay through tiny_http gives 45k.

mod head;
mod upstream;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use tiny_http::{HTTPVersion, Request};

use crate::budget::{self, MIN_RATE, Turns};
use crate::config::Cors;
use crate::http::{self, Pieces, Reply};
use crate::metrics::Metrics;
use crate::paths::{self, Route};
use crate::platform;
use crate::routes::Later;
use crate::sync::lock;

pub use head::Head;
use head::{Refusal, Scanner};
pub use upstream::LINES as INTERNAL_CONNECTIONS;
use upstream::Upstream;

/// The first read of a connection's head: enough for curl's, websocat's and most
/// browsers' requests (nginx's `client_header_buffer_size` is the same 1 KiB). Larger
/// heads grow the buffer 4 KiB at a time. Every connection of a burst holds this buffer
/// at once, and freed heap stays resident: at 4 KiB it cost each of 1000 WebSocket
/// clients connecting within a second 3 KiB more than this for their lifetime.
const FIRST_READ: usize = 1024;
/// Stack for connection threads: they parse heads, and run a stream (tungstenite's
/// framing) when the connection becomes one. Only touched pages count towards RSS: two
/// per thread, as `tests/memory.rs` measures (glibc's thread block and TLS take the top
/// 4.6 KiB, which leaves a stream about 3.5 KiB of frames; see `stream::Client::stream`).
/// The deepest path measured, a stream client with options of its own, reaches 8.8 KiB.
pub const STACK: usize = 128 * 1024;
/// How long a connection waits for a worker's answer before giving up with a 503.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// How long a refusal or a 503 at the cap may take to write: best effort.
const REFUSAL_WRITE: Duration = Duration::from_millis(500);
/// Places for health and readiness probes beyond `MAX_HTTP_CONNECTIONS`, so that idle
/// clients holding every place do not make a platform's health check (or the watchdog's)
/// see a healthy server as dead. A connection on one gets one answer, to `GET` or `HEAD`
/// of `/healthz` or `/readyz` only.
pub const PROBE_PLACES: usize = 2;
/// How soon the head must arrive on a probe's place: a probe sends it at once, and an
/// idle client must not keep the place from the next probe. Two seconds cover one lost
/// packet's retransmission.
const PROBE_HEAD_WITHIN: Duration = Duration::from_secs(2);
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
const SEND_BUFFER: usize = 64 << 10;

/// The bounds on HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

/// Runs a stream on the connection's thread: given the socket and any bytes the client
/// sent after the request head.
pub type StreamFn = Box<dyn FnOnce(TcpStream, Vec<u8>) + Send>;

/// What a worker decided for a request.
enum Outcome {
    Reply(Rendered),
    /// A reply for the connection's thread to compute first (see `routes::Later`).
    Later(Later),
    Stream(StreamFn),
}

/// Where a worker leaves its decision for the connection's thread, which sleeps until it
/// is there. Not a channel: crossbeam's blocking receive spins and yields before it
/// sleeps, and with 64 connections on 2 cores that spinning was 12 % of the server's CPU
/// samples, time the workers it waited for could have used (`perf`, `wrk -c64`).
#[derive(Default)]
struct Decision {
    slot: Mutex<Option<Outcome>>,
    made: Condvar,
}

impl Decision {
    fn put(&self, outcome: Outcome) {
        *lock(&self.slot) = Some(outcome);
        self.made.notify_one();
    }

    /// The decision, once made, if made within `limit`.
    fn take_within(&self, limit: Duration) -> Option<Outcome> {
        let slot = lock(&self.slot);
        let (mut slot, _) = self
            .made
            .wait_timeout_while(slot, limit, |o| o.is_none())
            .unwrap_or_else(|e| e.into_inner());
        slot.take()
    }
}

/// A reply ready for the connection's thread to write.
struct Rendered {
    /// The reply's bytes; the first `sent` are already on their way.
    bytes: Vec<u8>,
    sent: usize,
    /// The connection ends after it.
    close: bool,
    /// Not before then (chaos latency, 30 s at most).
    due: Option<Instant>,
    /// The rest of the body, produced as the client takes it (a long history).
    pieces: Option<Pieces>,
}

/// What the edge knows about the request a worker is answering.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exchange {
    /// The client's HTTP minor version (0 or 1).
    pub minor: u8,
    /// The connection ends after this response.
    pub close: bool,
    /// `Connection: upgrade` was sent.
    pub upgrade: bool,
    /// A body is declared (never read): the answer is a refusal.
    pub body: bool,
}

/// A client connection, as the workers see it.
pub struct Client {
    /// The client's address.
    pub peer: SocketAddr,
    socket: Arc<TcpStream>,
    exchange: Mutex<Exchange>,
    decision: Arc<Decision>,
}

/// Places for connections of one kind: at most `limit` held at once. Only the accept
/// loop takes them.
struct Places {
    held: AtomicUsize,
    limit: usize,
    /// The metrics whose gauge of HTTP connections follows these places (the clients',
    /// not the probes').
    gauge: Option<Arc<Metrics>>,
}

/// One connection's place, held from accept until its socket is closed (or, when the
/// connection becomes a stream, until the stream's slot holds it instead).
struct Place(Arc<Places>);

impl Places {
    fn new(limit: usize, gauge: Option<Arc<Metrics>>) -> Arc<Places> {
        Arc::new(Places {
            held: AtomicUsize::new(0),
            limit,
            gauge,
        })
    }

    fn full(&self) -> bool {
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

/// The open client connections, by the number the edge gave each, for the workers to
/// find the client behind a request. Requests carry that number and a secret of this
/// process, so nothing but the edge can speak for a client.
pub struct Clients {
    secret: String,
    map: Mutex<HashMap<u64, Arc<Client>>>,
    /// Tells the edge, while it opens its internal connections, what the workers saw.
    acks: Sender<Ack>,
}

/// What a worker tells the edge while it opens its internal connections (see [`upstream`]).
#[derive(Debug)]
pub enum Ack {
    /// The probe on this internal connection reached a worker.
    Line(usize),
    /// tiny_http's accept loop ended: its listener takes no more connections.
    Closed,
}

pub struct Edge {
    listener: TcpListener,
    addr: SocketAddr,
    limits: Limits,
    cors: Cors,
    /// The server's turns (`budget::Turns`): each request but a probe's is worked on
    /// under one, from its head to its reply.
    turns: Turns,
    metrics: Arc<Metrics>,
    upstream: Upstream,
    clients: Arc<Clients>,
    next_id: AtomicU64,
    /// Places under `MAX_HTTP_CONNECTIONS`.
    places: Arc<Places>,
    /// Places for health probes beyond it (see `PROBE_PLACES`).
    probe_places: Arc<Places>,
    /// The connections on probes' places whose head has not been read, oldest first: a
    /// new connection at the caps may take the place of one that sent nothing
    /// ([`Edge::evict`]).
    waiting_probes: Mutex<VecDeque<(u64, Arc<TcpStream>)>>,
    stopping: AtomicBool,
}

/// Why a connection's request loop ended.
enum End {
    /// The client left, or stayed idle too long: close without a word.
    Quiet(Option<&'static str>),
    /// Answer this refusal, then close.
    Refuse(Refusal, Option<String>),
    /// On a probe's place, anything but a probe: the cap's 503.
    OverCapacity,
}

impl Clients {
    /// The registry, and the channel on which the edge hears from the workers.
    pub fn new() -> (Arc<Clients>, Receiver<Ack>) {
        let (acks, acked) = bounded(8);
        let clients = Clients {
            secret: format!("{:032x}", rand::random::<u128>()),
            map: Mutex::default(),
            acks,
        };
        (Arc::new(clients), acked)
    }

    /// The client connection behind a request tiny_http parsed, or `None` for one the edge
    /// did not send (its probes are acknowledged here).
    pub fn find(&self, request: &Request) -> Option<Arc<Client>> {
        let internal = |name| {
            let value = request
                .headers()
                .iter()
                .rev()
                .find(|h| h.field.equiv(name))?
                .value
                .as_str();
            let (n, secret) = value.split_once(' ')?;
            (secret == self.secret).then(|| n.parse::<u64>().ok())?
        };
        if let Some(line) = internal("X-Edge-Probe") {
            let _ = self.acks.try_send(Ack::Line(line as usize));
            return None;
        }
        let id = internal("X-Edge-Conn")?;
        lock(&self.map).get(&id).cloned()
    }

    /// Tells the edge that tiny_http's accept loop ended, as the edge made it do.
    pub fn accept_loop_ended(&self) {
        let _ = self.acks.try_send(Ack::Closed);
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
        (clients, acked): (Arc<Clients>, Receiver<Ack>),
        limits: Limits,
        cors: Cors,
        turns: Turns,
        metrics: Arc<Metrics>,
    ) -> io::Result<Edge> {
        let addr = listener.local_addr()?;
        let upstream = Upstream::open(tiny_http, &clients.secret, &acked)?;
        Ok(Edge {
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

    /// Accepts every connection, gives it a place and a thread, or answers 503 at the
    /// caps. The loop's own descriptor is a spare (a copy of the listener) while places
    /// are free; when none is, the spare is closed to take the connection and refuse it.
    /// When accepting fails all the same (out of descriptors: the caps count every one
    /// the server opens, not ones it inherited), the spare is closed to take the waiting
    /// connection and refuse it too, rather than leave it in the backlog.
    fn accept_loop(self: Arc<Self>) {
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
            let _ = socket2::SockRef::from(&socket).set_send_buffer_size(SEND_BUFFER);
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
    fn stop_waiting(&self, id: u64) -> bool {
        let mut waiting = lock(&self.waiting_probes);
        let before = waiting.len();
        waiting.retain(|(waiting, ..)| *waiting != id);
        waiting.len() < before
    }

    /// Answers a connection over the caps with 503 and closes it.
    fn over_capacity(&self, socket: &TcpStream, peer: SocketAddr) {
        self.metrics.http_rejected();
        let refusal = Refusal {
            status: 503,
            error: "too_many_connections",
            message: "The server is at its connection limit. Retry in a few seconds.".into(),
        };
        log::info!("{peer} -> 503 (over_capacity), connection closed");
        self.write_refusal(socket, &refusal, None);
    }

    /// One connection's thread: requests until the client leaves or a limit is hit.
    /// When the connection becomes a stream, returns what to run on it, with the socket
    /// and what the client sent after the request. On a `probe` place, only a probe is
    /// answered (see `PROBE_PLACES`).
    fn serve(
        self: Arc<Self>,
        id: u64,
        socket: Arc<TcpStream>,
        peer: SocketAddr,
        accepted: Instant,
        place: Place,
        probe: bool,
    ) -> Option<(StreamFn, TcpStream, Vec<u8>)> {
        let decision = Arc::new(Decision::default());
        let client = Arc::new(Client {
            peer,
            socket: Arc::clone(&socket),
            exchange: Mutex::default(),
            decision: Arc::clone(&decision),
        });
        lock(&self.clients.map).insert(id, Arc::clone(&client));
        let mut buf = Vec::new();
        let mut served = 0u64;
        let header_timeout = match probe {
            true => self.limits.header_timeout.min(PROBE_HEAD_WITHIN),
            false => self.limits.header_timeout,
        };
        let end = loop {
            let read = self.read_head(&socket, &mut buf, served == 0, accepted, header_timeout);
            if probe && served == 0 && !self.stop_waiting(id) {
                break End::OverCapacity;
            }
            let len = match read {
                Ok(len) => len,
                Err(End::Refuse(..)) if probe => break End::OverCapacity,
                Err(end) => break end,
            };
            let head = match head::parse(&buf[..len]) {
                Ok(head) if !probe || is_probe(&head) => head,
                Err(refusal) if !probe => {
                    break End::Refuse(refusal, head::origin(&buf[..len]));
                }
                _ => break End::OverCapacity,
            };
            *lock(&client.exchange) = Exchange {
                minor: head.minor,
                close: head.close || probe,
                upgrade: head.upgrade,
                body: head.body,
            };
            // Given back once the reply is ready, before it is written (or as a stream
            // starts): the turns bound the requests being worked on, and a probe's skips
            // the queue for them.
            let turn = match is_probe(&head) {
                true => None,
                false => match self.turns.take(budget::TURN_WAIT) {
                    Some(turn) => Some(turn),
                    None => break End::Refuse(busy(), head.header("Origin").map(str::to_string)),
                },
            };
            if let Err(e) = self
                .upstream
                .forward(id, &canonical(&head, id, &self.clients.secret))
            {
                log::error!("cannot hand a request to tiny_http: {e}");
                break End::Refuse(unavailable(), head.header("Origin").map(str::to_string));
            }
            let reply = match decision.take_within(ANSWER_WITHIN) {
                Some(Outcome::Reply(reply)) => reply,
                Some(Outcome::Later(answer)) => client.computed(answer, &head),
                Some(Outcome::Stream(run)) => {
                    // The stream's slot holds the connection from here: the place is
                    // given back as this returns.
                    lock(&self.clients.map).remove(&id);
                    drop(client);
                    let socket = Arc::try_unwrap(socket)
                        .or_else(|shared| shared.try_clone())
                        .map_err(|e| log::error!("{peer}: cannot take over the socket: {e}"));
                    // The head buffer is not kept for the stream's lifetime: only what
                    // followed the head goes on.
                    let leftover = buf[len..].to_vec();
                    drop(std::mem::take(&mut buf));
                    return socket.ok().map(|socket| (run, socket, leftover));
                }
                None => {
                    log::error!("{peer}: no answer from the workers within {ANSWER_WITHIN:?}");
                    break End::Refuse(unavailable(), head.header("Origin").map(str::to_string));
                }
            };
            drop(turn);
            if let Some(due) = reply.due {
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let written = self
                .write(&socket, &reply.bytes[reply.sent..])
                .and_then(|()| {
                    reply
                        .pieces
                        .map_or(Ok(()), |p| self.write_pieces(&socket, p))
                });
            if let Err(reason) = written {
                self.metrics.http_closed(reason);
                break End::Quiet(None);
            }
            if reply.close {
                break End::Quiet(None);
            }
            served += 1;
            buf.drain(..len);
        };
        lock(&self.clients.map).remove(&id);
        match end {
            End::Quiet(reason) => {
                if let Some(reason) = reason {
                    self.metrics.http_closed(reason);
                }
            }
            End::Refuse(refusal, origin) => {
                let reason = match refusal.status {
                    408 => "header_timeout",
                    431 => "header_too_large",
                    503 => refusal.error,
                    _ => "bad_request",
                };
                self.metrics.http_closed(reason);
                self.metrics.request("other", refusal.status);
                log::info!(
                    "{peer} -> {} ({}), connection closed",
                    refusal.status,
                    refusal.error
                );
                self.write_refusal(&socket, &refusal, origin.as_deref());
            }
            End::OverCapacity => self.over_capacity(&socket, peer),
        }
        let _ = socket.shutdown(Shutdown::Both);
        // The place is given back once the socket is closed, not before its last bytes
        // are written: every connection counts under a cap until it is gone.
        drop(client);
        drop(socket);
        drop(place);
        None
    }

    /// Reads until `buf` holds a whole head and returns its length. The first request
    /// must arrive within `HEADER_TIMEOUT_MS` of connecting; later ones may be preceded
    /// by `IDLE_TIMEOUT_MS` of silence, then must arrive within `HEADER_TIMEOUT_MS` of
    /// their first byte.
    fn read_head(
        &self,
        socket: &TcpStream,
        buf: &mut Vec<u8>,
        first: bool,
        accepted: Instant,
        header_timeout: Duration,
    ) -> Result<usize, End> {
        let limits = &self.limits;
        let mut scanner = Scanner::default();
        let idle_until = Instant::now() + limits.idle_timeout;
        let mut started =
            (first || !buf.is_empty()).then(|| if first { accepted } else { Instant::now() });
        loop {
            if let Some(len) = scanner.end(buf).map_err(|r| End::Refuse(r, None))? {
                return Ok(len);
            }
            if buf.len() > limits.max_header_bytes {
                return Err(End::Refuse(
                    Refusal {
                        status: 431,
                        error: "headers_too_large",
                        message: format!(
                            "Request head over {} bytes. Send fewer or smaller headers.",
                            limits.max_header_bytes
                        ),
                    },
                    None,
                ));
            }
            let deadline = started.map_or(idle_until, |t| t + header_timeout);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(match started {
                    Some(_) => End::Refuse(
                        Refusal {
                            status: 408,
                            error: "request_timeout",
                            message: format!(
                                "No complete request within {} s. Send the whole request head at once.",
                                header_timeout.as_secs_f64()
                            ),
                        },
                        None,
                    ),
                    None => End::Quiet(Some("idle")),
                });
            }
            let _ = socket.set_read_timeout(Some(left));
            let len = buf.len();
            let step = if buf.capacity() == 0 {
                FIRST_READ
            } else {
                4096
            };
            let room = (limits.max_header_bytes + 1 - len).clamp(1, step);
            buf.resize(len + room, 0);
            let read = (&*socket).read(&mut buf[len..]);
            buf.truncate(len + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(End::Quiet(None)),
                Ok(_) => {
                    started.get_or_insert_with(Instant::now);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return Err(End::Quiet(None)),
            }
        }
    }

    /// Writes the rest of a reply. Fails (with the reason, for the metrics) if the client
    /// took nothing for `WRITE_TIMEOUT_MS`, took longer than its size allows at
    /// `MIN_RATE`, or is gone. What a slow client holds is its own reply (at most the
    /// OpenAPI document, 48 KiB) or one piece of a long one: counted in each HTTP
    /// connection's share of the memory budget (`budget::HTTP_COST`).
    fn write(&self, socket: &TcpStream, rest: &[u8]) -> Result<(), &'static str> {
        let deadline = Instant::now()
            + self.limits.write_timeout
            + Duration::from_secs((rest.len() / MIN_RATE) as u64);
        self.write_by(socket, rest, deadline)
    }

    /// Writes a body's pieces as the client takes them, each produced only once the one
    /// before is written: the client must keep up with `MIN_RATE` over the whole body,
    /// after `WRITE_TIMEOUT_MS`.
    fn write_pieces(&self, socket: &TcpStream, pieces: Pieces) -> Result<(), &'static str> {
        platform::lower_priority();
        let started = Instant::now();
        let mut total = 0;
        for piece in pieces {
            let piece = piece?;
            total += piece.len();
            let deadline = started
                + self.limits.write_timeout
                + Duration::from_secs((total / MIN_RATE) as u64);
            self.write_by(socket, &piece, deadline)?;
        }
        Ok(())
    }

    /// Writes `rest` by `deadline`.
    fn write_by(
        &self,
        socket: &TcpStream,
        mut rest: &[u8],
        deadline: Instant,
    ) -> Result<(), &'static str> {
        while !rest.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("write_timeout");
            }
            let _ = socket.set_write_timeout(Some(left.min(self.limits.write_timeout)));
            match (&*socket).write(rest) {
                Ok(0) => return Err("write_failed"),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("write_timeout");
                }
                Err(_) => return Err("write_failed"),
            }
        }
        Ok(())
    }

    /// Answers a refusal (best effort: the client may be why we refuse) and closes.
    fn write_refusal(&self, socket: &TcpStream, refusal: &Refusal, origin: Option<&str>) {
        let reply = http::error(refusal.status, refusal.error, &refusal.message, &[]);
        let reply = http::with_cors(reply, &self.cors, origin);
        let bytes = render(reply, 1, false, true);
        let _ = socket.set_write_timeout(Some(REFUSAL_WRITE));
        let _ = (&*socket).write_all(&bytes);
        let _ = socket.shutdown(Shutdown::Both);
    }
}

impl Client {
    /// Computes a [`Later`] reply on the connection's thread, into what a worker's reply
    /// would have been.
    fn computed(&self, answer: Later, head: &Head) -> Rendered {
        let ((reply, delay), pieces) = answer();
        let close = head.close || head.upgrade;
        let head_only = head.method == "HEAD";
        Rendered {
            bytes: render(reply, head.minor, head_only, close),
            sent: 0,
            close,
            due: (!delay.is_zero()).then(|| Instant::now() + delay),
            pieces: pieces.filter(|_| !head_only),
        }
    }

    /// What the edge read about the request being answered.
    pub fn exchange(&self) -> Exchange {
        *lock(&self.exchange)
    }

    /// Sends `reply` to the client and finishes tiny_http's request. What the socket
    /// takes at once is written here; the rest by the connection's thread, so a client
    /// that does not read never holds a worker. A refused upgrade ends the connection:
    /// the client asked to leave HTTP, and nothing else will follow on it. A reply with a
    /// `delay` (chaos latency) is all written by the connection's thread, once it is due.
    pub fn reply(self: Arc<Self>, request: Request, reply: Reply, delay: Duration) {
        let exchange = self.exchange();
        let head = *request.method() == tiny_http::Method::Head;
        finish(request);
        let close = exchange.close || exchange.upgrade;
        let bytes = render(reply, exchange.minor, head, close);
        let (sent, due) = if delay.is_zero() {
            (platform::send_now(&self.socket, &bytes), None)
        } else {
            (0, Some(Instant::now() + delay))
        };
        let decision = Arc::clone(&self.decision);
        drop(self);
        decision.put(Outcome::Reply(Rendered {
            bytes,
            sent,
            close,
            due,
            pieces: None,
        }));
    }

    /// Finishes tiny_http's request and has the connection's thread compute the reply,
    /// then send it as [`Client::reply`] would: heavy work holds that thread, not a
    /// worker.
    pub fn later(self: Arc<Self>, request: Request, answer: Later) {
        finish(request);
        let decision = Arc::clone(&self.decision);
        drop(self);
        decision.put(Outcome::Later(answer));
    }

    /// Hands the connection back to its thread, which runs `run` on it.
    pub fn stream(self: Arc<Self>, request: Request, run: StreamFn) {
        finish(request);
        let decision = Arc::clone(&self.decision);
        // The connection's thread takes the socket over: ours must be gone first.
        drop(self);
        decision.put(Outcome::Stream(run));
    }
}

/// Ends tiny_http's part in a request without writing anything on its connection (a
/// `Request` dropped unanswered would write a 500 there).
pub fn finish(request: Request) {
    drop(request.into_writer());
}

/// The bytes of a response to a client speaking HTTP/1.`minor`. tiny_http renders it;
/// the `Connection` header, which tiny_http will not take from us, goes in after the
/// status line.
pub fn render(reply: Reply, minor: u8, head: bool, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + reply.data_length().unwrap_or(0));
    let _ = reply.raw_print(&mut out, HTTPVersion(1, minor), &[], head, None);
    let connection: &[u8] = match (close, minor) {
        (true, _) => b"Connection: close\r\n",
        (false, 0) => b"Connection: keep-alive\r\n",
        (false, _) => b"",
    };
    if let Some(line_end) = out.windows(2).position(|w| w == b"\r\n") {
        out.splice(line_end + 2..line_end + 2, connection.iter().copied());
    }
    out
}

/// The head tiny_http reads: the client's request line and end-to-end headers, as
/// HTTP/1.1 on a connection that stays open, and which client it came from.
fn canonical(head: &Head, id: u64, secret: &str) -> Vec<u8> {
    /// Headers about this hop or a body: the edge has dealt with them.
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "content-length",
        "expect",
        "trailer",
    ];
    let mut out = Vec::with_capacity(256);
    let _ = write!(out, "{} {} HTTP/1.1\r\n", head.method, head.target);
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if HOP.contains(&lower.as_str()) || lower.starts_with("x-edge-") {
            continue;
        }
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "X-Edge-Conn: {id} {secret}\r\n\r\n");
    out
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
/// `/readyz`.
fn is_probe(head: &Head) -> bool {
    matches!(head.method.as_str(), "GET" | "HEAD")
        && matches!(
            paths::route(&paths::normalise(&head.target)),
            Some(Route::Health | Route::Ready)
        )
}

/// No turn freed up for a request in time: the server is at its CPU budget.
fn busy() -> Refusal {
    Refusal {
        status: 503,
        error: "busy",
        message: "The server is working on as many requests as its CPU budget allows. Retry \
                  in a few seconds."
            .into(),
    }
}

fn unavailable() -> Refusal {
    Refusal {
        status: 503,
        error: "unavailable",
        message: "The server could not answer in time. Retry in a few seconds.".into(),
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
    fn canonical_heads_drop_hop_by_hop_and_forged_headers() {
        let head = head::parse(
            b"GET /api?x=1 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\
              Upgrade: websocket\r\nX-Edge-Conn: 1 forged\r\nTE: chunked\r\nContent-Length: 0\r\n\
              Origin: http://o\r\n\r\n",
        )
        .unwrap();
        let text = String::from_utf8(canonical(&head, 7, "s3cret")).unwrap();
        assert_eq!(
            text,
            "GET /api?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nOrigin: http://o\r\n\
             X-Edge-Conn: 7 s3cret\r\n\r\n"
        );
    }

    #[test]
    fn replies_say_whether_the_connection_stays_open() {
        let text = |minor, close| {
            String::from_utf8(render(http::empty(204), minor, false, close)).unwrap()
        };
        assert!(text(1, false).starts_with("HTTP/1.1 204"));
        assert!(!text(1, false).contains("Connection"));
        assert!(text(1, true).contains("Connection: close"));
        assert!(text(0, false).starts_with("HTTP/1.0 204"));
        assert!(text(0, false).contains("Connection: keep-alive"));
    }
}
