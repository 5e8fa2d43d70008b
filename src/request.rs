//! A client's request as a worker reads it, once: the method, the route, the headers
//! that decide its answer and the query's options. Every decision (REST, WebSocket, event
//! stream) and every reply reads this value, never tiny_http's request or its headers.

use std::net::SocketAddr;

use tiny_http::{Method, Request};

use crate::context::Context;
use crate::edge::Hop;
use crate::options::{self, Invalid, Options, Range};
use crate::paths::Route;
use crate::sample::Tick;

/// An event's sender, as the edge's keyed digests stand for it (see `edge`'s
/// `identity`): the address, for the rate limit; address and User-Agent, for the
/// visitor; and whether the User-Agent is a bot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub client: u64,
    pub visitor: u64,
    pub bot: bool,
}

impl Sender {
    fn parse(value: &str) -> Option<Sender> {
        let mut words = value.split(' ');
        let mut digest = || u64::from_str_radix(words.next()?, 16).ok();
        let (client, visitor) = (digest()?, digest()?);
        Some(Sender {
            client,
            visitor,
            bot: words.next() == Some("bot"),
        })
    }
}

/// A request, read once by the worker that answers it. Borrows tiny_http's request.
pub struct ClientRequest<'r> {
    pub method: &'r Method,
    /// The target as sent, query included (for the log).
    pub target: &'r str,
    /// The route the edge worked out from the path.
    pub route: Option<Route>,
    pub peer: SocketAddr,
    /// What the edge read of the request's hop: HTTP version, `Connection: upgrade`, a body.
    pub hop: Hop,
    /// `Upgrade` names `websocket`.
    pub websocket: bool,
    /// A `GET` whose `Accept` names `text/event-stream` ([`accepts`]), as `EventSource`
    /// sends.
    pub event_stream: bool,
    /// `Accept` names `text/html`: a browser (curl and Postman send `*/*`).
    pub html: bool,
    pub origin: Option<&'r str>,
    /// `Host`, if it is worth echoing into URLs ([`is_valid_host`]).
    pub host: Option<&'r str>,
    /// `X-Forwarded-Proto: https`: reached through a TLS proxy such as Render's.
    pub https: bool,
    pub websocket_key: Option<&'r str>,
    pub websocket_version: Option<&'r str>,
    /// `Origin` or a handshake header, sent more than once (RFC 6454 §7.3, RFC 6455
    /// §11.3.1, §11.3.5): the request is refused.
    pub repeated: Option<&'static str>,
    /// A preflight's `Access-Control-Request-Headers`.
    pub requested_headers: Option<&'r str>,
    pub content_type: Option<&'r str>,
    /// For an event, the edge's digests of its sender (`X-Edge-Client`).
    pub sender: Option<Sender>,
    /// The body the edge read (`POST /api/event` only; empty otherwise).
    pub body: Vec<u8>,
    /// The latest sample of the request's site when it was read: its options were checked
    /// against it.
    pub latest: Tick,
    /// The query's sample options. For a stream, a resuming `EventSource`'s
    /// `Last-Event-ID` stands for `since` when the query has none ([`Options::resume`]).
    pub options: Result<Options, Invalid>,
    /// The query's history range (used by `/api/analytics/history` only).
    pub range: Result<Range, Invalid>,
}

