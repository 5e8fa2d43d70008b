//! The handoff between a connection's thread and the workers: the registry in which a
//! worker finds the connection behind a request ([`Connections`]), what the edge read
//! about the request ([`Exchange`]), and where the worker leaves its decision for the
//! connection's thread ([`Connection::reply`], [`Connection::later`],
//! [`Connection::hand_back`]).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use tiny_http::Request;

use crate::http::{Pieces, Reply};
use crate::platform;
use crate::routes::DeferredReply;
use crate::sync::lock;

use super::StreamFn;
use super::head::Head;
use super::render::render;

/// What a worker decided for a request.
pub(super) enum Outcome {
    Reply(Rendered),
    /// A reply for the connection's thread to compute first (see `routes::DeferredReply`).
    Later(DeferredReply),
    Stream(StreamFn),
}

/// Where a worker leaves its decision for the connection's thread, which sleeps until it
/// is there. Not a channel: crossbeam's blocking receive spins and yields before it
/// sleeps, taking CPU from the workers it waits for.
#[derive(Default)]
pub(super) struct Decision {
    slot: Mutex<Option<Outcome>>,
    made: Condvar,
}

impl Decision {
    pub(super) fn put(&self, outcome: Outcome) {
        *lock(&self.slot) = Some(outcome);
        self.made.notify_one();
    }

    /// The decision, once made, if made within `limit`.
    pub(super) fn take_within(&self, limit: Duration) -> Option<Outcome> {
        let slot = lock(&self.slot);
        let (mut slot, _) = self
            .made
            .wait_timeout_while(slot, limit, |o| o.is_none())
            .unwrap_or_else(|e| e.into_inner());
        slot.take()
    }
}

/// A reply ready for the connection's thread to write.
pub(super) struct Rendered {
    /// The reply's bytes; the first `sent` are already on their way.
    pub(super) bytes: Vec<u8>,
    pub(super) sent: usize,
    /// The connection ends after it.
    pub(super) close: bool,
    /// Not before then (chaos latency, 30 s at most).
    pub(super) due: Option<Instant>,
    /// The rest of the body, produced as the client takes it (a long history).
    pub(super) pieces: Option<Pieces>,
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
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    pub(super) socket: Arc<TcpStream>,
    pub(super) exchange: Mutex<Exchange>,
    pub(super) decision: Arc<Decision>,
}

/// The open client connections, by the number the edge gave each, for the workers to
/// find the client behind a request. Requests carry that number and a secret of this
/// process, so nothing but the edge can speak for a client.
pub struct Connections {
    pub(super) secret: String,
    pub(super) map: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Tells the edge, while it opens its internal connections, what the workers saw.
    pub(super) acks: Sender<Ack>,
}

/// What a worker tells the edge while it opens its internal connections (see [`super::upstream`]).
#[derive(Debug)]
pub enum Ack {
    /// The probe on this internal connection reached a worker.
    Link(usize),
    /// tiny_http's accept loop ended: its listener takes no more connections.
    Closed,
}

impl Connections {
    /// The registry, and the channel on which the edge hears from the workers.
    pub fn new() -> (Arc<Connections>, Receiver<Ack>) {
        let (acks, acked) = bounded(8);
        let clients = Connections {
            secret: format!("{:032x}", rand::random::<u128>()),
            map: Mutex::default(),
            acks,
        };
        (Arc::new(clients), acked)
    }

    /// The client connection behind a request tiny_http parsed, or `None` for one the edge
    /// did not send (its probes are acknowledged here).
    pub fn find(&self, request: &Request) -> Option<Arc<Connection>> {
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
        if let Some(link) = internal("X-Edge-Probe") {
            let _ = self.acks.try_send(Ack::Link(link as usize));
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

impl Connection {
    /// Computes a [`DeferredReply`] on the connection's thread, into what a worker's reply
    /// would have been.
    pub(super) fn computed(&self, answer: DeferredReply, head: &Head) -> Rendered {
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
    /// then send it as [`Connection::reply`] would: heavy work holds that thread, not a
    /// worker.
    pub fn later(self: Arc<Self>, request: Request, answer: DeferredReply) {
        finish(request);
        let decision = Arc::clone(&self.decision);
        drop(self);
        decision.put(Outcome::Later(answer));
    }

    /// Hands the connection back to its thread, which runs `run` on it.
    pub fn hand_back(self: Arc<Self>, request: Request, run: StreamFn) {
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
