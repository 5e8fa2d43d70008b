//! One connection's HTTP loop, on the connection's own thread: it reads each request
//! head under its deadlines and bounds, refuses what it must, takes a turn, hands the
//! canonical head to tiny_http and waits for the worker's decision, then writes the
//! reply (or returns the stream to run). Every byte written to a client's socket before
//! a stream takes it over is written here.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::budget::{self, MIN_RATE};
use crate::http::{self, Decision, Pieces, Reply, StreamFn};
use crate::paths::{self, Route};
use crate::platform;
use crate::sync::lock;

use super::Edge;
use super::accept::{Place, is_probe};
use super::handoff::{Connection, DecisionSlot, Hop};
use super::head::{self, Body, EdgeError, Head, Scanner};
use super::identity::IDENTIFYING;
use super::render::render;

/// The first read of a connection's head: enough for curl's, websocat's and most
/// browsers' requests (nginx's `client_header_buffer_size` is the same 1 KiB). Larger
/// heads grow the buffer 4 KiB at a time. Every connection of a burst holds this buffer
/// at once, and freed heap stays resident: at 4 KiB it cost each of 1000 WebSocket
/// clients connecting within a second 3 KiB more than this for their lifetime.
const FIRST_READ: usize = 1024;

/// How long a connection waits for a worker's answer before giving up with a 503.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// How long a refusal or a 503 at the cap may take to write: best effort.
const REFUSAL_WRITE: Duration = Duration::from_millis(500);

/// How soon the head must arrive on a probe's place: a probe sends it at once, and an
/// idle client must not keep the place from the next probe. Two seconds cover one lost
/// packet's retransmission.
const PROBE_HEAD_WITHIN: Duration = Duration::from_secs(2);

