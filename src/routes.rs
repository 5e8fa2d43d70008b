//! The REST API: plain functions from a request to a response.
//!
//! `GET /api/analytics` returns the hub's latest sample, the same bytes the WebSocket
//! clients got for that tick, never a fresh random one. `/` and `/api` describe the
//! service with absolute URLs a client can follow (a browser asking `/` for HTML is sent
//! to the dashboard). The API descriptions and the dashboard page are compiled into the
//! binary. Everything else is a JSON error that says what to do instead.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};

use serde_json::json;
use tiny_http::{Method, Request};

use crate::context::Context;
use crate::generator;
use crate::http::{self, Reply, header, request_header};
use crate::metrics::Metrics;
use crate::options::{self, Invalid};
use crate::paths::{self, Route};
use crate::sample::{FIELDS, encode, timestamp};

const ALLOW: &str = "GET, HEAD, OPTIONS";

/// An answer: the reply and how long to hold it (the request's chaos `latency`; zero
/// otherwise).
pub type Answer = (Reply, Duration);

/// An answer to compute on the connection's own thread, not on one of the four workers:
/// a long history takes milliseconds (a second in a debug build), and the workers must
/// stay free for everyone else's requests, `/healthz` among them.
pub type Later = Box<dyn FnOnce() -> Answer + Send>;

/// How many answers are computed [`Later`] at once, over all connections: each holds
/// its body (up to a few MB) while it is built, and the machine has few cores anyway.
/// The others wait their turn on their own threads.
const HEAVY_AT_ONCE: usize = 4;

/// Turns for heavy answers (see [`HEAVY_AT_ONCE`]).
pub struct Heavy {
    turns: (Sender<()>, Receiver<()>),
}

impl Default for Heavy {
    fn default() -> Heavy {
        let turns = bounded(HEAVY_AT_ONCE);
        for _ in 0..HEAVY_AT_ONCE {
            let _ = turns.0.send(());
        }
        Heavy { turns }
    }
}

impl Heavy {
    /// Computes `answer` in its turn.
    fn run(&self, answer: impl FnOnce() -> Answer) -> Answer {
        let _turn = self.turns.1.recv().ok().map(|()| Turn(&self.turns.0));
        answer()
    }
}

/// A turn of [`Heavy`], given back when dropped, also by an answer that panicked.
struct Turn<'a>(&'a Sender<()>);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// When a request is answered.
pub enum Routed {
    Now(Answer),
    Later(Later),
}

/// Answers one request whose target normalised to `path`: now, or [`Later`] for a
/// history.
pub fn handle(request: &Request, path: &str, ctx: &Arc<Context>) -> Routed {
    let Some(route) = paths::route(path) else {
        return Routed::Now((not_found(path), Duration::ZERO));
    };
    let reply = match request.method() {
        Method::Get | Method::Head => match route {
            Route::Analytics => return Routed::Now(samples_or_error(request.url(), route, ctx)),
            Route::History => {
                let (url, ctx) = (request.url().to_string(), Arc::clone(ctx));
                return Routed::Later(Box::new(move || {
                    ctx.heavy
                        .run(|| samples_or_error(&url, Route::History, &ctx))
                }));
            }
            // A browser (curl and Postman send `*/*`, so they get JSON).
            Route::Root if http::accepts(request, "text/html") => http::empty(303)
                .with_header(header("Location", Route::Dashboard.path()))
                .with_header(header("Vary", "Accept")),
            Route::Root | Route::Api => describe(request, ctx),
            Route::Health => health(ctx),
            Route::Ready => ready(ctx),
            Route::Metrics => metrics(&ctx.metrics),
            Route::OpenApi => document(OPENAPI, request, ctx),
            Route::AsyncApi => document(ASYNCAPI, request, ctx),
            Route::Dashboard => dashboard(),
        },
        Method::Options => preflight(request),
        other => method_not_allowed(other, route),
    };
    Routed::Now((reply, Duration::ZERO))
}

