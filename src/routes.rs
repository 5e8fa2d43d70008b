//! The REST API: plain functions from a request to a response.
//!
//! `GET /api/analytics` returns the hub's latest sample, the same bytes the WebSocket
//! clients got for that tick, never a fresh random one. `/` and `/api` describe the
//! service with absolute URLs a client can follow (a browser asking `/` for HTML is sent
//! to the dashboard). The API descriptions and the dashboard page are compiled into the
//! binary. Everything else is a JSON error that says what to do instead.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use serde_json::json;
use tiny_http::Method;

use crate::budget::{self, Turns};
use crate::chaos::Garbage;
use crate::context::Context;
use crate::feed::Feed;
use crate::generator;
use crate::http::{self, Decision, DelayedReply, Pieces, Reply, header};
use crate::live::{self, Recorded, event::BadEvent};
use crate::metrics::Metrics;
use crate::options;
use crate::paths::{self, Route};
use crate::request::ClientRequest;
use crate::sample::{FIELDS, Tick, encode, timestamp};

/// Answers one request: a reply, or one the connection's thread computes for a history.
pub fn handle(request: &ClientRequest, ctx: &Arc<Context>) -> Decision {
    let Some(route) = request.route else {
        return Decision::Reply(not_found(request), Duration::ZERO);
    };
    let reply = match request.method {
        Method::Options => preflight(request, route),
        Method::Post if route == Route::Event => event(request, ctx),
        method if !route.allows(method.as_str()) => method_not_allowed(method, route),
        _ => match route {
            Route::Analytics => {
                let (reply, delay) = match &request.options {
                    Ok(o) => samples(o, &request.latest, ctx),
                    Err(e) => (e.reply(), Duration::ZERO),
                };
                return Decision::Reply(reply, delay);
            }
            Route::History => match (&request.options, &request.range) {
                (Ok(o), &Ok(range)) => {
                    let (o, tick, ctx) = (o.clone(), request.latest.seq, Arc::clone(ctx));
                    return Decision::Later(Box::new(move || history(&o, range, tick, &ctx)));
                }
                (Err(e), _) | (_, Err(e)) => e.reply(),
            },
            Route::Root if request.html => http::empty(303)
                .with_header(header("Location", Route::Dashboard.path()))
                .with_header(header("Vary", "Accept")),
            Route::Root | Route::Api => describe(request, ctx),
            Route::Health => health(ctx),
            Route::Ready => ready(ctx),
            Route::Metrics => metrics(&ctx.metrics),
            Route::OpenApi => document(&ctx.openapi, request, ctx),
            Route::AsyncApi => document(ASYNCAPI, request, ctx),
            Route::Dashboard => dashboard(),
            Route::Tracker => tracker(),
            // Allowed by POST only, answered above.
            Route::Event => method_not_allowed(request.method, route),
        },
    };
    Decision::Reply(reply, Duration::ZERO)
}

/// `GET /api/analytics`: the latest sample, the same bytes the streams got for that tick
/// unless the query asks for other options (`no-store`, as it changes every tick).
fn samples(o: &options::Options, latest: &Tick, ctx: &Context) -> DelayedReply {
    let mut body = o.encode(&ctx.feed, latest.seq, Some(latest));
    if let Some(garbage) = o.chaos.as_ref().and_then(|c| c.garbage(latest.seq)) {
        body = garbage.apply(&body);
    }
    // The same path streams to an `Accept: text/event-stream`.
    let reply =
        ok(http::json_bytes(200, body), "no-store", o).with_header(header("Vary", "Accept"));
    chaotic(reply, o, latest.seq)
}

