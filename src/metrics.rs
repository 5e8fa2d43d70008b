//! Counters and gauges, rendered in Prometheus text format at `GET /metrics`.
//!
//! The fields are private: each event the server reports has one method, and [`METRICS`]
//! lists every metric once (name, type, help, how to read it), in the order `/metrics`
//! shows them; ARCHITECTURE.md's table is checked against it. Process RSS and thread count
//! come from the platform seam at scrape time, where the OS tells them cheaply (Linux).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::sync::lock;

/// The two kinds of stream, counted apart.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    WebSocket,
    Sse,
}

#[derive(Default)]
pub struct Metrics {
    samples_generated: AtomicU64,
    samples_missed: AtomicU64,
    ws_frames_sent: AtomicU64,
    ws_frames_skipped: AtomicU64,
    ws_clients: Mutex<BTreeMap<&'static str, i64>>,
    ws_closes: Mutex<BTreeMap<&'static str, u64>>,
    streams_rejected: AtomicU64,
    sse_clients: AtomicI64,
    sse_events_sent: AtomicU64,
    sse_events_skipped: AtomicU64,
    http_connections: AtomicI64,
    http_rejected: AtomicU64,
    http_closed: Mutex<BTreeMap<&'static str, u64>>,
    http_requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Requests the workers decided on (the edge's own refusals not among them): what
    /// the watchdog reads as progress.
    decided: AtomicU64,
    /// The server counts real sites (`MODE=live`).
    live: AtomicBool,
    events: AtomicU64,
    bot_events: AtomicU64,
    events_limited: AtomicU64,
    visitors: AtomicU64,
    visitors_evicted: AtomicU64,
    /// The longest live tick so far, in microseconds.
    tick_max_us: AtomicU64,
    buffered: AtomicU64,
    dropped: AtomicU64,
    stale_ticks: AtomicU64,
}

/// One metric: what `/metrics` says about it, and how to read its values.
pub struct Metric {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
    values: fn(&Metrics) -> Values,
}

const fn metric(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    values: fn(&Metrics) -> Values,
) -> Metric {
    Metric {
        name,
        kind,
        help,
        values,
    }
}

/// Every metric, in the order `/metrics` lists them.
pub const METRICS: [Metric; 26] = [
    metric(
        "analytics_mode",
        "gauge",
        "Where samples come from: 1 for the mode in force (sim or live).",
        |m| {
            let mode = if m.live.load(Ordering::Relaxed) {
                "live"
            } else {
                "sim"
            };
            Some(vec![(format!("mode=\"{mode}\""), 1.0)])
        },
    ),
    metric(
        "analytics_live_events_total",
        "counter",
        "Live mode: events counted (bots' and other sites' not among them).",
        |m| live(m, &m.events),
    ),
    metric(
        "analytics_live_bot_events_total",
        "counter",
        "Live mode: events accepted from bots and not counted.",
        |m| live(m, &m.bot_events),
    ),
    metric(
        "analytics_live_rate_limited_total",
        "counter",
        "Live mode: events refused with 429, too many from one address.",
        |m| live(m, &m.events_limited),
    ),
    metric(
        "analytics_live_visitors",
        "gauge",
        "Live mode: visitors tracked (today's, and yesterday's until their session ends).",
        |m| live(m, &m.visitors),
    ),
    metric(
        "analytics_live_visitors_evicted_total",
        "counter",
        "Live mode: visitors forgotten at MAX_VISITORS, the longest idle first.",
        |m| live(m, &m.visitors_evicted),
    ),
    metric(
        "analytics_live_tick_seconds_max",
        "gauge",
        "Live mode: the longest a tick took to close the windows and compute every site's sample, since start.",
        |m| {
            live(m, &m.tick_max_us)
                .map(|values| values.into_iter().map(|(l, us)| (l, us / 1e6)).collect())
        },
    ),
    metric(
        "analytics_live_buffered_events",
        "gauge",
        "Live mode with REDIS_URL: events held while Redis fails, counted once it answers.",
        |m| live(m, &m.buffered),
    ),
    metric(
        "analytics_live_dropped_events_total",
        "counter",
        "Live mode with REDIS_URL: events not counted, received while Redis failed and the buffer was full.",
        |m| live(m, &m.dropped),
    ),
    metric(
        "analytics_live_stale_ticks_total",
        "counter",
        "Live mode with REDIS_URL: ticks published stale, Redis having failed.",
        |m| live(m, &m.stale_ticks),
    ),
    metric(
        "analytics_samples_generated_total",
        "counter",
        "Samples the generator published.",
        |m| one(&m.samples_generated),
    ),
    metric(
        "analytics_samples_missed_total",
        "counter",
        "Samples a streaming client's thread had not taken from its queue in time (WebSocket and SSE).",
        |m| one(&m.samples_missed),
    ),
    metric(
        "analytics_ws_clients",
        "gauge",
        "Open WebSocket connections by path.",
        |m| {
            let clients = lock(&m.ws_clients);
            Some(
                ["/", "/api", "/api/analytics"]
                    .iter()
                    .map(|p| {
                        (
                            format!("path=\"{p}\""),
                            *clients.get(p).unwrap_or(&0) as f64,
                        )
                    })
                    .collect(),
            )
        },
    ),
    metric(
        "analytics_ws_frames_sent_total",
        "counter",
        "Sample frames handed to the kernel, over all WebSocket clients.",
        |m| one(&m.ws_frames_sent),
    ),
    metric(
        "analytics_ws_frames_skipped_total",
        "counter",
        "Samples not sent to a WebSocket client whose socket had not taken the previous ones (slow consumer).",
        |m| one(&m.ws_frames_skipped),
    ),
    metric(
        "analytics_ws_closes_total",
        "counter",
        "Closed WebSocket connections by close code (\"lost\": no close frame; \"other\": a code outside 1000-1015, which clients choose).",
        |m| labelled(&m.ws_closes, |code| format!("code=\"{code}\"")),
    ),
    metric(
        "analytics_ws_rejected_total",
        "counter",
        "WebSocket upgrades and SSE streams refused with 503 (at MAX_WS_CLIENTS, or shutting down).",
        |m| one(&m.streams_rejected),
    ),
    metric(
        "analytics_sse_clients",
        "gauge",
        "Open Server-Sent Events streams.",
        |m| level(&m.sse_clients),
    ),
    metric(
        "analytics_sse_events_sent_total",
        "counter",
        "Sample events handed to the kernel, over all SSE clients.",
        |m| one(&m.sse_events_sent),
    ),
    metric(
        "analytics_sse_events_skipped_total",
        "counter",
        "Samples not sent to an SSE client whose socket had not taken the previous ones.",
        |m| one(&m.sse_events_skipped),
    ),
    metric(
        "analytics_http_connections",
        "gauge",
        "Open HTTP connections (streams not included).",
        |m| level(&m.http_connections),
    ),
    metric(
        "analytics_http_rejected_total",
        "counter",
        "HTTP connections refused with 503 at MAX_HTTP_CONNECTIONS.",
        |m| one(&m.http_rejected),
    ),
    metric(
        "analytics_http_closed_total",
        "counter",
        "HTTP connections closed by the server, by reason.",
        |m| labelled(&m.http_closed, |why| format!("reason=\"{why}\"")),
    ),
    metric(
        "analytics_http_requests_total",
        "counter",
        "HTTP responses by route and status.",
        |m| {
            labelled(&m.http_requests, |(route, status)| {
                format!("route=\"{route}\",status=\"{status}\"")
            })
        },
    ),
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident set size (Linux).",
        |_| crate::platform::process_stats().map(|(rss, _)| vec![(String::new(), rss as f64)]),
    ),
    metric(
        "process_threads",
        "gauge",
        "Threads in the process (Linux).",
        |_| {
            crate::platform::process_stats()
                .map(|(_, threads)| vec![(String::new(), threads as f64)])
        },
    ),
];

