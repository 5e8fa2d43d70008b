//! REST over real sockets: every path, normalisation, errors, HEAD, CORS, preflight.

mod common;

use common::*;

#[test]
fn service_paths_describe_the_service_with_absolute_urls() {
    let s = TestServer::start();
    for path in ["/", "/api", "//api/"] {
        let r = get(s.addr, path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["service"], "realtime-analytics-backend");
        assert_eq!(v["interval_ms"], 1500);
        assert_eq!(
            v["endpoints"]["rest"]["analytics"],
            format!("http://{}/api/analytics", s.addr)
        );
        assert_eq!(
            v["endpoints"]["websocket"]["analytics"],
            format!("ws://{}/api/analytics", s.addr)
        );
        assert_eq!(v["fields"].as_array().unwrap().len(), 4);
    }
}

#[test]
fn behind_a_tls_proxy_the_service_advertises_https_and_wss() {
    let s = TestServer::start();
    let raw = "GET / HTTP/1.1\r\nHost: demo.onrender.com\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
    let v = send_raw(s.addr, raw.as_bytes()).json();
    assert_eq!(
        v["endpoints"]["rest"]["analytics"],
        "https://demo.onrender.com/api/analytics"
    );
    assert_eq!(
        v["endpoints"]["websocket"]["analytics"],
        "wss://demo.onrender.com/api/analytics"
    );
    // A Host header that is not a host name is refused (RFC 9112 §3.2), never echoed.
    let raw = "GET / HTTP/1.1\r\nHost: evil.example/<x>\r\nConnection: close\r\n\r\n";
    let r = send_raw(s.addr, raw.as_bytes());
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_request"))
    );
    assert!(!r.text().contains("evil"), "{}", r.text());
}

#[test]
fn analytics_returns_the_latest_sample_uncached() {
    let s = TestServer::start();
    let r = get(s.addr, "/api/analytics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_sample(&r.json());
}

#[test]
fn paths_are_normalised_like_the_original_and_nothing_is_decoded() {
    let s = TestServer::start();
    let cases = [
        ("/api/analytics", "sample"),
        ("/api/analytics/", "sample"),
        ("//api//analytics", "sample"),
        ("/api//analytics/?x=1&y=/../", "sample"),
        ("/api/analytics?", "sample"),
        ("http://example.com/api/analytics", "sample"),
        ("/", "service"),
        ("//", "service"),
        ("/?q", "service"),
        ("/api/", "service"),
        ("//api", "service"),
        ("///api///", "service"),
        ("/api/%61nalytics", "404"),
        ("/api%2Fanalytics", "404"),
        ("/api/../api/analytics", "404"),
        ("/api/./analytics", "404"),
        ("/API/ANALYTICS", "404"),
        ("/api/analytics/x", "404"),
        ("/favicon.ico", "404"),
        ("*", "404"),
    ];
    for (target, expected) in cases {
        let r = get(s.addr, target);
        match expected {
            "sample" => {
                assert_eq!(r.status, 200, "{target}");
                assert_sample(&r.json());
            }
            "service" => {
                assert_eq!(r.status, 200, "{target}");
                assert_eq!(
                    r.json()["service"],
                    "realtime-analytics-backend",
                    "{target}"
                );
            }
            _ => {
                assert_eq!(r.status, 404, "{target}");
                let v = r.json();
                assert_eq!(v["error"], "not_found");
            }
        }
    }
}

#[test]
fn targets_with_a_fragment_or_without_a_path_are_refused() {
    let s = TestServer::start();
    for target in [
        "/api/analytics#x",
        "#",
        "/#/api",
        "healthz",
        "api/analytics",
    ] {
        let r = get(s.addr, target);
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(r.json()["error"], "bad_request", "{target}");
    }
}

#[test]
fn repeated_header_lines_count_as_one_list_and_two_origins_are_refused() {
    let s = TestServer::start();
    let r = request(
        s.addr,
        "GET",
        "/",
        &["Accept: application/json", "Accept: text/html"],
    );
    assert_eq!(r.status, 303, "RFC 9110 §5.3: two lines are one list");
    let r = request(
        s.addr,
        "GET",
        "/api/analytics",
        &["Origin: https://a.example", "Origin: https://b.example"],
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("Origin"));
}

#[test]
fn unknown_paths_get_a_json_404_that_says_where_to_go() {
    let s = TestServer::start();
    let r = get(s.addr, "/nope//here/?x=1");
    assert_eq!(r.status, 404);
    let v = r.json();
    assert_eq!(v["error"], "not_found");
    assert_eq!(v["path"], "/nope/here");
    assert!(v["message"].as_str().unwrap().contains("/api/analytics"));
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
}

#[test]
fn head_answers_like_get_without_a_body() {
    let s = TestServer::start();
    for path in ["/", "/api", "/api/analytics"] {
        let r = request(s.addr, "HEAD", path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.is_empty());
        let len: usize = r.header("Content-Length").unwrap().parse().unwrap();
        assert!(len > 50, "HEAD keeps GET's Content-Length");
    }
}

#[test]
fn other_methods_get_405_with_allow() {
    let s = TestServer::start();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/", "/api", "/api/analytics"] {
            let r = request(s.addr, method, path, &["Content-Length: 0"]);
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("Allow"), Some("GET, HEAD, OPTIONS"));
            let v = r.json();
            assert_eq!(v["error"], "method_not_allowed");
            assert!(v["message"].as_str().unwrap().contains(method));
        }
    }
    // Unknown path wins over unknown method: nothing there at all.
    assert_eq!(
        request(s.addr, "POST", "/x", &["Content-Length: 0"]).status,
        404
    );
}