/// `GET /api/analytics/history`: the samples of `range`, computed (nothing is stored), at
/// most 10 000 points, written piece by piece as the client takes them ([`History`]).
/// `tick` is the latest when the request was read.
fn history(
    o: &options::Options,
    range: options::Range,
    tick: u64,
    ctx: &Context,
) -> (DelayedReply, Option<Pieces>) {
    if o.chaos.as_ref().is_some_and(|c| c.error(tick).is_some()) {
        // Replaced by the injected error.
        return (chaotic(http::empty(200), o, tick), None);
    }
    let garbage = o.chaos.as_ref().and_then(|c| c.garbage(tick));
    let (len, pieces) =
        History::new(o.clone(), ctx.feed.clone(), range, garbage).into_pieces(ctx.turns.clone());
    let reply = ok(http::json_head(200, len), "no-cache", o);
    (chaotic(reply, o, tick), Some(pieces))
}

/// What every 200 of the sample routes carries: its caching, and the parameters it
/// ignored.
fn ok(reply: Reply, cache: &str, o: &options::Options) -> Reply {
    with_ignored(reply.with_header(header("Cache-Control", cache)), o)
}

/// The request's chaos (garbage is the caller's, as it changes the body): an injected
/// error instead of `reply` when the tick draws one, the `X-Chaos` headers, and how long
/// to hold the answer.
fn chaotic(reply: Reply, o: &options::Options, tick: u64) -> DelayedReply {
    let Some(chaos) = &o.chaos else {
        return (reply, Duration::ZERO);
    };
    let reply = match chaos.error(tick) {
        Some(status) => http::error(
            status,
            "chaos",
            &format!(
                "An error injected on purpose (chaos={}, chaos_seed={}): a dashboard should \
                 show it and retry. Send chaos=off for real answers.",
                chaos.faults, chaos.seed
            ),
            &[],
        ),
        None => reply,
    };
    let reply = reply
        .with_header(header("X-Chaos", &chaos.faults.to_string()))
        .with_header(header("X-Chaos-Seed", &chaos.seed.to_string()));
    (reply, chaos.latency(tick))
}

/// Names the query parameters this server ignored, so that a typo (`?scenaro=spike`) is
/// visible rather than silently without effect.
fn with_ignored(reply: Reply, options: &options::Options) -> Reply {
    if options.ignored.is_empty() {
        reply
    } else {
        reply.with_header(header("X-Ignored-Parameters", &options.ignored.join(", ")))
    }
}

/// A history's body, `{"interval_ms":…,"samples":[…]}`, never held whole: its length is
/// computed by encoding every sample once without keeping it, then its bytes are encoded
/// again, [`budget::PIECE`] at a time, as the client takes them. Twice the encoding, for
/// memory that stays one piece whatever the history's length or the client's pace. The
/// first pass runs under the request's turn ([`budget::Turns`]); each piece is encoded
/// under a turn of its own, given back before it is written: a long history interleaves
/// with everyone else's, and its client's pace holds no turn.
struct History {
    head: Vec<u8>,
    options: options::Options,
    feed: Feed,
    range: options::Range,
    /// Chaos garbage: the whole body (`null`), its first half, or its first sample.
    garbage: Option<Garbage>,
}

impl History {
    fn new(
        options: options::Options,
        feed: Feed,
        range: options::Range,
        garbage: Option<Garbage>,
    ) -> History {
        let model = &feed.model;
        let ms = |tick: u64| timestamp((tick * model.interval_ms()) as i64);
        let head = format!(
            r#"{{"interval_ms":{},"step_ms":{},"from":"{}","to":"{}","count":{},"samples":["#,
            model.interval_ms(),
            range.step * model.interval_ms(),
            ms(range.first),
            ms(range.last.max(range.first)),
            range.points(),
        )
        .into_bytes();
        History {
            head,
            options,
            feed,
            range,
            garbage,
        }
    }

    /// The `i`th sample's bytes (the first one garbled, if chaos says so).
    fn sample(&self, i: usize, tick: u64) -> Bytes {
        let o = &self.options;
        let json = encode(&o.sample(&self.feed, tick), o.fields, o.seq);
        match self.garbage {
            Some(g @ (Garbage::MissingField | Garbage::NegativeCount)) if i == 0 => g.apply(&json),
            _ => json,
        }
    }