/// Why a connection's request loop ended.
enum ConnectionEnd {
    /// The client left, or stayed idle too long: close without a word.
    Quiet(Option<&'static str>),
    /// Answer this refusal, then close.
    Refuse(EdgeError, Option<String>),
    /// On a probe's place, anything but a probe: the cap's 503.
    OverCapacity,
}

impl Edge {
    /// One connection's thread: requests until the client leaves or a limit is hit.
    /// When the connection becomes a stream, returns what to run on it, with the socket
    /// and what the client sent after the request. On a `probe` place, only a probe is
    /// answered (see `PROBE_PLACES`).
    pub(super) fn serve(
        self: Arc<Self>,
        id: u64,
        socket: Arc<TcpStream>,
        peer: SocketAddr,
        accepted: Instant,
        place: Place,
        probe: bool,
    ) -> Option<(StreamFn, TcpStream, Vec<u8>)> {
        let decision = Arc::new(DecisionSlot::default());
        let client = Arc::new(Connection {
            peer,
            socket: Arc::clone(&socket),
            decision: Arc::clone(&decision),
        });
        lock(&self.clients.map).insert(id, Arc::clone(&client));
        let mut buf = Vec::new();
        let mut served = 0u64;
        let header_timeout = match probe {
            true => self.limits.header_timeout.min(PROBE_HEAD_WITHIN),
            false => self.limits.header_timeout,
        };
        // The last request was an event: its sender is not named in the log.
        let mut counts_sender = false;
        let end = loop {
            let read = self.read_head(&socket, &mut buf, served == 0, accepted, header_timeout);
            if probe && served == 0 && !self.stop_waiting(id) {
                break ConnectionEnd::OverCapacity;
            }
            let (len, began) = match read {
                Ok(read) => read,
                Err(ConnectionEnd::Refuse(..)) if probe => break ConnectionEnd::OverCapacity,
                Err(end) => break end,
            };
            let parsed = head::parse(&buf[..len]).map(|head| {
                let route = paths::route(&paths::normalise(&head.target));
                (head, route)
            });
            let (mut head, route) = match parsed {
                Ok((head, route)) if !probe || is_probe(&head, route) => (head, route),
                Err(refusal) if !probe => {
                    break ConnectionEnd::Refuse(refusal, head::origin(&buf[..len]));
                }
                _ => break ConnectionEnd::OverCapacity,
            };
            // Only a route that takes a body has it read (by the request's deadline, and
            // before a turn is taken: waiting on a client holds none); any other body is
            // never read, and the worker refuses it.
            let limit = route.and_then(|r| r.body_limit(&head.method));
            // A request that counts its sender (an event) has the sender's address and
            // User-Agent turned into digests at once, before anything can refuse it, and
            // the bytes they came in are overwritten once it is handed on (or as the
            // connection ends).
            let sender = limit.map(|_| self.identity.digest(&mut head, peer));
            counts_sender = sender.is_some();
            let body = match (limit, head.body) {
                (Some(limit), Body::Length(n)) if n <= limit => {
                    let n = n as usize;
                    if let Err(end) = self.read_body(&socket, &mut buf, len + n, began) {
                        break end;
                    }
                    n
                }
                (Some(limit), Body::Length(_)) => {
                    break ConnectionEnd::Refuse(body_too_large(limit), origin(&head));
                }
                (Some(_), Body::Chunked) => {
                    break ConnectionEnd::Refuse(length_required(), origin(&head));
                }
                _ => 0,
            };
            // Given back once the reply is ready, before it is written (or as a stream
            // starts): the turns bound the requests being worked on, and a probe's skips
            // the queue for them.
            let turn = match is_probe(&head, route) {
                true => None,
                false => match self.turns.take(budget::TURN_WAIT) {
                    Some(turn) => Some(turn),
                    None => break ConnectionEnd::Refuse(busy(), origin(&head)),
                },
            };
            let end = len + body;
            let canonical = canonical(
                &head,
                route,
                &buf[len..end],
                sender.as_deref(),
                id,
                &self.clients.secret,
            );
            if sender.is_some() {
                buf[..end].fill(0);
            }
            if let Err(e) = self.upstream.forward(id, &canonical) {
                log::error!("cannot hand a request to tiny_http: {e}");
                break ConnectionEnd::Refuse(unavailable(), origin(&head));
            }
            // A body left unread ends the connection: its bytes cannot be told from the
            // next request's.
            let unread = head.body != Body::None && body == 0;
            let close = head.close || head.upgrade || probe || unread;
            let reply = match decision.take_within(ANSWER_WITHIN) {
                Some(Decision::Reply(reply, delay)) => {
                    Rendered::new(reply, delay, None, &head, close)
                }
                Some(Decision::Later(answer)) => {
                    let ((reply, delay), pieces) = answer();
                    Rendered::new(reply, delay, pieces, &head, close)
                }
                Some(Decision::Stream(run)) => {
                    // The stream's slot holds the connection from here: the place is
                    // given back as this returns.
                    lock(&self.clients.map).remove(&id);
                    drop(client);
                    let socket = Arc::try_unwrap(socket)
                        .or_else(|shared| shared.try_clone())
                        .map_err(|e| {
                            let peer = self.identity.name(peer);
                            log::error!("{peer}: cannot take over the socket: {e}")
                        });
                    // The head buffer is not kept for the stream's lifetime: only what
                    // followed the request goes on.
                    let leftover = buf[end..].to_vec();
                    drop(std::mem::take(&mut buf));
                    return socket.ok().map(|socket| (run, socket, leftover));
                }
                None => {
                    let peer = self.identity.name(peer);
                    log::error!("{peer}: no answer from the workers within {ANSWER_WITHIN:?}");
                    break ConnectionEnd::Refuse(unavailable(), origin(&head));
                }
            };
            drop(turn);
            if let Some(due) = reply.due {
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let written = self.write(&socket, &reply.bytes).and_then(|()| {
                reply
                    .pieces
                    .map_or(Ok(()), |p| self.write_pieces(&socket, p))
            });
            if let Err(reason) = written {
                self.metrics.http_closed(reason);
                break ConnectionEnd::Quiet(None);
            }
            if reply.close {
                break ConnectionEnd::Quiet(None);
            }
            served += 1;
            let used = buf.len();
            buf.drain(..end);
            if sender.is_some() {
                // What followed the event moved forward; its old place is overwritten too.
                let moved = used - buf.len();
                buf.spare_capacity_mut()[..moved].fill(std::mem::MaybeUninit::new(0));
            }
        };
        lock(&self.clients.map).remove(&id);
        // What is left may hold an event's sender, refused before it was handed on.
        buf.fill(0);
        match end {
            ConnectionEnd::Quiet(reason) => {
                if let Some(reason) = reason {
                    self.metrics.http_closed(reason);
                }
            }
            ConnectionEnd::Refuse(refusal, origin) => {
                let reason = match refusal.status {
                    408 => "header_timeout",
                    431 => "header_too_large",
                    503 => refusal.error,
                    _ => "bad_request",
                };
                self.metrics.http_closed(reason);
                self.metrics.request("other", refusal.status);
                if let Some(unlogged) = self.refusals_logged.take() {
                    // An event's sender is a site's visitor, whose address is never logged.
                    let who = if counts_sender {
                        "an event's sender".to_string()
                    } else {
                        self.identity.name(peer)
                    };
                    log::info!(
                        "{who} -> {} ({}), connection closed{unlogged}",
                        refusal.status,
                        refusal.error
                    );
                }
                self.write_refusal(&socket, &refusal, origin.as_deref());
            }
            ConnectionEnd::OverCapacity => self.over_capacity(&socket, peer),
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
    ) -> Result<(usize, Instant), ConnectionEnd> {
        let limits = &self.limits;
        let mut scanner = Scanner::default();
        let idle_until = Instant::now() + limits.idle_timeout;
        let mut started =
            (first || !buf.is_empty()).then(|| if first { accepted } else { Instant::now() });
        loop {
            if let Some(len) = scanner
                .end(buf)
                .map_err(|r| ConnectionEnd::Refuse(r, None))?
            {
                return Ok((len, started.unwrap_or_else(Instant::now)));
            }
            if buf.len() > limits.max_header_bytes {
                return Err(ConnectionEnd::Refuse(
                    EdgeError {
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
                    Some(_) => ConnectionEnd::Refuse(too_slow(header_timeout), None),
                    None => ConnectionEnd::Quiet(Some("idle")),
                });
            }
            let step = if buf.capacity() == 0 {
                FIRST_READ
            } else {
                4096
            };
            let room = (limits.max_header_bytes + 1 - buf.len()).clamp(1, step);
            if fill(socket, buf, room, left)? > 0 {
                started.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Reads until `buf` holds `end` bytes, by the request's deadline (`began` +
    /// `HEADER_TIMEOUT_MS`): the rest of a body whose head has arrived, its length already
    /// bounded ([`Route::body_limit`]).
    fn read_body(
        &self,
        socket: &TcpStream,
        buf: &mut Vec<u8>,
        end: usize,
        began: Instant,
    ) -> Result<(), ConnectionEnd> {
        let timeout = self.limits.header_timeout;
        while buf.len() < end {
            let left = (began + timeout).saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnectionEnd::Refuse(too_slow(timeout), None));
            }
            fill(socket, buf, end - buf.len(), left)?;
        }
        Ok(())
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
    pub(super) fn write_refusal(
        &self,
        socket: &TcpStream,
        refusal: &EdgeError,
        origin: Option<&str>,
    ) {
        let reply = http::error(refusal.status, refusal.error, &refusal.message, &[]);
        let reply = http::with_cors(reply, &self.cors, origin);
        let bytes = render(reply, 1, false, true);
        let _ = socket.set_write_timeout(Some(REFUSAL_WRITE));
        let _ = (&*socket).write_all(&bytes);
        let _ = socket.shutdown(Shutdown::Both);
    }
}

/// A reply ready for the connection's thread to write.
struct Rendered {
    /// The reply's bytes for the client's HTTP version.
    bytes: Vec<u8>,
    /// The connection ends after it.
    close: bool,
    /// Not before then (chaos latency, 30 s at most).
    due: Option<Instant>,
    /// The rest of the body, produced as the client takes it (a long history).
    pieces: Option<Pieces>,
}

impl Rendered {
    /// `reply` to the request `head`, held `delay` first. The connection ends after it
    /// when `close`: the client asked (or the place is a probe's), or a refused upgrade,
    /// as the client asked to leave HTTP and nothing else will follow on it.
    fn new(
        reply: Reply,
        delay: Duration,
        pieces: Option<Pieces>,
        head: &Head,
        close: bool,
    ) -> Rendered {
        let head_only = head.method == "HEAD";
        Rendered {
            bytes: render(reply, head.minor, head_only, close),
            close,
            due: (!delay.is_zero()).then(|| Instant::now() + delay),
            pieces: pieces.filter(|_| !head_only),
        }
    }
}

/// The request tiny_http reads: the client's request line and end-to-end headers, as
/// HTTP/1.1 on a connection that stays open, which client it came from with its [`Hop`],
/// and the `body` the edge read, if any. With a `sender` digest
/// ([`super::identity::Identity::digest`]),
/// the headers that identify the sender are left out and `X-Edge-Client` stands for
/// them.
fn canonical(
    head: &Head,
    route: Option<Route>,
    body: &[u8],
    sender: Option<&str>,
    id: u64,
    secret: &str,
) -> Vec<u8> {
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
        if HOP.contains(&lower.as_str())
            || lower.starts_with("x-edge-")
            || (sender.is_some() && IDENTIFYING.contains(&lower.as_str()))
        {
            continue;
        }
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let hop = Hop {
        route,
        minor: head.minor,
        upgrade: head.upgrade,
        body: head.body != Body::None && body.is_empty(),
    };
    if !body.is_empty() {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    if let Some(sender) = sender {
        let _ = write!(out, "X-Edge-Client: {sender}\r\n");
    }
    let _ = write!(out, "X-Edge-Conn: {id} {secret} {hop}\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Reads at most `room` more bytes onto `buf`, waiting at most `timeout`: how many came
/// (none when the wait ran out). The client gone or the socket failed ends the
/// connection quietly.
fn fill(
    socket: &TcpStream,
    buf: &mut Vec<u8>,
    room: usize,
    timeout: Duration,
) -> Result<usize, ConnectionEnd> {
    let _ = socket.set_read_timeout(Some(timeout));
    let len = buf.len();
    buf.resize(len + room, 0);
    let read = (&*socket).read(&mut buf[len..]);
    buf.truncate(len + *read.as_ref().unwrap_or(&0));
    match read {
        Ok(0) => Err(ConnectionEnd::Quiet(None)),
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(0)
        }
        Err(_) => Err(ConnectionEnd::Quiet(None)),
    }
}

/// A request that did not arrive whole within `HEADER_TIMEOUT_MS`.
fn too_slow(timeout: Duration) -> EdgeError {
    EdgeError {
        status: 408,
        error: "request_timeout",
        message: format!(
            "No complete request within {} s. Send the whole request (head and body) at once.",
            timeout.as_secs_f64()
        ),
    }
}

/// No turn freed up for a request in time: the server is at its CPU budget.
fn busy() -> EdgeError {
    EdgeError {
        status: 503,
        error: "busy",
        message: "The server is working on as many requests as its CPU budget allows. Retry \
                  in a few seconds."
            .into(),
    }
}

/// The request's `Origin`, for the CORS headers of a refusal.
fn origin(head: &Head) -> Option<String> {
    head.header("Origin").map(str::to_string)
}

/// An event body longer than its route takes.
fn body_too_large(limit: u64) -> EdgeError {
    EdgeError {
        status: 413,
        error: "body_too_large",
        message: format!("An event is at most {limit} bytes. Send one event per request."),
    }
}

/// An event body sent chunked: its length must be known before it is read.
fn length_required() -> EdgeError {
    EdgeError {
        status: 411,
        error: "length_required",
        message: "Send the event with Content-Length, not Transfer-Encoding: chunked (fetch \
                  and sendBeacon do)."
            .into(),
    }
}

fn unavailable() -> EdgeError {
    EdgeError {
        status: 503,
        error: "unavailable",
        message: "The server could not answer in time. Retry in a few seconds.".into(),
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
        let text =
            String::from_utf8(canonical(&head, Some(Route::Api), b"", None, 7, "s3cret")).unwrap();
        assert_eq!(
            text,
            "GET /api?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nOrigin: http://o\r\n\
             X-Edge-Conn: 7 s3cret 1.0 /api upgrade\r\n\r\n"
        );
    }
}
