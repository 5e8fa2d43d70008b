//! The built binary: configuration errors, port conflicts, the startup line, signals.

mod common;

use std::net::TcpListener;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn bad_configuration_names_the_variable_and_exits_2() {
    let cases = [
        ("PORT", "abc", "0 to 65535"),
        ("PORT", "70000", "0 to 65535"),
        ("HOST", "example.com", "IP address"),
        ("INTERVAL_MS", "50", "100 to 60000"),
        ("LOG_LEVEL", "chatty", "error, warn, info"),
        ("SEED", "x", "random"),
        ("CORS_ORIGINS", "nope", "comma-separated"),
    ];
    for (var, value, allowed) in cases {
        let mut p = Process::spawn(&[(var, value)]);
        assert_eq!(p.wait_exit(), Some(2), "{var}={value}");
        let out = p.rest_of_log().join("\n");
        assert!(out.contains(var) && out.contains(value), "{out}");
        assert!(out.contains(allowed), "{out}");
        assert_eq!(out.lines().count(), 1, "one line: {out}");
    }
}

#[test]
fn a_port_in_use_is_reported_and_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut p = Process::spawn(&[("HOST", "127.0.0.1"), ("PORT", &port)]);
    assert_eq!(p.wait_exit(), Some(1));
    let out = p.rest_of_log().join("\n");
    assert!(
        out.contains("already in use") && out.contains(&port),
        "{out}"
    );
}

#[test]
fn startup_line_lists_every_endpoint_and_sigterm_closes_clients_with_1001() {
    let mut p = Process::spawn(&[("HOST", "127.0.0.1"), ("PORT", "0"), ("INTERVAL_MS", "200")]);
    let addr = p.wait_until_listening();
    assert_eq!(get(addr, "/api/analytics").status, 200);
    let (mut ws, _) = ws_connect(addr, "/api/analytics");
    assert_sample(&next_json(&mut ws));
    p.wait_for_line("ws connect path=/api/analytics");

    p.signal(libc::SIGTERM);
    assert_eq!(read_close(&mut ws).unwrap().code, CloseCode::Away);
    assert_eq!(p.wait_exit(), Some(0));
    let log = p.rest_of_log().join("\n");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("ws disconnect path=/api/analytics"), "{log}");
}

#[test]
fn startup_line_gives_the_url_of_every_endpoint() {
    let p = Process::spawn(&[("HOST", "127.0.0.1"), ("PORT", "0")]);
    let line = p.wait_for_line("listening on");
    let addr = p_addr(&line);
    for url in [
        format!("http://{addr}/api/analytics"),
        format!("ws://{addr}/api/analytics"),
        format!("http://{addr}/ "),
        format!("http://{addr}/api"),
    ] {
        assert!(line.contains(url.trim()), "{url} in {line}");
    }
}

fn p_addr(line: &str) -> &str {
    line.split("listening on http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
}

#[test]
fn sigint_also_stops_gracefully() {
    let mut p = Process::spawn(&[("HOST", "127.0.0.1"), ("PORT", "0")]);
    p.wait_until_listening();
    p.signal(libc::SIGINT);
    assert_eq!(p.wait_exit(), Some(0));
}