fn samples_or_error(url: &str, route: Route, ctx: &Context) -> Answer {
    samples(url, route, ctx).unwrap_or_else(|e| (http::bad_query(&e), Duration::ZERO))
}

/// `GET /api/analytics` (the latest sample: the same bytes the streams got for that tick
/// unless the query asks for other options; `no-store`, as it changes every tick) and
/// `GET /api/analytics/history`, with the request's chaos applied: an injected error
/// instead of the answer, garbage instead of its body, and a delay.
fn samples(url: &str, route: Route, ctx: &Context) -> Result<Answer, Invalid> {
    let latest = ctx.hub.latest();
    let pairs = options::pairs(options::query(url));
    let o = options::parse(&pairs, &ctx.model, &ctx.chaos, latest.seq)?;
    let (body, cache) = match route {
        Route::History => (history(&o, &pairs, ctx, latest.seq)?, "no-cache"),
        _ => (o.encode(&ctx.model, latest.seq, Some(&latest)), "no-store"),
    };
    let ok = |body| {
        let reply = http::json_bytes(200, body).with_header(header("Cache-Control", cache));
        with_ignored(reply, &o)
    };
    let Some(chaos) = &o.chaos else {
        return Ok((ok(body), Duration::ZERO));
    };
    let tick = latest.seq;
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
        None => match chaos.garbage(tick) {
            Some(garbage) => ok(garbage.apply(&body)),
            None => ok(body),
        },
    };
    let reply = reply
        .with_header(header("X-Chaos", &chaos.faults.to_string()))
        .with_header(header("X-Chaos-Seed", &chaos.seed.to_string()));
    Ok((reply, chaos.latency(tick)))
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

/// The body of `GET /api/analytics/history`: the samples of a time range, computed
/// (nothing is stored), at most 10 000 points.
fn history(
    o: &options::Options,
    pairs: &[(String, String)],
    ctx: &Context,
    latest: u64,
) -> Result<Bytes, Invalid> {
    let model = &ctx.model;
    let range = options::range(pairs, model, latest)?;
    let ms = |tick: u64| timestamp((tick * model.interval_ms()) as i64);
    let count = range.ticks().count();
    let mut body = format!(
        r#"{{"interval_ms":{},"step_ms":{},"from":"{}","to":"{}","count":{count},"samples":["#,
        model.interval_ms(),
        range.step * model.interval_ms(),
        ms(range.first),
        ms(range.last.max(range.first)),
    )
    .into_bytes();
    for (i, tick) in range.ticks().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&encode(&o.sample(model, tick), o.fields, o.seq));
    }
    body.extend_from_slice(b"]}");
    Ok(body.into())
}