#[test]
fn a_body_is_judged_after_the_route_and_closes_the_connection() {
    let s = TestServer::start();
    let send = |method: &str, path: &str, framing: &str| {
        let raw = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n{{}}");
        send_raw(s.addr, raw.as_bytes())
    };
    for framing in ["Content-Length: 2", "Transfer-Encoding: chunked"] {
        for method in ["POST", "PUT", "DELETE"] {
            let r = send(method, "/api/analytics", framing);
            assert_eq!(r.status, 405, "{method} {framing}");
            assert_eq!(r.header("Allow"), Some("GET, HEAD, OPTIONS"));
            assert_eq!(
                r.header("Connection"),
                Some("close"),
                "the body is never read"
            );
        }
        assert_eq!(send("POST", "/x", framing).status, 404, "{framing}");
        let r = send("GET", "/api/analytics", framing);
        assert_eq!(r.status, 413, "{framing}");
        assert_eq!(r.json()["error"], "body_not_accepted");
        assert_eq!(r.header("Connection"), Some("close"));
    }
    let r = send("POST", "/api", "Transfer-Encoding: gzip");
    assert_eq!(r.status, 501, "RFC 9112 §6.1: an unknown coding");
    assert_eq!(r.json()["error"], "transfer_coding_not_implemented");
}

#[test]
fn cors_allows_any_origin_by_default() {
    let s = TestServer::start();
    let r = request(
        s.addr,
        "GET",
        "/api/analytics",
        &["Origin: https://dash.example"],
    );
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
}

#[test]
fn cors_allowlist_echoes_allowed_origins_only() {
    let s = TestServer::with(|c| {
        c.cors = realtime_analytics_backend::config::Cors::Only(vec!["https://dash.example".into()])
    });
    let ok = request(
        s.addr,
        "GET",
        "/api/analytics",
        &["Origin: https://dash.example"],
    );
    assert_eq!(
        ok.header("Access-Control-Allow-Origin"),
        Some("https://dash.example")
    );
    let varies = |r: &Response, on: &str| {
        r.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("Vary") && v.contains(on))
    };
    assert!(
        varies(&ok, "Origin") && varies(&ok, "Accept"),
        "{:?}",
        ok.headers
    );
    let other = request(
        s.addr,
        "GET",
        "/api/analytics",
        &["Origin: https://evil.example"],
    );
    assert_eq!(other.status, 200, "the data is still served");
    assert_eq!(other.header("Access-Control-Allow-Origin"), None);
}

#[test]
fn preflight_gets_204_with_the_allow_headers() {
    let s = TestServer::start();
    let r = request(
        s.addr,
        "OPTIONS",
        "/api/analytics",
        &[
            "Origin: https://dash.example",
            "Access-Control-Request-Method: GET",
            "Access-Control-Request-Headers: Last-Event-ID, X-Trace",
        ],
    );
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(
        r.header("Access-Control-Allow-Methods"),
        Some("GET, HEAD, OPTIONS")
    );
    assert_eq!(
        r.header("Access-Control-Allow-Headers"),
        Some("Last-Event-ID, X-Trace")
    );
    assert!(r.header("Access-Control-Max-Age").is_some());
}

#[test]
fn keep_alive_connections_serve_many_requests() {
    use std::io::{BufReader, Write};
    let s = TestServer::start();
    let stream = std::net::TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for i in 0..20 {
        let path = ["/", "/api", "/api/analytics", "/nope"][i % 4];
        write!(&stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = read_response(&mut reader, false);
        assert_eq!(r.status, if path == "/nope" { 404 } else { 200 });
    }
}

/// Mistyped or unknown query parameters do no harm, and the response names them.
#[test]
fn ignored_query_parameters_are_named_in_a_header() {
    let s = TestServer::start();
    let r = get(s.addr, "/api/analytics?scenaro=spike&_=1700000000");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Ignored-Parameters"), Some("scenaro, _"));
    let r = get(s.addr, "/api/analytics/history?last=1m&stpe=3s");
    assert_eq!(r.header("X-Ignored-Parameters"), Some("stpe"));
    assert_eq!(
        get(s.addr, "/api/analytics?seq=1").header("X-Ignored-Parameters"),
        None
    );
}
