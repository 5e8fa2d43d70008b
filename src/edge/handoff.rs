//! The handoff between a connection's thread and the workers: the registry in which a
//! worker finds the connection behind a request, with what the edge read of the
//! request's hop ([`Connections::find`], [`Hop`]), and where the worker leaves its
//! decision for the connection's thread ([`Connection::decide`]): the one thing that
//! goes back.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use tiny_http::Request;

use crate::http::Decision;
use crate::paths::Route;
use crate::sync::lock;

/// Where a worker leaves its decision for the connection's thread, which sleeps until it
/// is there. Not a channel: crossbeam's blocking receive spins and yields before it
/// sleeps, taking CPU from the workers it waits for.
#[derive(Default)]
pub(super) struct DecisionSlot {
    slot: Mutex<Option<Decision>>,
    made: Condvar,
}

impl DecisionSlot {
    fn put(&self, decision: Decision) {
        *lock(&self.slot) = Some(decision);
        self.made.notify_one();
    }

    /// The decision, once made, if made within `limit`.
    pub(super) fn take_within(&self, limit: Duration) -> Option<Decision> {
        let slot = lock(&self.slot);
        let (mut slot, _) = self
            .made
            .wait_timeout_while(slot, limit, |o| o.is_none())
            .unwrap_or_else(|e| e.into_inner());
        slot.take()
    }
}

/// What the edge read of a request that its canonical head leaves out (tiny_http sees
/// HTTP/1.1 and no hop-by-hop header), and the route it worked out: it travels in that
/// head's `X-Edge-Conn` line as `1.0`/`1.1`, the route's path (`-` for none), and the
/// words `upgrade` and `body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// The route the request's path names (see `paths`), worked out once, by the edge.
    pub route: Option<Route>,
    /// The client's HTTP minor version (0 or 1).
    pub minor: u8,
    /// `Connection: upgrade` was sent.
    pub upgrade: bool,
    /// A body is declared (never read): the answer is a refusal.
    pub body: bool,
}

/// The words after the connection's number and secret in `X-Edge-Conn`.
impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = self.route.map_or("-", Route::path);
        write!(f, "1.{} {route}", self.minor)?;
        for (set, word) in [(self.upgrade, " upgrade"), (self.body, " body")] {
            if set {
                f.write_str(word)?;
            }
        }
        Ok(())
    }
}

impl Hop {
    fn parse(words: &str) -> Option<Hop> {
        let mut words = words.split(' ');
        let minor = match words.next()? {
            "1.0" => 0,
            "1.1" => 1,
            _ => return None,
        };
        let route = match words.next()? {
            "-" => None,
            path => Some(Route::ALL.into_iter().find(|r| r.path() == path)?),
        };
        let mut hop = Hop {
            route,
            minor,
            upgrade: false,
            body: false,
        };
        for word in words {
            match word {
                "upgrade" => hop.upgrade = true,
                "body" => hop.body = true,
                _ => return None,
            }
        }
        Some(hop)
    }
}

/// A client connection, as the workers see it.
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    pub(super) socket: Arc<TcpStream>,
    pub(super) decision: Arc<DecisionSlot>,
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

    /// The client connection behind a request tiny_http parsed, and its [`Hop`], or
    /// `None` for one the edge did not send (its probes are acknowledged here).
    pub fn find(&self, request: &Request) -> Option<(Arc<Connection>, Hop)> {
        // The edge's own line is the last: a client's `X-Edge-*` never reaches tiny_http.
        let internal = |name| {
            let value = request
                .headers()
                .iter()
                .rev()
                .find(|h| h.field.equiv(name))?
                .value
                .as_str();
            let (n, rest) = value.split_once(' ')?;
            let (secret, words) = rest.split_once(' ').unwrap_or((rest, ""));
            (secret == self.secret).then(|| Some((n.parse::<u64>().ok()?, words)))?
        };
        if let Some((link, _)) = internal("X-Edge-Probe") {
            let _ = self.acks.try_send(Ack::Link(link as usize));
            return None;
        }
        let (id, words) = internal("X-Edge-Conn")?;
        let hop = Hop::parse(words)?;
        let connection = lock(&self.map).get(&id).cloned()?;
        Some((connection, hop))
    }

    /// Tells the edge that tiny_http's accept loop ended, as the edge made it do.
    pub fn accept_loop_ended(&self) {
        let _ = self.acks.try_send(Ack::Closed);
    }
}

impl Connection {
    /// Finishes tiny_http's request and hands `decision` to the connection's thread,
    /// which carries it out: the worker writes nothing to the client's socket.
    pub fn decide(self: Arc<Self>, request: Request, decision: Decision) {
        finish(request);
        let slot = Arc::clone(&self.decision);
        // For a stream the connection's thread takes the socket over: ours must be gone
        // first.
        drop(self);
        slot.put(decision);
    }
}

/// Ends tiny_http's part in a request without writing anything on its connection (a
/// `Request` dropped unanswered would write a 500 there).
pub fn finish(request: Request) {
    drop(request.into_writer());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_travel_in_the_canonical_head_and_back() {
        for route in Route::ALL.into_iter().map(Some).chain([None]) {
            for (minor, upgrade, body) in [(0, false, false), (1, true, false), (1, true, true)] {
                let hop = Hop {
                    route,
                    minor,
                    upgrade,
                    body,
                };
                assert_eq!(Hop::parse(&hop.to_string()), Some(hop), "{hop}");
            }
        }
        assert_eq!(
            Hop::parse("1.1 /api upgrade").map(|h| h.upgrade),
            Some(true)
        );
        for words in ["", "2.0 -", "1.1 /nowhere", "1.1 - close"] {
            assert_eq!(Hop::parse(words), None, "{words:?}");
        }
    }
}