/// `GET /` and `GET /api`: what this service is and where everything lives.
fn describe(request: &Request, ctx: &Context) -> Reply {
    let (http, ws) = base_urls(request, &ctx.default_host);
    let body = json!({
        "service": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "message": "Welcome to the Real-Time Analytics Backend",
        "description": "Simulated website-traffic analytics: poll over REST, or stream over \
                        WebSocket or Server-Sent Events on the same path.",
        "interval_ms": ctx.model.interval_ms(),
        "profile": ctx.model.profile.name(),
        "scenario": ctx.model.scenario.name(),
        "fields": &FIELDS[..4],
        "detail_fields": &FIELDS[4..],
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
    http::json(200, &body).with_header(header("Cache-Control", "no-cache"))
}

/// The REST API (OpenAPI 3.1) and the streams (AsyncAPI 3.1). Their server entries name
/// `localhost:4000` over plain HTTP and WebSocket; each response puts in the address the
/// document was fetched from, so that Postman's import targets this very server.
const OPENAPI: &str = include_str!("static/openapi.json");
const ASYNCAPI: &str = include_str!("static/asyncapi.json");
const DASHBOARD: &str = include_str!("static/dashboard.html");

fn document(text: &'static str, request: &Request, ctx: &Context) -> Reply {
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
    let interval = ctx.model.interval_ms();
    let age = generator::now_ms().saturating_sub(ctx.hub.latest().seq * interval);
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

/// `GET /readyz`: whether to send new clients here (503 while shutting down).
fn ready(ctx: &Context) -> Reply {
    if ctx.ready.load(Ordering::SeqCst) {
        http::json(200, &json!({ "status": "ready" }))
    } else {
        http::error(
            503,
            "shutting_down",
            "This instance is shutting down; send new clients to another one.",
            &[],
        )
    }
}

/// `GET /metrics`: Prometheus text exposition format.
fn metrics(metrics: &Metrics) -> Reply {
    http::with_body(200, "text/plain; version=0.0.4", metrics.render().into())
}

/// `OPTIONS`: a CORS preflight (or a plain capability query) on a known path.
fn preflight(request: &Request) -> Reply {
    let requested = request_header(request, "Access-Control-Request-Headers");
    http::empty(204)
        .with_header(header("Allow", ALLOW))
        .with_header(header("Access-Control-Allow-Methods", ALLOW))
        .with_header(header(
            "Access-Control-Allow-Headers",
            requested.unwrap_or("Content-Type, Last-Event-ID"),
        ))
        .with_header(header("Access-Control-Max-Age", "86400"))
}

fn method_not_allowed(method: &Method, route: Route) -> Reply {
    let message = format!(
        "{method} is not supported on {}; use GET (or HEAD, OPTIONS).",
        route.path()
    );
    http::error(
        405,
        "method_not_allowed",
        &message,
        &[("path", route.path())],
    )
    .with_header(header("Allow", ALLOW))
}

/// 404 for a path that names no route (also used for WebSocket upgrades to such paths).
pub fn not_found(path: &str) -> Reply {
    let message = format!(
        "Nothing at {path}. Try GET /api/analytics for the latest sample, a WebSocket on \
         /api/analytics for the stream, or GET / for the list of endpoints."
    );
    http::error(404, "not_found", &message, &[("path", path)])
}

/// The `http(s)://host` and `ws(s)://host` this request reached us at. Behind a TLS
/// proxy such as Render's, `X-Forwarded-Proto: https` turns them into https and wss.
fn base_urls(request: &Request, default_host: &str) -> (String, String) {
    let host = request_header(request, "Host")
        .filter(|h| is_valid_host(h))
        .unwrap_or(default_host);
    let https = request_header(request, "X-Forwarded-Proto")
        .and_then(|p| p.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    if https {
        (format!("https://{host}"), format!("wss://{host}"))
    } else {
        (format!("http://{host}"), format!("ws://{host}"))
    }
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

    /// No more than `HEAVY_AT_ONCE` heavy answers are computed at once; the rest wait
    /// their turn and are all answered.
    #[test]
    fn heavy_answers_take_turns() {
        let heavy = Arc::new(Heavy::default());
        let (started_tx, started) = crossbeam_channel::unbounded();
        let (release_tx, release) = crossbeam_channel::unbounded::<()>();
        let threads: Vec<_> = (0..HEAVY_AT_ONCE + 2)
            .map(|_| {
                let (heavy, started_tx, release) =
                    (Arc::clone(&heavy), started_tx.clone(), release.clone());
                std::thread::spawn(move || {
                    heavy.run(|| {
                        started_tx.send(()).unwrap();
                        release.recv().unwrap();
                        (http::empty(200), Duration::ZERO)
                    })
                })
            })
            .collect();
        let wait = Duration::from_secs(5);
        for _ in 0..HEAVY_AT_ONCE {
            started.recv_timeout(wait).unwrap();
        }
        assert!(
            started.recv_timeout(Duration::from_millis(300)).is_err(),
            "a fifth heavy answer started while four were being computed"
        );
        for _ in 0..HEAVY_AT_ONCE + 2 {
            release_tx.send(()).unwrap();
        }
        for t in threads {
            assert_eq!(t.join().unwrap().0.status_code().0, 200);
        }
        assert_eq!(started.try_iter().count(), 2, "the two that waited ran");
    }

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