    /// The body's length, and its pieces, each encoded under one of `turns`.
    fn into_pieces(self, turns: Turns) -> (usize, Pieces) {
        if self.garbage == Some(Garbage::Null) {
            return (
                4,
                Box::new(std::iter::once(Ok(Bytes::from_static(b"null")))),
            );
        }
        let samples: usize = self
            .range
            .ticks()
            .enumerate()
            .map(|(i, tick)| self.sample(i, tick).len() + usize::from(i > 0))
            .sum();
        let whole = self.head.len() + samples + 2;
        let len = if self.garbage == Some(Garbage::Truncated) {
            whole / 2
        } else {
            whole
        };
        let mut ticks = self.range.ticks().enumerate();
        let mut piece = self.head.clone();
        let mut left = len;
        let mut done = false;
        let pieces = std::iter::from_fn(move || {
            if done || left == 0 {
                return None;
            }
            let Some(_turn) = turns.take(budget::TURN_WAIT) else {
                done = true;
                return Some(Err("busy"));
            };
            for (i, tick) in ticks.by_ref() {
                if i > 0 {
                    piece.push(b',');
                }
                piece.extend_from_slice(&self.sample(i, tick));
                if piece.len() >= budget::PIECE {
                    break;
                }
            }
            if piece.len() < budget::PIECE {
                piece.extend_from_slice(b"]}");
                done = true;
            }
            piece.truncate(left);
            left -= piece.len();
            Some(Ok(Bytes::from(std::mem::take(&mut piece))))
        });
        (len, Box::new(pieces))
    }
}

/// `GET /` and `GET /api`: what this service is and where everything lives.
fn describe(request: &ClientRequest, ctx: &Context) -> Reply {
    let (http, ws) = base_urls(request, &ctx.default_host);
    let mut body = json!({
        "service": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "message": "Welcome to the Real-Time Analytics Backend",
        "description": "Website-traffic analytics, simulated or counted live: poll over \
                        REST, or stream over WebSocket or Server-Sent Events on the same path.",
        "mode": ctx.feed.mode().name(),
        "instance": ctx.instance,
        "interval_ms": ctx.feed.model.interval_ms(),
        "fields": &FIELDS[..4],
        // Live mode has no geolocation: no countries.
        "detail_fields": FIELDS[4..]
            .iter()
            .filter(|&&f| ctx.feed.live.is_none() || f != "countries")
            .collect::<Vec<_>>(),
        "limits": {
            "max_ws_clients": ctx.caps.streams,
            "max_http_connections": ctx.caps.http,
        },
        "endpoints": {
            "rest": {
                "analytics": format!("{http}/api/analytics"),
                "history": format!("{http}/api/analytics/history?last=15m"),
                "service": [format!("{http}/"), format!("{http}/api")],
            },
            "websocket": {
                "analytics": format!("{ws}/api/analytics"),
                "welcome_only": [format!("{ws}/"), format!("{ws}/api")],
            },
            "sse": {
                "analytics": format!("{http}/api/analytics"),
                "accept": "text/event-stream",
            },
            "dashboard": format!("{http}/dashboard"),
            "live": {
                "event": format!("{http}/api/event"),
                "tracker": format!("{http}/tracker.js"),
            },
            "documents": {
                "openapi": format!("{http}/openapi.json"),
                "asyncapi": format!("{http}/asyncapi.json"),
            },
            "operations": {
                "health": format!("{http}/healthz"),
                "ready": format!("{http}/readyz"),
                "metrics": format!("{http}/metrics"),
            },
        },
    });
    match ctx.feed.sites() {
        [] => {
            body["profile"] = json!(ctx.feed.model.profile.name());
            body["scenario"] = json!(ctx.feed.model.scenario.name());
        }
        sites => body["sites"] = json!(sites),
    }
    // A browser asking for HTML is sent to the dashboard instead.
    http::json(200, &body)
        .with_header(header("Cache-Control", "no-cache"))
        .with_header(header("Vary", "Accept"))
}

