//! The server's errors, as types: why it could not start ([`StartError`]), why it can no
//! longer serve ([`Failure`]), and why a stream was refused ([`Refusal`], turned into the
//! client's JSON answer in one place, [`Refusal::reply`]).

use std::error::Error;
use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::http::{self, Reply, header};

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The public address cannot be bound.
    Listen { addr: SocketAddr, source: io::Error },
    /// A part of the server (a thread, tiny_http, the watcher) could not start.
    Part {
        what: &'static str,
        source: Box<dyn Error + Send + Sync>,
    },
    /// The open-file limit is lower than the server's own descriptors, the health probes'
    /// places and one client of each kind need.
    DescriptorLimit { limit: u64, minimum: usize },
    /// Live mode's state, as configured, does not fit its share of the memory budget.
    LiveMemory {
        /// The variable to change.
        var: &'static str,
        needed_mib: u64,
        share_mib: u64,
        /// What would fit.
        advice: String,
    },
}

impl StartError {
    /// A part that could not start, and why.
    pub fn part(what: &'static str) -> impl FnOnce(io::Error) -> StartError {
        move |e| StartError::Part {
            what,
            source: Box::new(e),
        }
    }

    /// The process's exit status: 2 for a limit of the host the server cannot run
    /// under (as for a bad configuration: nothing a restart would fix), 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            StartError::DescriptorLimit { .. } | StartError::LiveMemory { .. } => 2,
            StartError::Listen { .. } | StartError::Part { .. } => 1,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Listen { addr, source } => match source.kind() {
                io::ErrorKind::AddrInUse => write!(
                    f,
                    "cannot listen on {addr}: the port is already in use; stop the other \
                     process or set PORT to a free port"
                ),
                io::ErrorKind::AddrNotAvailable => write!(
                    f,
                    "cannot listen on {addr}: no interface has that address; set HOST to one \
                     this machine has, or 0.0.0.0 for all"
                ),
                _ => write!(f, "cannot listen on {addr}: {source}"),
            },
            StartError::Part { what, source } => write!(f, "cannot start {what}: {source}"),
            StartError::DescriptorLimit { limit, minimum } => write!(
                f,
                "the open-file limit (RLIMIT_NOFILE) is {limit}; the server needs at least \
                 {minimum} descriptors (its own, the health probes', one client of each \
                 kind): raise it, e.g. `ulimit -n {minimum}` or more, and start again"
            ),
            StartError::LiveMemory {
                var,
                needed_mib,
                share_mib,
                advice,
            } => write!(
                f,
                "live mode needs {needed_mib} MiB for what {var} asks, and the memory budget \
                 leaves {share_mib} MiB for it (a fifth of what is left past the server's own \
                 32 MiB; MEMORY_BUDGET sets the budget): {advice}"
            ),
        }
    }
}

impl Error for StartError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StartError::Listen { source, .. } => Some(source),
            StartError::Part { source, .. } => Some(source.as_ref()),
            StartError::DescriptorLimit { .. } | StartError::LiveMemory { .. } => None,
        }
    }
}

/// Why a running server can no longer serve; the process should exit non-zero so that the
/// platform restarts it.
#[derive(Debug)]
pub enum Failure {
    /// tiny_http's request queue failed under the workers.
    Workers(io::Error),
    /// The watchdog's probes went unanswered (or `/healthz` said the generator stopped).
    Unresponsive(io::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Workers(e) => write!(f, "tiny_http stopped: {e}"),
            Failure::Unresponsive(e) => {
                write!(f, "the server stopped answering its own health probe ({e})")
            }
        }
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Failure::Workers(e) | Failure::Unresponsive(e) => Some(e),
        }
    }
}