/// Label sets and values; `None`: not reported on this platform.
type Values = Option<Vec<(String, f64)>>;

fn one(counter: &AtomicU64) -> Values {
    Some(vec![(
        String::new(),
        counter.load(Ordering::Relaxed) as f64,
    )])
}

/// A live mode metric: absent in sim mode.
fn live(m: &Metrics, counter: &AtomicU64) -> Values {
    m.live
        .load(Ordering::Relaxed)
        .then(|| one(counter))
        .flatten()
}

fn level(gauge: &AtomicI64) -> Values {
    Some(vec![(String::new(), gauge.load(Ordering::Relaxed) as f64)])
}

/// A labelled counter's values, each key turned into its label set by `label`.
fn labelled<K>(map: &Mutex<BTreeMap<K, u64>>, label: impl Fn(&K) -> String) -> Values {
    Some(
        lock(map)
            .iter()
            .map(|(k, n)| (label(k), *n as f64))
            .collect(),
    )
}

/// The closes counted apart: RFC 6455's registered codes (all we send are among them)
/// and the ends without a code. A client picks any code from 3000 to 4999 for its own
/// close; each would be a series of its own, so they are counted together as "other".
const CLOSE_LABELS: [&str; 19] = [
    "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010", "1011",
    "1012", "1013", "1014", "1015", "none", "lost", "dropped",
];