/// The REST API (OpenAPI 3.1) and the streams (AsyncAPI 3.1). Their server entries name
/// `localhost:4000` over plain HTTP and WebSocket; each response puts in the address the
/// document was fetched from, so that Postman's import targets this very server.
const OPENAPI: &str = include_str!("static/openapi.json");
const ASYNCAPI: &str = include_str!("static/asyncapi.json");
const DASHBOARD: &str = include_str!("static/dashboard.html");
/// Under 1 KB: a page view on load and on every `history.pushState` or `popstate` that
/// changes the path, sent with `navigator.sendBeacon` (no preflight); no cookies, no storage.
const TRACKER: &str = include_str!("static/tracker.js");

/// The REST API as this server answers it: in live mode, `site` (one of `SITES`) takes the
/// place of the simulator's `profile` and `scenario`, so that a client generated from the
/// document (Postman's import) sends only what this server takes.
pub fn openapi(sites: &[String]) -> Cow<'static, str> {
    let [first, ..] = sites else {
        return Cow::Borrowed(OPENAPI);
    };
    let mut doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap_or_default();
    let simulated = [
        "#/components/parameters/profile",
        "#/components/parameters/scenario",
    ];
    for item in doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|p| p.values_mut())
    {
        let Some(parameters) = item
            .get_mut("get")
            .and_then(|get| get.get_mut("parameters"))
            .and_then(|p| p.as_array_mut())
        else {
            continue;
        };
        let before = parameters.len();
        parameters.retain(|p| !simulated.iter().any(|s| p["$ref"] == *s));
        if parameters.len() < before {
            parameters.insert(0, json!({ "$ref": "#/components/parameters/site" }));
        }
    }
    doc["components"]["parameters"]["site"] = json!({
        "name": "site",
        "in": "query",
        "description": "The site whose visitors the samples count: one of SITES, the first by default.",
        "schema": { "type": "string", "enum": sites },
        "example": first,
    });
    Cow::Owned(serde_json::to_string_pretty(&doc).unwrap_or_default())
}

