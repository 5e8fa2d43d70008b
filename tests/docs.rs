//! The API documents, the dashboard and the README, as clients and readers meet them:
//! every documented path answers with a documented status and content type, the documents
//! point at the server they came from, browsers asking `/` for HTML go to the dashboard,
//! the dashboard needs nothing from outside the binary, and the generated parts of the
//! docs (the ranges and log excerpt in ARCHITECTURE.md, the README's configuration, the
//! budgets in docs/limits.md, the reconnect loop in docs/chaos.md) come from the code.

mod common;

use common::*;

use std::net::SocketAddr;

#[test]
fn every_documented_path_answers_as_documented() {
    let s = TestServer::start();
    let doc = get(s.addr, "/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "{paths:?}");
    for (path, item) in paths {
        let r = get(s.addr, path);
        if item.get("get").is_none() {
            // A path without GET (events) says which methods it takes.
            assert_eq!(r.status, 405, "GET {path}");
            let allow = r.header("Allow").unwrap();
            for method in item.as_object().unwrap().keys() {
                assert!(allow.contains(&method.to_uppercase()), "{path}: {allow}");
            }
            continue;
        }
        let responses = &item["get"]["responses"];
        let documented = &responses[r.status.to_string()];
        assert!(
            documented.is_object(),
            "GET {path} -> {}, not among {:?}",
            r.status,
            responses.as_object().unwrap().keys().collect::<Vec<_>>()
        );
        let documented = match documented["$ref"].as_str() {
            Some(pointer) => doc.pointer(&pointer[1..]).unwrap(),
            None => documented,
        };
        let media = r.header("Content-Type").unwrap().split(';').next().unwrap();
        assert!(
            documented["content"].get(media).is_some(),
            "GET {path}: {media} is not documented for {}",
            r.status
        );
        // Whole bodies always carry their length (tiny_http would chunk large ones).
        assert!(
            r.header("Content-Length").is_some(),
            "GET {path}: no Content-Length"
        );
        // HEAD answers every documented path too.
        assert_eq!(
            request(s.addr, "HEAD", path, &[]).status,
            r.status,
            "HEAD {path}"
        );
    }
    // A path the document does not list is not answered.
    assert_eq!(get(s.addr, "/api/analytics/nope").status, 404);
}

#[test]
fn documents_name_the_server_they_were_fetched_from() {
    let s = TestServer::start();
    let doc = get(s.addr, "/openapi.json").json();
    assert_eq!(doc["servers"][0]["url"], format!("http://{}", s.addr));
    let behind_tls = request(
        s.addr,
        "GET",
        "/asyncapi.json",
        &["X-Forwarded-Proto: https"],
    )
    .json();
    assert_eq!(behind_tls["asyncapi"], "3.1.0");
    assert_eq!(behind_tls["servers"]["websocket"]["protocol"], "wss");
    assert_eq!(behind_tls["servers"]["sse"]["protocol"], "https");
    assert_eq!(
        behind_tls["servers"]["websocket"]["host"],
        s.addr.to_string()
    );
    let described = get(s.addr, "/").json();
    assert_eq!(
        described["endpoints"]["documents"]["openapi"],
        format!("http://{}/openapi.json", s.addr)
    );
    assert_eq!(
        described["endpoints"]["dashboard"],
        format!("http://{}/dashboard", s.addr)
    );
}

#[test]
fn browsers_asking_for_html_are_sent_to_the_dashboard() {
    let s = TestServer::start();
    let browser = "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let r = request(s.addr, "GET", "/", &[browser]);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("Location"), Some("/dashboard"));
    assert_eq!(r.header("Vary"), Some("Accept"));
    // curl and Postman send */*; JSON clients send application/json: they get JSON.
    for accept in ["Accept: */*", "Accept: application/json"] {
        let r = request(s.addr, "GET", "/", &[accept]);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["service"], "realtime-analytics-backend");
    }
    // /api stays JSON even for browsers.
    assert_eq!(request(s.addr, "GET", "/api", &[browser]).status, 200);
}

#[test]
fn the_dashboard_is_one_self_contained_page() {
    let s = TestServer::start();
    let r = get(s.addr, "/dashboard");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let csp = r.header("Content-Security-Policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let page = r.text();
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("new EventSource("));
    assert!(page.contains("/api/analytics/history"));
    // Nothing is fetched from elsewhere: no absolute URLs at all.
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(!page.contains("<script src") && !page.contains("<link rel=\"stylesheet\""));
}

