//! Live mode over real sockets: events in through `POST /api/event`, samples out through
//! the same REST, history and streams as the simulator's. Visitors come through a trusted
//! proxy hop (`X-Forwarded-For`) with User-Agents of their own, as behind Render.

mod common;

use std::time::Duration;

use common::*;
use realtime_analytics_backend::config::Mode;

const SITE: &str = "shop.example";

fn live(configure: impl FnOnce(&mut realtime_analytics_backend::Config)) -> TestServer {
    TestServer::with(|c| {
        c.mode = Mode::Live;
        c.sites = vec![SITE.into(), "blog.example".into()];
        c.trusted_proxy_hops = 1;
        c.interval = Duration::from_millis(200);
        configure(c);
    })
}

/// Posts one event from `ip` (as the proxy names it) with `user_agent`.
fn send(s: &TestServer, body: &str, ip: &str, user_agent: &str) -> Response {
    let raw = format!(
        "POST /api/event HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         X-Forwarded-For: {ip}\r\nUser-Agent: {user_agent}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    send_raw(s.addr, raw.as_bytes())
}

fn pageview(site: &str, path: &str) -> String {
    format!(r#"{{"n":"pageview","u":"https://{site}{path}","d":"{site}","w":1280}}"#)
}

/// The latest sample's `field`, once it is `want` (the next tick counts what came before).
fn settles(s: &TestServer, query: &str, field: &str, want: u64) -> bool {
    eventually(Duration::from_secs(5), || {
        get(s.addr, &format!("/api/analytics?fields=all{query}")).json()[field] == want
    })
}

#[test]
fn n_visitors_are_n_active_users_and_every_view_is_counted_once() {
    let s = live(|_| {});
    let n = 40;
    for i in 0..n {
        for path in ["/", "/cart"] {
            let r = send(
                &s,
                &pageview(SITE, path),
                &format!("203.0.113.{i}"),
                &format!("UA/{i}"),
            );
            assert_eq!(r.status, 202, "{}", r.text());
            assert_eq!(r.json()["counted"], true);
        }
    }
    assert!(settles(&s, "", "active_users", n));
    let sample = get(s.addr, "/api/analytics?fields=all").json();
    assert_eq!(sample["new_visitors"], n);
    assert_eq!(sample["devices"]["laptop"], n);
    assert!(
        sample.get("countries").is_none(),
        "no country without geolocation"
    );
    let (_ws, welcome) = ws_connect(s.addr, "/api/analytics?fields=all");
    let fields = welcome["fields"].as_array().unwrap();
    assert!(!fields.contains(&"countries".into()), "{fields:?}");
    // Every view is in exactly one interval: the history's sum is what was sent.
    let history = get(s.addr, "/api/analytics/history?last=1m").json();
    let views: u64 = history["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["page_views"].as_u64().unwrap())
        .sum();
    assert_eq!(views, 2 * n);
    // /metrics counts them, and says how long the ticks take.
    let metrics = get(s.addr, "/metrics").text();
    for line in [
        "analytics_mode{mode=\"live\"} 1\n",
        "analytics_live_events_total 80\n",
        "analytics_live_visitors 40\n",
        "analytics_live_tick_seconds_max ",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // The other site saw nothing, and says so with zeros, never an error.
    let other = get(s.addr, "/api/analytics?site=blog.example").json();
    assert_eq!(
        (other["active_users"].as_u64(), other["page_views"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn a_site_named_many_times_counts_once() {
    let s = live(|_| {});
    let domains = vec![SITE; 300].join(",");
    let body = format!(r#"{{"n":"pageview","u":"https://{SITE}/x","d":"{domains}"}}"#);
    assert_eq!(send(&s, &body, "203.0.113.1", "UA").status, 202);
    let history = |s: &TestServer| {
        let h = get(s.addr, "/api/analytics/history?last=1m").json();
        h["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["page_views"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert!(eventually(Duration::from_secs(5), || history(&s) > 0));
    assert_eq!(history(&s), 1);
}

#[test]
fn a_resume_from_beyond_the_kept_samples_says_it_was_cut() {
    let s = live(|c| c.live_history = Some(Duration::from_secs(60)));
    let latest = get(s.addr, "/api/analytics?seq=1").json()["seq"]
        .as_u64()
        .unwrap();
    let (_ws, welcome) = ws_connect(s.addr, &format!("/api/analytics?since={}", latest - 1000));
    assert_eq!(welcome["replay"]["cut"], true, "{welcome}");
    assert!(welcome["replay"]["from"].as_u64().unwrap() > latest - 1000);
}

#[test]
fn visitors_leave_when_their_window_closes() {
    let s = live(|c| {
        c.active_window = Duration::from_secs(1);
        c.session_timeout = Duration::from_secs(1);
    });
    send(&s, &pageview(SITE, "/"), "203.0.113.1", "UA");
    assert!(settles(&s, "", "active_users", 1));
    assert!(settles(&s, "", "active_users", 0));
}

#[test]
fn a_forged_forwarded_for_is_ignored_without_trusted_proxies() {
    let s = live(|c| c.trusted_proxy_hops = 0);
    for ip in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        assert_eq!(send(&s, &pageview(SITE, "/"), ip, "Same/1.0").status, 202);
    }
    assert!(
        settles(&s, "", "active_users", 1),
        "one socket, one User-Agent: one visitor"
    );
}

#[test]
fn bad_events_get_an_error_that_says_what_to_fix() {
    let s = live(|_| {});
    let r = send(&s, "not json", "203.0.113.1", "UA");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_event"))
    );
    let r = send(
        &s,
        r#"{"n":"pageview","d":"shop.example"}"#,
        "203.0.113.1",
        "UA",
    );
    assert!(r.json()["message"].as_str().unwrap().contains("\"url\""));
    let r = send(&s, &pageview("other.example", "/"), "203.0.113.1", "UA");
    assert_eq!(r.status, 403);
    assert!(r.json()["message"].as_str().unwrap().contains(SITE));
    let form = "POST /api/event HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
                application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=1";
    assert_eq!(send_raw(s.addr, form.as_bytes()).status, 415);
    let r = send(&s, &pageview(SITE, "/"), "203.0.113.1", "Googlebot/2.1");
    assert_eq!(r.status, 202);
    assert_eq!(
        (r.json()["counted"].as_bool(), r.json()["reason"].as_str()),
        (Some(false), Some("bot"))
    );
    let r = get(s.addr, "/api/analytics?profile=news");
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("MODE=live"));
    assert_eq!(get(s.addr, "/api/analytics?site=nope.example").status, 400);
}

#[test]
fn a_flood_from_one_address_waits_its_turn() {
    let s = live(|_| {});
    let statuses: Vec<u16> = (0..70)
        .map(|i| send(&s, &pageview(SITE, "/"), "203.0.113.9", &format!("UA/{i}")).status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 202).count(),
        60,
        "{statuses:?}"
    );
    let r = send(&s, &pageview(SITE, "/"), "203.0.113.9", "UA");
    assert_eq!(r.status, 429);
    assert!(r.header("Retry-After").is_some());
    assert_eq!(
        send(&s, &pageview(SITE, "/"), "203.0.113.10", "UA").status,
        202,
        "per address"
    );
}

#[test]
fn the_service_and_the_welcome_say_which_mode_and_site() {
    let s = live(|_| {});
    let v = get(s.addr, "/").json();
    assert_eq!(v["mode"], "live");
    assert_eq!(v["sites"][0], SITE);
    assert!(
        !v["detail_fields"].to_string().contains("countries"),
        "no geolocation: {v}"
    );
    let (mut ws, welcome) = ws_connect(s.addr, "/api/analytics?site=blog.example");
    assert_eq!(
        (welcome["mode"].as_str(), welcome["site"].as_str()),
        (Some("live"), Some("blog.example"))
    );
    assert!(welcome.get("profile").is_none());
    assert_eq!(next_json(&mut ws)["active_users"], 0);
    let v = get(s.addr, "/api/analytics").json();
    assert_eq!(
        v.as_object().unwrap().len(),
        4,
        "the original's four fields: {v}"
    );
    // The served API document offers what this server takes: site, not profile.
    let doc = get(s.addr, "/openapi.json").json();
    let params = doc["paths"]["/api/analytics"]["get"]["parameters"].to_string();
    assert!(
        params.contains("parameters/site") && !params.contains("profile"),
        "{params}"
    );
    let site = &doc["components"]["parameters"]["site"];
    assert_eq!(site["schema"]["enum"][1], "blog.example");
}

/// A visitor's address and User-Agent never stay in the server's memory or its log: the
/// edge turns them into digests and overwrites them. Searched for in the whole of the
/// process's writable memory after the events.
#[test]
#[cfg(target_os = "linux")] // reads /proc/PID/mem
fn no_address_or_user_agent_survives_in_memory_or_the_log() {
    use std::io::{Read, Seek, SeekFrom};
    let mut server = Process::spawn(&[
        ("PORT", "0"),
        ("MODE", "live"),
        ("SITES", SITE),
        ("TRUSTED_PROXY_HOPS", "1"),
        ("LOG_LEVEL", "debug"),
    ]);
    let addr = server.wait_until_listening();
    let secrets: Vec<(String, String)> = (0..20)
        .map(|i| {
            (
                format!("198.51.100.{}", 100 + i),
                format!("Secret-Agent/{i}.77{i}"),
            )
        })
        .collect();
    // Each on a connection kept open meanwhile, so that no buffer of one is reused for
    // another before the search.
    let mut open = Vec::new();
    for (ip, ua) in &secrets {
        let body = pageview(SITE, "/");
        let raw = format!(
            "POST /api/event HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             X-Forwarded-For: {ip}\r\nUser-Agent: {ua}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        std::io::Write::write_all(&mut stream, raw.as_bytes()).unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        assert_eq!(read_response(&mut reader, false).status, 202);
        open.push(stream);
    }
    // A dashboard polls meanwhile, as it would.
    for _ in 0..20 {
        assert_eq!(get(addr, "/api/analytics").status, 200);
    }
    let pid = server.child.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !fields[1].starts_with("rw") {
            continue;
        }
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        for (ip, ua) in &secrets {
            for needle in [ip.as_bytes(), ua.as_bytes()] {
                if region.windows(needle.len()).any(|w| w == needle) {
                    found.push(String::from_utf8_lossy(needle).into_owned());
                }
            }
        }
    }
    drop(open);
    server.signal(libc::SIGTERM);
    server.wait_exit();
    let log = server.rest_of_log().join("\n");
    assert!(found.is_empty(), "in memory: {found:?}");
    for (ip, ua) in &secrets {
        assert!(
            !log.contains(ip.as_str()) && !log.contains(ua.as_str()),
            "in the log: {ip} {ua}"
        );
    }
}

/// In live mode any peer may be a site's visitor: refusals name it by a digest, never by
/// its address, and a flood of them writes a few lines a second, not one each.
#[test]
#[cfg(unix)] // stops the server with SIGTERM to read the rest of its log
fn refusals_name_no_peer_and_do_not_flood_the_log() {
    use std::io::Write;
    let mut server = Process::spawn(&[("PORT", "0"), ("MODE", "live"), ("SITES", SITE)]);
    let addr = server.wait_until_listening();
    let started = std::time::Instant::now();
    let mut peers = Vec::new();
    for _ in 0..100 {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        peers.push(stream.local_addr().unwrap().to_string());
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n")
            .unwrap();
        let r = read_response(&mut std::io::BufReader::new(stream), false);
        assert_eq!(r.status, 400);
    }
    let seconds = started.elapsed().as_secs() as usize + 1;
    server.signal(libc::SIGTERM);
    server.wait_exit();
    let log = server.rest_of_log();
    let refusals: Vec<&String> = log.iter().filter(|l| l.contains("-> 400")).collect();
    assert!(
        !refusals.is_empty() && refusals.len() <= 10 * seconds,
        "{} lines for 100 refusals in {seconds} s",
        refusals.len()
    );
    for line in &refusals {
        assert!(line.contains("client "), "{line}");
        assert!(!peers.iter().any(|p| line.contains(p.as_str())), "{line}");
    }
}

/// The workers' lines too (an answer other than 2xx, a WebSocket's and an SSE stream's
/// connect and disconnect) name a peer by its digest in live mode, as the edge's do: the
/// peer's port appeared in them, and its address.
#[test]
#[cfg(unix)] // stops the server with SIGTERM to read the rest of its log
fn answers_and_streams_name_no_peer_in_the_log() {
    use std::io::Write;
    let mut server = Process::spawn(&[("PORT", "0"), ("MODE", "live"), ("SITES", SITE)]);
    let addr = server.wait_until_listening();
    let mut peers = Vec::new();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    peers.push(stream.local_addr().unwrap().port());
    stream
        .write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut std::io::BufReader::new(stream), false).status,
        404
    );
    let (ws, _) = ws_connect(addr, "/api/analytics");
    peers.push(ws.get_ref().local_addr().unwrap().port());
    drop(ws);
    let (sse, _) = open_event_stream(addr, "");
    peers.push(sse.local_addr().unwrap().port());
    drop(sse);
    server.signal(libc::SIGTERM);
    server.wait_exit();
    let log = server.rest_of_log();
    let lines: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("-> 404") || l.contains("connect"))
        .collect();
    assert!(lines.len() >= 5, "{log:#?}");
    for line in lines {
        assert!(line.contains("peer=client "), "{line}");
        assert!(!line.contains("127.0.0.1"), "{line}");
        assert!(
            !peers.iter().any(|p| line.contains(&format!(":{p}"))),
            "{line}"
        );
    }
}