fn document(text: &str, request: &ClientRequest, ctx: &Context) -> Reply {
    let (http, ws) = base_urls(request, &ctx.default_host);
    let (http_scheme, host) = http.split_once("://").unwrap_or(("http", &http));
    let ws_scheme = ws.split_once("://").map_or("ws", |(s, _)| s);
    let body = text
        .replace(
            r#""url": "http://localhost:4000""#,
            &format!(r#""url": "{http}""#),
        )
        .replace(
            r#""host": "localhost:4000""#,
            &format!(r#""host": "{host}""#),
        )
        .replace(
            r#""protocol": "ws""#,
            &format!(r#""protocol": "{ws_scheme}""#),
        )
        .replace(
            r#""protocol": "http""#,
            &format!(r#""protocol": "{http_scheme}""#),
        );
    http::json_bytes(200, body.into()).with_header(header("Cache-Control", "no-cache"))
}

/// `GET /dashboard`: one self-contained page. The policy allows its inline script and
/// style and connections to this origin only.
fn dashboard() -> Reply {
    http::with_body(200, "text/html; charset=utf-8", DASHBOARD.into())
        .with_header(header("Cache-Control", "no-cache"))
        .with_header(header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
        ))
}

/// Healthy while the latest sample is younger than two intervals: a generator that died or
/// stopped makes `/healthz` 503, so the watchdog (and the platform's health check) restart
/// the process.
fn health(ctx: &Context) -> Reply {
    let interval = ctx.feed.model.interval_ms();
    let age = generator::now_ms().saturating_sub(ctx.hub(0).latest().seq * interval);
    if age <= 2 * interval {
        return http::json(200, &json!({ "status": "ok" }));
    }
    http::error(
        503,
        "stale",
        &format!(
            "No sample for {age} ms (the interval is {interval} ms): the generator has \
             stopped. The watchdog restarts the process after three failed probes; if this \
             persists, look for an error in the log."
        ),
        &[],
    )
}

/// `GET /readyz`: whether to send new clients here (503 while shutting down, or while
/// the Redis of live mode fails).
fn ready(ctx: &Context) -> Reply {
    if !ctx.ready.load(Ordering::SeqCst) {
        return http::error(
            503,
            "shutting_down",
            "This instance is shutting down; send new clients to another one.",
            &[],
        );
    }
    if ctx.feed.live.as_ref().is_some_and(|live| !live.ready()) {
        return http::error(
            503,
            "redis_unavailable",
            "This instance cannot reach its Redis (REDIS_URL): its samples are stale. Send \
             new clients to another one; the log says what failed.",
            &[],
        );
    }
    http::json(200, &json!({ "status": "ready" }))
}

/// `GET /metrics`: Prometheus text exposition format.
fn metrics(metrics: &Metrics) -> Reply {
    http::with_body(200, "text/plain; version=0.0.4", metrics.render().into())
}

/// `GET /tracker.js`: the site's script. Cached for an hour.
fn tracker() -> Reply {
    http::with_body(200, "text/javascript; charset=utf-8", TRACKER.into())
        .with_header(header("Cache-Control", "public, max-age=3600"))
}

/// `POST /api/event`: a page view (or a custom event) from a site, counted in live mode;
/// every check says what to fix. In sim mode, no event is counted.
fn event(request: &ClientRequest, ctx: &Context) -> Reply {
    let Some(live) = &ctx.feed.live else {
        return http::error(
            409,
            "not_live",
            "This server simulates its traffic (MODE=sim) and counts no events. Start it \
             with MODE=live and SITES=<your site's domain> to send it page views.",
            &[],
        );
    };
    let media = request
        .content_type
        .and_then(|t| t.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    if !["application/json", "text/plain"]
        .iter()
        .any(|m| media.eq_ignore_ascii_case(m))
    {
        let sent = match media {
            "" => "no Content-Type".to_string(),
            media => http::printable(media),
        };
        return http::error(
            415,
            "unsupported_media_type",
            &format!(
                "Send the event as Content-Type: application/json (or text/plain, as \
                 sendBeacon does), not {sent}."
            ),
            &[],
        );
    }
    // Set by the edge for every event.
    let Some(sender) = request.sender else {
        return http::error(500, "internal", "The event's sender is unknown.", &[]);
    };
    let now = generator::now_ms();
    if let Err(wait) = live.admit(sender.client, now) {
        let seconds = wait.as_secs_f64().ceil().max(1.0).to_string();
        return http::error(
            429,
            "rate_limited",
            "Too many events from this address: at most 60 at once, then 10 a second. \
             Retry after the Retry-After header's seconds.",
            &[],
        )
        .with_header(header("Retry-After", &seconds));
    }
    let event = match live::event::parse(&request.body) {
        Ok(event) => event,
        Err(BadEvent(message)) => return http::error(400, "bad_event", &message, &[]),
    };
    let accepted = |not_counted: Option<&str>| {
        let mut body = json!({ "status": "accepted", "counted": not_counted.is_none() });
        if let Some(reason) = not_counted {
            body["reason"] = json!(reason);
        }
        http::json(202, &body)
    };
    match live.record(&event, sender.visitor, sender.bot, now) {
        Recorded::Counted => accepted(None),
        Recorded::Bot => accepted(Some("bot")),
        Recorded::NoSession => accepted(Some("no_session")),
        Recorded::Buffered => accepted(Some("buffered")),
        Recorded::Dropped => http::error(
            503,
            "redis_unavailable",
            &format!(
                "This instance cannot reach its Redis, and holds {} events already: this \
                 one was not counted. Retry after the Retry-After header's seconds.",
                live::BUFFER
            ),
            &[],
        ),
        Recorded::UnknownSite => http::error(
            403,
            "unknown_site",
            &format!(
                "\"{}\" is not one of this server's SITES: {}.",
                http::printable(event.domains.join(",")),
                live.settings.sites.join(", ")
            ),
            &[],
        ),
    }
}

/// `OPTIONS`: a CORS preflight (or a plain capability query) on a known path.
fn preflight(request: &ClientRequest, route: Route) -> Reply {
    let requested = request.requested_headers;
    http::empty(204)
        .with_header(header("Allow", route.allow()))
        .with_header(header("Access-Control-Allow-Methods", route.allow()))
        .with_header(header(
            "Access-Control-Allow-Headers",
            requested.unwrap_or("Content-Type, Last-Event-ID"),
        ))
        .with_header(header("Access-Control-Max-Age", "86400"))
}

/// A request that declares a body the edge did not read (only `POST /api/event` has
/// one read): the route is judged first (404, then 405 with `Allow`), else 413.
pub fn body_not_accepted(request: &ClientRequest) -> Reply {
    let Some(route) = request.route else {
        return not_found(request);
    };
    match request.method {
        method if !route.allows(method.as_str()) => method_not_allowed(method, route),
        _ => http::error(
            413,
            "body_not_accepted",
            "Only POST /api/event takes a request body: send this request without a body, \
             Content-Length or Transfer-Encoding.",
            &[],
        ),
    }
}

fn method_not_allowed(method: &Method, route: Route) -> Reply {
    let (first, rest) = route
        .allow()
        .split_once(", ")
        .unwrap_or((route.allow(), ""));
    let message = format!(
        "{method} is not supported on {}; use {first} (or {rest}).",
        route.path()
    );
    http::error(
        405,
        "method_not_allowed",
        &message,
        &[("path", route.path())],
    )
    .with_header(header("Allow", route.allow()))
}

/// 404 for a path that names no route (also used for WebSocket upgrades to such paths).
pub fn not_found(request: &ClientRequest) -> Reply {
    let path = paths::normalise(request.target);
    let message = format!(
        "Nothing at {path}. Try GET /api/analytics for the latest sample, a WebSocket on \
         /api/analytics for the stream, or GET / for the list of endpoints."
    );
    http::error(404, "not_found", &message, &[("path", &path)])
}

/// The `http(s)://host` and `ws(s)://host` this request reached us at. Behind a TLS
/// proxy such as Render's, `X-Forwarded-Proto: https` turns them into https and wss.
fn base_urls(request: &ClientRequest, default_host: &str) -> (String, String) {
    let host = request.host.unwrap_or(default_host);
    if request.https {
        (format!("https://{host}"), format!("wss://{host}"))
    } else {
        (format!("http://{host}"), format!("ws://{host}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route table and the documents agree: every path the server answers is in the
    /// OpenAPI document, and every documented path is answered. Every WebSocket path is
    /// an AsyncAPI channel, and every channel a streaming path.
    #[test]
    fn the_api_documents_describe_exactly_the_routes() {
        let openapi: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let documented: Vec<&str> = openapi["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for route in Route::ALL {
            assert!(
                documented.contains(&route.path()),
                "{} undocumented",
                route.path()
            );
        }
        for path in &documented {
            assert!(
                paths::route(path).is_some(),
                "{path} is documented, not served"
            );
        }
        assert_eq!(documented.len(), Route::ALL.len());

        let asyncapi: serde_json::Value = serde_json::from_str(ASYNCAPI).unwrap();
        let channels: Vec<&str> = asyncapi["channels"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c["address"].as_str().unwrap())
            .collect();
        for route in Route::ALL.into_iter().filter(|r| r.websocket()) {
            assert!(
                channels.contains(&route.path()),
                "{} has no channel",
                route.path()
            );
        }
        for address in channels {
            assert!(
                paths::route(address).is_some_and(Route::websocket),
                "{address}"
            );
        }
    }

    #[test]
    fn documents_carry_the_placeholders_that_requests_fill_in() {
        assert!(OPENAPI.contains(r#""url": "http://localhost:4000""#));
        assert_eq!(ASYNCAPI.matches(r#""host": "localhost:4000""#).count(), 2);
        assert!(ASYNCAPI.contains(r#""protocol": "ws""#));
        assert!(ASYNCAPI.contains(r#""protocol": "http""#));
    }
}