/// Why a WebSocket upgrade or an event stream was refused before it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An upgrade with another method than GET.
    NotGet,
    /// An upgrade over HTTP/1.0.
    NotHttp11,
    /// An upgrade without `Connection: Upgrade`.
    NoConnectionUpgrade,
    /// An upgrade with this header more than once.
    Repeated(&'static str),
    /// `Sec-WebSocket-Version` other than 13.
    WebSocketVersion,
    /// A missing or malformed `Sec-WebSocket-Key`.
    BadKey,
    /// A browser page whose origin `CORS_ORIGINS` does not list.
    OriginNotAllowed(String),
    /// The server is shutting down.
    ShuttingDown,
    /// `MAX_WS_CLIENTS` streams are open.
    TooManyClients(usize),
}

impl Refusal {
    /// The client's answer: a status, a stable code and a message that says what to do.
    pub fn reply(&self) -> Reply {
        match self {
            Refusal::NotGet => bad_handshake("WebSocket upgrades must use GET."),
            Refusal::NotHttp11 => {
                bad_handshake("A WebSocket upgrade needs HTTP/1.1: send the request as HTTP/1.1.")
            }
            Refusal::NoConnectionUpgrade => {
                bad_handshake("A WebSocket upgrade needs `Connection: Upgrade`.")
            }
            Refusal::Repeated(name) => bad_handshake(&format!(
                "{name} was sent more than once: send it exactly once (RFC 6455)."
            )),
            Refusal::BadKey => bad_handshake(
                "Missing or malformed Sec-WebSocket-Key: it must be 16 random bytes in base64.",
            ),
            Refusal::WebSocketVersion => http::error(
                426,
                "unsupported_websocket_version",
                "Only WebSocket version 13 (RFC 6455) is supported: send \
                 `Sec-WebSocket-Version: 13`.",
                &[],
            )
            .with_header(header("Sec-WebSocket-Version", "13")),
            Refusal::OriginNotAllowed(origin) => http::error(
                403,
                "origin_not_allowed",
                "This server's CORS_ORIGINS does not list the page's origin.",
                &[("origin", origin)],
            ),
            Refusal::ShuttingDown => http::error(
                503,
                "shutting_down",
                "This instance is shutting down. Reconnect in a few seconds.",
                &[],
            ),
            Refusal::TooManyClients(max) => http::error(
                503,
                "too_many_clients",
                &format!(
                    "This server is at its limit of {max} streaming clients. Retry in a few \
                     seconds, or poll GET /api/analytics."
                ),
                &[],
            ),
        }
    }
}

fn bad_handshake(message: &str) -> Reply {
    http::error(400, "bad_handshake", message, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_cause_and_say_what_to_do() {
        let in_use = || io::Error::from(io::ErrorKind::AddrInUse);
        let e = StartError::Listen {
            addr: ([127, 0, 0, 1], 80).into(),
            source: in_use(),
        };
        assert!(e.to_string().contains("set PORT to a free port"), "{e}");
        assert_eq!(e.source().unwrap().to_string(), in_use().to_string());
        let e = StartError::part("the watchdog")(io::Error::other("no threads"));
        assert_eq!(e.to_string(), "cannot start the watchdog: no threads");
        assert!(Failure::Unresponsive(in_use()).source().is_some());
        let e = StartError::DescriptorLimit {
            limit: 20,
            minimum: 30,
        };
        assert!(e.to_string().contains("is 20") && e.to_string().contains("ulimit -n 30"));
        assert_eq!(e.exit_status(), 2);
        assert_eq!(
            StartError::part("x")(io::Error::other("y")).exit_status(),
            1
        );
    }

    #[test]
    fn each_refusal_has_its_status() {
        for (refusal, status) in [
            (Refusal::NotGet, 400),
            (Refusal::NotHttp11, 400),
            (Refusal::NoConnectionUpgrade, 400),
            (Refusal::Repeated("Sec-WebSocket-Key"), 400),
            (Refusal::BadKey, 400),
            (Refusal::WebSocketVersion, 426),
            (Refusal::OriginNotAllowed("https://x.example".into()), 403),
            (Refusal::ShuttingDown, 503),
            (Refusal::TooManyClients(3), 503),
        ] {
            assert_eq!(refusal.reply().status_code().0, status, "{refusal:?}");
        }
    }
}
