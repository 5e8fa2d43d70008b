//! The traffic model over real sockets: options, history, resume, cadence, and two
//! instances that agree.

mod common;

use std::time::Duration;

use common::*;
use realtime_analytics_backend::config::Config;

fn seq_of(v: &serde_json::Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

#[test]
fn rest_options_select_scenario_fields_and_seq() {
    let s = TestServer::start();
    let flat = get(s.addr, "/api/analytics?scenario=flatline").json();
    assert_eq!(
        (
            &flat["active_users"],
            &flat["page_views"],
            &flat["avg_session_duration"]
        ),
        (&100.into(), &200.into(), &4.5.into()),
        "the blog profile's base values"
    );
    let all = get(s.addr, "/api/analytics?fields=all&seq=1").json();
    let obj = all.as_object().unwrap();
    assert_eq!(obj.len(), 11, "ten fields and seq: {all}");
    let sum = |k: &str| {
        all[k]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
    };
    let users = all["active_users"].as_u64().unwrap();
    assert_eq!(sum("devices"), users);
    assert_eq!(sum("countries"), users);
    assert_eq!(sum("referrers"), users);
    assert_eq!(sum("top_pages"), all["page_views"].as_u64().unwrap());
    let ts = chrono::DateTime::parse_from_rfc3339(all["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(
        seq_of(&all),
        ts.timestamp_millis() as u64 / 1500,
        "seq is the tick index"
    );
    let some = get(s.addr, "/api/analytics?fields=timestamp,bounce_rate").json();
    assert_eq!(some.as_object().unwrap().len(), 2);

    for (query, parameter) in [
        ("scenario=chaos", "scenario"),
        ("fields=visits", "fields"),
        ("seq=perhaps", "seq"),
    ] {
        let r = get(s.addr, &format!("/api/analytics?{query}"));
        assert_eq!(r.status, 400, "{query}");
        let v = r.json();
        assert_eq!(
            (v["error"].as_str(), v["parameter"].as_str()),
            (Some("bad_query"), Some(parameter))
        );
    }
    let r = get(s.addr, "/api/analytics?scenario=chaos");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("normal, spike, outage, flatline, ramp")
    );
}

#[test]
fn history_is_computed_bounded_and_agrees_with_the_live_samples() {
    let s = TestServer::start();
    let h = get(s.addr, "/api/analytics/history?last=1m&seq=1").json();
    assert_eq!(h["interval_ms"], 1500);
    assert_eq!(h["step_ms"], 1500);
    let samples = h["samples"].as_array().unwrap();
    assert!((40..=41).contains(&samples.len()), "{}", samples.len());
    for pair in samples.windows(2) {
        assert_eq!(seq_of(&pair[1]), seq_of(&pair[0]) + 1, "consecutive ticks");
    }
    // The last point is the latest sample, byte for byte.
    let latest = get(s.addr, "/api/analytics?seq=1").json();
    let last = samples.last().unwrap();
    if seq_of(last) == seq_of(&latest) {
        assert_eq!(last, &latest);
    }
    // Steps, bounds, and refusals that say what to do.
    let stepped = get(s.addr, "/api/analytics/history?last=1h&step=1m&seq=1").json();
    let points = stepped["samples"].as_array().unwrap();
    assert!((60..=61).contains(&points.len()));
    assert!(
        points.iter().all(|p| seq_of(p).is_multiple_of(40)),
        "on the step's grid"
    );
    let r = get(s.addr, "/api/analytics/history?last=1d");
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("raise step"));
    let r = get(
        s.addr,
        "/api/analytics/history?from=2020-01-01T00:00:00Z&to=2999-01-01T00:00:00Z",
    );
    assert_eq!(
        (r.status, r.json()["parameter"].as_str()),
        (400, Some("to"))
    );
    let r = get(s.addr, "/api/analytics/history?step=1s");
    assert_eq!(
        (r.status, r.json()["parameter"].as_str()),
        (400, Some("step"))
    );
    let past = get(
        s.addr,
        "/api/analytics/history?from=2025-04-12T12:00:00Z&to=2025-04-12T12:01:00Z&fields=all",
    );
    assert_eq!(past.status, 200);
    assert_eq!(past.json()["count"], 41);
}

#[test]
fn resume_replays_every_missed_sample_then_goes_live() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(100));
    let (mut ws, welcome) = ws_connect(s.addr, "/api/analytics?seq=1");
    assert!(welcome["seq"].as_u64().is_some());
    let mut last = 0;
    for _ in 0..3 {
        last = seq_of(&next_json(&mut ws));
    }
    drop(ws);
    std::thread::sleep(Duration::from_millis(700)); // about 7 ticks missed
    let (mut ws, welcome) = ws_connect(s.addr, &format!("/api/analytics?since={last}&seq=1"));
    let replay_to = welcome["replay"]["to"].as_u64().unwrap();
    assert_eq!(welcome["replay"]["from"].as_u64(), Some(last + 1));
    assert!(replay_to >= last + 5, "{welcome}");
    let mut seen = Vec::new();
    while seen.last().is_none_or(|&s| s < replay_to + 5) {
        seen.push(seq_of(&next_json(&mut ws)));
    }
    let expected: Vec<u64> = (last + 1..=replay_to + 5).collect();
    assert_eq!(seen, expected, "no gap, no duplicate across the reconnect");
    // Replayed samples are the same bytes history gives for those ticks.
    let from = (last + 1) * 100;
    let h = get(
        s.addr,
        &format!(
            "/api/analytics/history?from={from}&to={}&seq=1",
            replay_to * 100
        ),
    )
    .json();
    assert_eq!(seq_of(&h["samples"][0]), last + 1);
    // A future `since` on a WebSocket: accepted, explained, closed with 1008.
    assert_refused(s.addr, "/api/analytics?since=99999999999999", "since");
}