/// The per-profile ranges (ARCHITECTURE.md, linked from the README's data format) come
/// from the model: its bounds, and what four simulated weeks from Monday 2025-04-14
/// (default seed, UTC) actually span.
#[test]
fn the_ranges_are_the_models() {
    use realtime_analytics_backend::config::DEFAULT_SEED;
    use realtime_analytics_backend::simulator::{Model, Profile, Scenario};
    let mut table = String::from(
        "| `PROFILE` | `active_users` | `page_views` per 1.5 s | `avg_session_duration` (min) |\n\
         |---|---|---|---|\n",
    );
    for profile in Profile::ALL {
        let model = Model {
            seed: DEFAULT_SEED,
            interval: std::time::Duration::from_millis(1500),
            profile,
            scenario: Scenario::Normal,
            utc_offset_hours: 0.0,
        };
        let start = model.tick_at(1_744_588_800_000);
        let samples: Vec<_> = (start..start + 28 * 57_600)
            .map(|t| model.sample(t, Scenario::Normal, false))
            .collect();
        let span = |f: fn(&realtime_analytics_backend::sample::Sample) -> f64| {
            let values = samples.iter().map(f);
            let lo = values.clone().fold(f64::MAX, f64::min);
            (lo, values.fold(0.0, f64::max))
        };
        let b = profile.bounds();
        let cell = |(lo, hi): (f64, f64), (blo, bhi): (f64, f64)| {
            format!("{lo}–{hi} (never outside {blo}–{bhi})")
        };
        let whole = |(lo, hi): (u32, u32)| (f64::from(lo), f64::from(hi));
        table += &format!(
            "| `{}` | {} | {} | {} |\n",
            profile.name(),
            cell(span(|s| f64::from(s.active_users)), whole(b.active_users)),
            cell(span(|s| f64::from(s.page_views)), whole(b.page_views)),
            cell(span(|s| s.avg_session_duration), b.avg_session_duration),
        );
    }
    check_generated("ARCHITECTURE.md", "ranges", &table);
}

/// The log excerpt (ARCHITECTURE.md, linked from the README's logs) is what the binary
/// logs, started as `cargo run --release` starts it (numbers aside): startup, a WebSocket,
/// an SSE stream and a wrong path.
#[test]
fn the_log_excerpt_is_the_servers() {
    let server = Process::spawn(&[("PORT", "0"), ("MEMORY_BUDGET", "512M")]);
    let startup = server.wait_for_line("listening on http://");
    let listening: SocketAddr = startup
        .split("listening on http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listening.port()));
    let mut lines = vec![startup, server.wait_for_line("limits:")];
    let mut ws = ws_open(addr, "/api/analytics");
    next_json(&mut ws);
    next_json(&mut ws);
    lines.push(server.wait_for_line("ws connect"));
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
    .unwrap();
    while ws.read().is_ok() {}
    lines.push(server.wait_for_line("ws disconnect"));
    // Up to the first sample, then leave as a client does (a FIN, not a reset).
    let (sse, _reader) = open_event_stream(addr, "");
    lines.push(server.wait_for_line("sse connect"));
    sse.shutdown(std::net::Shutdown::Write).unwrap();
    lines.push(server.wait_for_line("sse disconnect"));
    assert_eq!(get(addr, "/bad").status, 404);
    lines.push(server.wait_for_line("GET /bad"));
    // The name drawn at start, as the README's examples show it.
    let instance = lines[0]
        .split("(instance ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .to_string();
    let text = lines
        .join("\n")
        .replace(&format!(":{}", addr.port()), ":4000")
        .replace(&format!("instance {instance},"), "instance 7f3a9c21,");
    check_shape("ARCHITECTURE.md", "log", &format!("```text\n{text}\n```\n"));
}

/// The README's example of a bad configuration value is what the binary prints.
#[test]
fn the_readme_config_error_is_the_servers() {
    let mut server = Process::spawn(&[("PORT", "abc")]);
    assert_eq!(server.wait_exit(), Some(2));
    let line = server.rest_of_log().join("\n");
    check_generated(
        "README.md",
        "config-error",
        &format!("```text\n{line}\n```\n"),
    );
}

/// docs/configuration.md's table is the code's (`config::VARS`).
#[test]
fn the_configuration_table_is_the_codes() {
    use realtime_analytics_backend::config::VARS;
    let mut table = String::from("| variable | default | allowed | meaning |\n|---|---|---|---|\n");
    for var in &VARS {
        table += &format!(
            "| `{}` | `{}` | {} | {} |\n",
            var.name,
            var.default,
            var.allowed(),
            var.doc
        );
    }
    check_generated("docs/configuration.md", "config", &table);
}

/// The budget table (docs/limits.md) is the code's (`budget::Budget::rows`), for a
/// 512 MiB host.
#[test]
fn the_budget_table_is_the_codes() {
    use realtime_analytics_backend::budget::Budget;
    let budget = Budget::of(512 << 20, "cgroup limit", 0.1);
    let mut table = String::from(
        "| work | per client | over the server (512 MiB, 0.1 CPU) | past it |\n|---|---|---|---|\n",
    );
    for row in budget.rows((budget.streams, budget.http), 16 * 1024) {
        table += &format!("| {} |\n", row.join(" | "));
    }
    check_generated("docs/limits.md", "budget", &table);
}

/// ARCHITECTURE.md's metrics table is the code's (`metrics::METRICS`).
#[test]
fn the_metrics_table_is_the_codes() {
    use realtime_analytics_backend::metrics::METRICS;
    let mut table = String::from("| metric | type | meaning |\n|---|---|---|\n");
    for m in &METRICS {
        table += &format!("| `{}` | {} | {} |\n", m.name, m.kind, m.help);
    }
    check_generated("ARCHITECTURE.md", "metrics", &table);
}

/// The chaos cookbook's reconnect loop (docs/chaos.md) is `examples/follow.js`, which the
/// browser test runs under every stream fault (`tests/web/dashboard.mjs`).
#[test]
fn the_reconnect_loop_is_the_tested_example() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/follow.js");
    let code = std::fs::read_to_string(path).unwrap();
    check_generated("docs/chaos.md", "follow", &format!("```js\n{code}```\n"));
}
