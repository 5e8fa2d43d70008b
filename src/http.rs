//! HTTP plumbing shared by REST and the streams: JSON responses, error bodies, headers and
//! CORS, in one place so that REST and stream refusals look alike to a client.

use std::fmt::Write;
use std::io::Cursor;
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use tiny_http::{Header, Response, StatusCode};

/// What every handler returns: the body is shared bytes, so a sample is not copied.
pub type Reply = Response<Cursor<Bytes>>;

/// A body written as the client takes it, piece by piece, never held whole (a long
/// history). The reply it goes with carries its length ([`json_head`]). A piece that
/// cannot be produced ends the body short, with the reason (for the metrics): the
/// connection is then closed, so the client sees the cut.
pub type Pieces = Box<dyn Iterator<Item = Result<Bytes, &'static str>> + Send>;

/// What a worker decides for a request, and all it hands back: the connection's thread
/// carries it out. Defined here, below the edge and the routes, so that the edge knows no
/// route and the routes no socket.
pub enum Decision {
    /// A reply, held this long first (chaos `latency`).
    Reply(Reply, Duration),
    /// A reply the connection's thread computes first.
    Later(DeferredReply),
    /// The connection becomes a stream.
    Stream(StreamFn),
}

/// A reply to compute on the connection's own thread, not on one of the four workers:
/// a long history takes milliseconds (a second in a debug build), and the workers must
/// stay free for everyone else's requests, `/healthz` among them. Gives the reply, how
/// long to hold it, and its body's [`Pieces`] when the body is produced as the client
/// takes it.
pub type DeferredReply = Box<dyn FnOnce() -> (DelayedReply, Option<Pieces>) + Send>;

/// A reply and how long to hold it (the request's chaos `latency`; zero otherwise).
pub type DelayedReply = (Reply, Duration);

/// Runs a stream on the connection's thread: given the socket and any bytes the client
/// sent after the request head.
pub type StreamFn = Box<dyn FnOnce(TcpStream, Vec<u8>) + Send>;

/// The head of a JSON response whose `len` bytes of body come as [`Pieces`].
pub fn json_head(status: u16, len: usize) -> Reply {
    Response::new(
        StatusCode(status),
        vec![header("Content-Type", "application/json")],
        Cursor::new(Bytes::new()),
        Some(len),
        None,
    )
    .with_chunked_threshold(usize::MAX)
}

/// A response whose body is already-encoded JSON.
pub fn json_bytes(status: u16, body: Bytes) -> Reply {
    with_body(status, "application/json", body)
}

/// A response with a body of the given content type. The length is always sent as
/// `Content-Length`: tiny_http would otherwise chunk bodies over 32 KiB (the OpenAPI
/// document, long histories), which simple clients and progress bars handle worse.
pub fn with_body(status: u16, content_type: &str, body: Bytes) -> Reply {
    let len = body.len();
    Response::new(
        StatusCode(status),
        vec![header("Content-Type", content_type)],
        Cursor::new(body),
        Some(len),
        None,
    )
    .with_chunked_threshold(usize::MAX)
}

/// A response whose body is `value` serialized as JSON.
pub fn json(status: u16, value: &impl Serialize) -> Reply {
    json_bytes(
        status,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

/// An error: `{"error": code, "message": message}` plus any `extra` fields.
/// `code` is stable and machine-readable; `message` tells a person what to do next.
pub fn error(status: u16, code: &str, message: &str, extra: &[(&str, &str)]) -> Reply {
    let mut body = json!({ "error": code, "message": message });
    for (k, v) in extra {
        body[*k] = json!(v);
    }
    let reply = json(status, &body);
    if status == 503 {
        reply.with_header(header("Retry-After", RETRY_AFTER))
    } else {
        reply
    }
}

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER: &str = "5";

/// A response with no body (204, or 101 for an upgrade).
pub fn empty(status: u16) -> Reply {
    Response::new(
        StatusCode(status),
        vec![],
        Cursor::new(Bytes::new()),
        Some(0),
        None,
    )
}

/// Builds a header. Control and non-ASCII characters are dropped from the value first
/// (values are ours, or a client's header value that tiny_http already holds as ASCII),
/// so building it cannot fail for any `name` used in this crate.
pub fn header(name: &'static str, value: &str) -> Header {
    let value: String = value
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect();
    Header::from_bytes(name, value).expect("header names are ASCII tokens")
}

/// Which origins get an `Access-Control-Allow-Origin` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// `*`: every origin (the data is public and carries no credentials).
    Any,
    /// Only these exact origins, echoed back with `Vary: Origin`.
    Only(Vec<String>),
}

/// Adds `Access-Control-Allow-Origin` for the request's `Origin`, per the CORS policy.
pub fn with_cors(reply: Reply, cors: &Cors, origin: Option<&str>) -> Reply {
    cors_headers(cors, origin)
        .into_iter()
        .fold(reply, Response::with_header)
}

/// The CORS headers for a response to a request from `origin`. Pages may read the
/// headers a client acts on: when to retry, and which query parameters were ignored.
pub fn cors_headers(cors: &Cors, origin: Option<&str>) -> Vec<Header> {
    let expose = || {
        header(
            "Access-Control-Expose-Headers",
            "Retry-After, X-Ignored-Parameters, X-Chaos, X-Chaos-Seed",
        )
    };
    match cors {
        Cors::Any => vec![header("Access-Control-Allow-Origin", "*"), expose()],
        Cors::Only(allowed) => {
            let mut headers = vec![header("Vary", "Origin")];
            if let Some(o) = origin.filter(|o| allowed.iter().any(|a| a == o)) {
                headers.push(header("Access-Control-Allow-Origin", o));
                headers.push(expose());
            }
            headers
        }
    }
}

/// Bytes of outside text (a client's, or the environment's) shown in a log line or a
/// message; the rest is summed up by its length.
const SHOWN: usize = 40;

/// Outside text as it may be shown in a log line or a message: control characters and
/// non-ASCII bytes escaped (a client cannot forge lines or send terminal escapes), and
/// cut after about 40 characters with a note of its whole length, so that no client (or
/// configuration value) can make a line long.
pub fn printable(text: impl AsRef<[u8]>) -> String {
    let bytes = text.as_ref();
    let mut out = String::with_capacity(SHOWN + 20);
    for &b in bytes {
        if out.len() >= SHOWN {
            let _ = write!(out, "... ({} bytes)", bytes.len());
            break;
        }
        if (b' '..=b'~').contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_text_cannot_forge_lines_or_escapes() {
        assert_eq!(printable("/api?x=1"), "/api?x=1");
        assert_eq!(printable("/a\r\nFAKE\x1b[31m"), "/a\\x0d\\x0aFAKE\\x1b[31m");
        assert_eq!(printable("/é"), "/\\xc3\\xa9");
        assert_eq!(printable("a".repeat(40)), "a".repeat(40));
        assert_eq!(
            printable("a".repeat(4000)),
            format!("{}... (4000 bytes)", "a".repeat(40))
        );
        assert_eq!(printable(b"\xff\xfe"), "\\xff\\xfe");
    }
}