fn close_label(code: &str) -> &'static str {
    CLOSE_LABELS
        .into_iter()
        .find(|label| *label == code)
        .unwrap_or("other")
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *lock(map).entry(key).or_default() += 1;
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// The generator published a sample that `missed` subscribers had no room for.
    pub fn sample_generated(&self, missed: usize) {
        add(&self.samples_generated, 1);
        add(&self.samples_missed, missed as u64);
    }

    /// A WebSocket on `path` opened.
    pub fn ws_opened(&self, path: &'static str) {
        *lock(&self.ws_clients).entry(path).or_default() += 1;
    }

    /// A WebSocket on `path` closed with `code` ("1000", "none": a close frame without a
    /// code, "lost": no close frame, "dropped": chaos cut it).
    pub fn ws_closed(&self, path: &'static str, code: &str) {
        *lock(&self.ws_clients).entry(path).or_default() -= 1;
        bump(&self.ws_closes, close_label(code));
    }

    /// A sample handed to a stream's socket.
    pub fn stream_sent(&self, stream: Stream) {
        add(
            match stream {
                Stream::WebSocket => &self.ws_frames_sent,
                Stream::Sse => &self.sse_events_sent,
            },
            1,
        );
    }

    /// A sample skipped for a stream whose socket had not taken the previous ones.
    pub fn stream_skipped(&self, stream: Stream) {
        add(
            match stream {
                Stream::WebSocket => &self.ws_frames_skipped,
                Stream::Sse => &self.sse_events_skipped,
            },
            1,
        );
    }

    /// A WebSocket upgrade or SSE stream refused with 503.
    pub fn stream_rejected(&self) {
        add(&self.streams_rejected, 1);
    }

    /// An SSE stream opened (`+1`) or closed (`-1`).
    pub fn sse_client(&self, delta: i64) {
        self.sse_clients.fetch_add(delta, Ordering::Relaxed);
    }

    /// The number of open HTTP connections is now `n`.
    pub fn http_connections(&self, n: usize) {
        self.http_connections.store(n as i64, Ordering::Relaxed);
    }

    /// An HTTP connection refused with 503 at the cap (and closed).
    pub fn http_rejected(&self) {
        add(&self.http_rejected, 1);
        self.http_closed("over_capacity");
    }

    /// An HTTP connection closed by us, and why ("idle", "header_timeout", ...).
    pub fn http_closed(&self, reason: &'static str) {
        bump(&self.http_closed, reason);
    }

    /// A response to a request for `route` (a route's path, or "other").
    pub fn request(&self, route: &'static str, status: u16) {
        bump(&self.http_requests, (route, status));
    }

    /// The server counts real sites: the live metrics are shown.
    pub fn go_live(&self) {
        self.live.store(true, Ordering::Relaxed);
    }

    /// An event counted.
    pub fn event_counted(&self) {
        add(&self.events, 1);
    }

    /// A bot's event, accepted and not counted.
    pub fn bot_event(&self) {
        add(&self.bot_events, 1);
    }

    /// An event refused: too many from its address.
    pub fn event_limited(&self) {
        add(&self.events_limited, 1);
    }

    /// Visitors tracked now.
    pub fn visitors(&self, n: usize) {
        self.visitors.store(n as u64, Ordering::Relaxed);
    }

    /// A visitor forgotten at `MAX_VISITORS`.
    pub fn visitor_evicted(&self) {
        add(&self.visitors_evicted, 1);
    }

    /// A live tick took `took`.
    pub fn live_tick(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.tick_max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Events held for Redis now.
    pub fn events_buffered(&self, n: usize) {
        self.buffered.store(n as u64, Ordering::Relaxed);
    }

    /// An event dropped: Redis failed and the buffer was full.
    pub fn event_dropped(&self) {
        add(&self.dropped, 1);
    }

    /// A tick published stale.
    pub fn stale_tick(&self) {
        add(&self.stale_ticks, 1);
    }

    /// A request the workers decided on: a reply, one computed later, or a stream.
    pub fn decided(&self) {
        add(&self.decided, 1);
    }

    /// Samples the generator has published so far.
    pub fn samples_published(&self) -> u64 {
        self.samples_generated.load(Ordering::Relaxed)
    }

    /// Requests the workers have decided on so far.
    pub fn requests_decided(&self) -> u64 {
        self.decided.load(Ordering::Relaxed)
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        for metric in &METRICS {
            let Some(values) = (metric.values)(self) else {
                continue;
            };
            let (name, kind, help) = (metric.name, metric.kind, metric.help);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in values {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_a_client_picks_share_one_series() {
        let m = Metrics::default();
        let codes = (3000..5000).map(|c| c.to_string());
        for code in codes.chain(["1000", "1001", "none", "lost", "dropped", "x"].map(String::from))
        {
            m.ws_opened("/api");
            m.ws_closed("/api", &code);
        }
        let text = m.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("analytics_ws_closes_total{"))
            .collect();
        assert_eq!(series.len(), 6, "{series:?}");
        assert!(series.contains(&"analytics_ws_closes_total{code=\"other\"} 2001"));
        assert!(series.contains(&"analytics_ws_closes_total{code=\"1001\"} 1"));
        assert!(series.contains(&"analytics_ws_closes_total{code=\"lost\"} 1"));
    }
}