#[test]
fn resume_is_bounded_to_the_last_10000_samples() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(100));
    let (mut ws, welcome) = ws_connect(s.addr, "/api/analytics?since=0&seq=1&fields=timestamp");
    let to = welcome["replay"]["to"].as_u64().unwrap();
    let from = welcome["replay"]["from"].as_u64().unwrap();
    assert_eq!(to - from + 1, 10_000);
    let first = next_json(&mut ws);
    assert_eq!(seq_of(&first), from);
    for expected in from + 1..=to {
        assert_eq!(seq_of(&next_json(&mut ws)), expected);
    }
}

#[test]
fn cadence_delivers_every_nth_tick_from_the_one_generator() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(100));
    let (mut ws, welcome) = ws_connect(s.addr, "/api/analytics?every=3&seq=1");
    assert_eq!(welcome["interval_ms"], 300);
    let _immediate = next_json(&mut ws);
    let seqs: Vec<u64> = (0..4).map(|_| seq_of(&next_json(&mut ws))).collect();
    assert!(seqs.iter().all(|s| s % 3 == 0), "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 3), "{seqs:?}");
    let (mut ws, _) = ws_connect(s.addr, "/api/analytics?interval_ms=500&seq=1");
    let _immediate = next_json(&mut ws);
    assert!((0..3).all(|_| seq_of(&next_json(&mut ws)).is_multiple_of(5)));
    for (bad, parameter) in [
        ("every=0", "every"),
        ("every=x", "every"),
        ("interval_ms=150", "interval_ms"),
        ("interval_ms=300&every=2", "interval_ms"),
    ] {
        assert_refused(s.addr, &format!("/api/analytics?{bad}"), parameter);
    }
}

/// A WebSocket with an option that cannot be used: an error frame naming `parameter`,
/// then close 1008.
fn assert_refused(addr: std::net::SocketAddr, target: &str, parameter: &str) {
    let mut ws = ws_open(addr, target);
    let error = next_json(&mut ws);
    assert_eq!(
        (
            error["type"].as_str(),
            error["error"].as_str(),
            error["parameter"].as_str()
        ),
        (Some("error"), Some("bad_query"), Some(parameter)),
        "{target}: {error}"
    );
    let close = read_close(&mut ws).expect("a close frame");
    assert_eq!(u16::from(close.code), 1008, "{target}");
}

#[test]
fn a_scenario_on_one_connection_changes_nothing_for_others() {
    let s = TestServer::with(|c| c.interval = Duration::from_millis(100));
    let (mut flat, w) = ws_connect(s.addr, "/api/analytics?scenario=flatline&seq=1");
    assert_eq!(w["scenario"], "flatline");
    let (mut normal, _) = ws_connect(s.addr, "/api/analytics?seq=1");
    let mut others = Vec::new();
    for _ in 0..30 {
        let f = next_json(&mut flat);
        assert_eq!(f["active_users"], 100);
        others.push(next_json(&mut normal));
    }
    // The other connection got exactly the shared series: history (scenario normal) for
    // the same ticks, sample for sample.
    let (first, last) = (seq_of(&others[0]), seq_of(&others[29]));
    let history = get(
        s.addr,
        &format!(
            "/api/analytics/history?from={}&to={}&seq=1",
            first * 100,
            last * 100
        ),
    )
    .json();
    assert_eq!(history["samples"].as_array().unwrap(), &others);
    let rest = get(s.addr, "/api/analytics").json();
    assert_eq!(rest.as_object().unwrap().len(), 4, "REST default unchanged");
}

#[test]
fn two_instances_with_the_same_seed_agree() {
    let configure = |c: &mut Config| {
        c.seed = 424_242;
        c.interval = Duration::from_millis(100);
    };
    let a = TestServer::with(configure);
    let b = TestServer::with(configure);
    // REST: the same tick gives the same bytes (retry if a tick falls between the two).
    let agreed = (0..20).any(|_| {
        let (x, y) = (
            get(a.addr, "/api/analytics?seq=1").json(),
            get(b.addr, "/api/analytics?seq=1").json(),
        );
        seq_of(&x) == seq_of(&y) && x == y
    });
    assert!(agreed, "REST agrees");
    // WebSocket: every tick both streams carry is identical.
    let (mut wa, _) = ws_connect(a.addr, "/api/analytics?seq=1&fields=all");
    let (mut wb, _) = ws_connect(b.addr, "/api/analytics?seq=1&fields=all");
    let take = |ws: &mut Ws| (0..10).map(|_| next_text(ws)).collect::<Vec<_>>();
    let (xa, xb) = (take(&mut wa), take(&mut wb));
    let common: Vec<&String> = xa.iter().filter(|x| xb.contains(x)).collect();
    assert!(common.len() >= 8, "{} of 10 ticks identical", common.len());
    // History: identical for the same past range.
    let q =
        "/api/analytics/history?from=2025-04-12T12:00:00Z&to=2025-04-12T12:05:00Z&fields=all&seq=1";
    assert_eq!(get(a.addr, q).body, get(b.addr, q).body);
    // A different seed disagrees.
    let c = TestServer::with(|c| c.seed = 7);
    assert_ne!(get(a.addr, q).body, get(c.addr, q).body);
}