impl<'r> ClientRequest<'r> {
    /// Reads `request`, which came from the client at `peer` with `hop` and `body`, in
    /// one pass over its headers. Of a header sent twice the first counts, as in any HTTP
    /// library's lookup; a WebSocket key or version sent twice is noted in `repeated`.
    pub fn read(
        request: &'r Request,
        peer: SocketAddr,
        hop: Hop,
        body: Vec<u8>,
        ctx: &Context,
    ) -> Self {
        const UPGRADE: usize = 0;
        const ACCEPT: usize = 1;
        const ORIGIN: usize = 2;
        const HOST: usize = 3;
        const FORWARDED_PROTO: usize = 4;
        const LAST_EVENT_ID: usize = 5;
        const REQUESTED_HEADERS: usize = 6;
        const KEY: usize = 7;
        const VERSION: usize = 8;
        const CONTENT_TYPE: usize = 9;
        const SENDER: usize = 10;
        const NAMES: [&str; 11] = [
            "Upgrade",
            "Accept",
            "Origin",
            "Host",
            "X-Forwarded-Proto",
            "Last-Event-ID",
            "Access-Control-Request-Headers",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "Content-Type",
            // The edge's own line, the last of the head: a client's never gets through.
            "X-Edge-Client",
        ];
        let mut values: [Option<&'r str>; 11] = [None; 11];
        let mut repeated = None;
        // Lines of a repeated header count as one comma-joined line (RFC 9110 §5.3):
        // `Accept` is judged line by line; a repeated `Last-Event-ID` is joined.
        let (mut html, mut event_stream) = (false, false);
        let mut joined_id = None;
        for h in request.headers() {
            let Some(i) = NAMES.iter().position(|&name| h.field.equiv(name)) else {
                continue;
            };
            let value = h.value.as_str();
            if i == ACCEPT {
                html |= accepts(value, "text/html");
                event_stream |= accepts(value, "text/event-stream");
            }
            match values[i] {
                None => values[i] = Some(value),
                // One page sends a request: two origins, two keys or two versions leave
                // it ambiguous (RFC 6454 §7.3, RFC 6455 §11.3).
                Some(_) if matches!(i, ORIGIN | KEY | VERSION) => {
                    repeated = repeated.or(Some(NAMES[i]));
                }
                Some(first) if i == LAST_EVENT_ID => joined_id = Some(format!("{first}, {value}")),
                Some(_) => {}
            }
        }
        let method = request.method();
        let target = request.url();
        let websocket = values[UPGRADE].is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        });
        let event_stream = *method == Method::Get && event_stream;
        let feed = &ctx.feed;
        // Every site's hub is at the same tick, give or take the one being published.
        let mut latest = ctx.hub(0).latest();
        let pairs = options::pairs(options::query(target));
        let mut sample_options =
            options::parse(&pairs, &feed.model, feed.sites(), &ctx.chaos, latest.seq);
        if let Ok(o) = &sample_options
            && o.site != 0
        {
            latest = ctx.hub(o.site).latest();
        }
        let id = joined_id.as_deref().or(values[LAST_EVENT_ID]);
        if let (Ok(o), Some(id)) = (&mut sample_options, last_event_id(id))
            && o.since.is_none()
            && (websocket || event_stream)
        {
            o.resume(id, latest.seq);
        }
        ClientRequest {
            method,
            target,
            route: hop.route,
            peer,
            hop,
            websocket,
            event_stream,
            html,
            origin: values[ORIGIN],
            host: values[HOST].filter(|h| is_valid_host(h)),
            https: values[FORWARDED_PROTO]
                .and_then(|p| p.split(',').next())
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https")),
            websocket_key: values[KEY],
            websocket_version: values[VERSION],
            repeated,
            requested_headers: values[REQUESTED_HEADERS],
            content_type: values[CONTENT_TYPE],
            sender: values[SENDER].and_then(Sender::parse),
            body,
            range: options::range(&pairs, &feed.model, latest.seq),
            options: sample_options,
            latest,
        }
    }
}

/// A `Last-Event-ID` worth resuming from: an empty one is none.
fn last_event_id(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|id| !id.is_empty())
}

/// Whether an `Accept` line names `media` itself, and not with `q=0`, which refuses it
/// (wildcards such as `*/*` do not count: they are what clients send when any
/// representation will do).
fn accepts(accept: &str, media: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let name = parts.next().unwrap_or("").trim();
        name.eq_ignore_ascii_case(media) && !parts.any(is_zero_weight)
    })
}

/// Whether a media range's parameter is a weight of 0 (`q=0`, `q=0.000`).
fn is_zero_weight(parameter: &str) -> bool {
    parameter.split_once('=').is_some_and(|(name, value)| {
        name.trim().eq_ignore_ascii_case("q") && value.trim().parse::<f64>() == Ok(0.0)
    })
}

/// A `Host` value worth echoing into URLs: a name or address and an optional port.
fn is_valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_could_inject_markup_or_paths_are_not_echoed() {
        assert!(is_valid_host("example.com"));
        assert!(is_valid_host("localhost:4000"));
        assert!(is_valid_host("[::1]:4000"));
        assert!(!is_valid_host(""));
        assert!(!is_valid_host("evil.com/path"));
        assert!(!is_valid_host("a\"b"));
        assert!(!is_valid_host("<script>"));
    }

    #[test]
    fn media_is_accepted_by_name_and_never_at_weight_zero() {
        let sse = |accept| accepts(accept, "text/event-stream");
        assert!(sse("text/event-stream"));
        assert!(sse("TEXT/Event-Stream; q=0.9"));
        assert!(sse("application/json, text/event-stream"));
        assert!(!sse("*/*"));
        assert!(!sse("application/json"));
        assert!(!sse("text/event-streams"));
        assert!(!sse("text/event-stream;q=0"), "q=0 refuses it");
        assert!(!sse("text/event-stream; Q = 0.000, application/json"));
        assert!(sse("text/event-stream;q=0.001"));
        assert!(sse("text/event-stream;q=0, text/event-stream;q=1"));
        assert!(accepts("text/html, */*;q=0.8", "text/html"));
    }

    #[test]
    fn an_empty_last_event_id_is_none() {
        assert_eq!(last_event_id(Some("42")), Some("42"));
        assert_eq!(last_event_id(Some(" 7 ")), Some("7"));
        assert_eq!(last_event_id(Some("abc")), Some("abc"));
        assert_eq!(last_event_id(Some("")), None);
        assert_eq!(last_event_id(Some("  ")), None);
        assert_eq!(last_event_id(None), None);
    }
}
