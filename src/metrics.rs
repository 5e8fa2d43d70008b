//! Counters and gauges, rendered in Prometheus text format at `GET /metrics`.
//!
//! Every part of the server writes here (atomics, or a short lock for labelled
//! counters); only `/metrics` reads. Process RSS and thread count come from the platform
//! seam at scrape time, where the OS tells them cheaply (Linux).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::sync::lock;

#[derive(Default)]
pub struct Metrics {
    pub samples_generated: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_skipped: AtomicU64,
    pub ws_rejected: AtomicU64,
    pub http_rejected: AtomicU64,
    pub http_connections: AtomicI64,
    pub sse_clients: AtomicI64,
    pub sse_events_sent: AtomicU64,
    pub sse_events_skipped: AtomicU64,
    ws_clients: Mutex<BTreeMap<&'static str, i64>>,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    http_closed: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *lock(map).entry(key).or_default() += 1;
}

/// A labelled counter's values, each key turned into its label set by `label`.
fn values<K>(map: &Mutex<BTreeMap<K, u64>>, label: impl Fn(&K) -> String) -> Vec<(String, f64)> {
    lock(map)
        .iter()
        .map(|(k, n)| (label(k), *n as f64))
        .collect()
}

impl Metrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A WebSocket on `path` opened (`+1`) or closed (`-1`).
    pub fn ws_client(&self, path: &'static str, delta: i64) {
        *lock(&self.ws_clients).entry(path).or_default() += delta;
    }

    /// A response to a request for `route` (a route's path, or "other").
    pub fn request(&self, route: &'static str, status: u16) {
        bump(&self.requests, (route, status));
    }

    /// A WebSocket closed with `code` ("1000", or "lost" when there was no close frame).
    pub fn close(&self, code: String) {
        bump(&self.closes, code);
    }

    /// An HTTP connection closed by us, and why ("idle", "header_timeout", ...).
    pub fn http_closed(&self, reason: &'static str) {
        bump(&self.http_closed, reason);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            &mut out,
            "analytics_samples_generated_total",
            "counter",
            "Samples the generator published.",
            &[("", get(&self.samples_generated) as f64)],
        );
        metric(
            &mut out,
            "analytics_ws_frames_sent_total",
            "counter",
            "Sample frames handed to the kernel, over all WebSocket clients.",
            &[("", get(&self.frames_sent) as f64)],
        );
        metric(
            &mut out,
            "analytics_ws_frames_skipped_total",
            "counter",
            "Samples not sent to a client because it had not taken the previous ones (slow consumer).",
            &[("", get(&self.frames_skipped) as f64)],
        );
        let clients = lock(&self.ws_clients);
        let by_path: Vec<(String, f64)> = ["/", "/api", "/api/analytics"]
            .iter()
            .map(|p| {
                (
                    format!("path=\"{p}\""),
                    *clients.get(p).unwrap_or(&0) as f64,
                )
            })
            .collect();
        drop(clients);
        labelled(
            &mut out,
            "analytics_ws_clients",
            "gauge",
            "Open WebSocket connections by path.",
            &by_path,
        );
        let closes = values(&self.closes, |code| format!("code=\"{code}\""));
        labelled(
            &mut out,
            "analytics_ws_closes_total",
            "counter",
            "Closed WebSocket connections by close code (\"lost\": no close frame).",
            &closes,
        );
        metric(
            &mut out,
            "analytics_ws_rejected_total",
            "counter",
            "WebSocket upgrades and SSE streams refused with 503 (at MAX_WS_CLIENTS, or shutting down).",
            &[("", get(&self.ws_rejected) as f64)],
        );
        metric(
            &mut out,
            "analytics_sse_clients",
            "gauge",
            "Open Server-Sent Events streams.",
            &[("", self.sse_clients.load(Ordering::Relaxed) as f64)],
        );
        metric(
            &mut out,
            "analytics_sse_events_sent_total",
            "counter",
            "Sample events handed to the kernel, over all SSE clients.",
            &[("", get(&self.sse_events_sent) as f64)],
        );
        metric(
            &mut out,
            "analytics_sse_events_skipped_total",
            "counter",
            "Samples not sent to an SSE client because it had not taken the previous ones.",
            &[("", get(&self.sse_events_skipped) as f64)],
        );
        metric(
            &mut out,
            "analytics_http_connections",
            "gauge",
            "Open HTTP connections (WebSockets not included), as of the last check.",
            &[("", self.http_connections.load(Ordering::Relaxed) as f64)],
        );
        metric(
            &mut out,
            "analytics_http_rejected_total",
            "counter",
            "HTTP connections refused with 503 at MAX_HTTP_CONNECTIONS.",
            &[("", get(&self.http_rejected) as f64)],
        );
        let closed = values(&self.http_closed, |why| format!("reason=\"{why}\""));
        labelled(
            &mut out,
            "analytics_http_closed_total",
            "counter",
            "HTTP connections closed by the server, by reason.",
            &closed,
        );
        let requests = values(&self.requests, |(route, status)| {
            format!("route=\"{route}\",status=\"{status}\"")
        });
        labelled(
            &mut out,
            "analytics_http_requests_total",
            "counter",
            "HTTP responses by route and status.",
            &requests,
        );
        if let Some((rss, threads)) = crate::platform::process_stats() {
            metric(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident set size.",
                &[("", rss as f64)],
            );
            metric(
                &mut out,
                "process_threads",
                "gauge",
                "Threads in the process.",
                &[("", threads as f64)],
            );
        }
        out
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, values: &[(&str, f64)]) {
    let values: Vec<(String, f64)> = values.iter().map(|(l, v)| (l.to_string(), *v)).collect();
    labelled(out, name, kind, help, &values);
}

fn labelled(out: &mut String, name: &str, kind: &str, help: &str, values: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in values {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}
