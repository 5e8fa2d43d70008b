//! Several instances behind a real load balancer: Debian's haproxy, configured as the
//! README's "Running several instances" shows, in front of three instances of the built
//! binary, every one a process on loopback. Nothing is mocked.
//!
//! The slow tier (`#[ignore]`): `scripts/test.sh` runs it, and installs haproxy first.
//! Without haproxy these tests fail, saying how to install it.
#![cfg(unix)] // instances are stopped with kill(2); Windows has no signals to send

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Process, eventually};
use serde_json::Value;
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

/// Instances by `INSTANCE` name with their own addresses, and haproxy in front of them;
/// all stopped on drop.
struct Fleet {
    instances: BTreeMap<String, (Process, SocketAddr)>,
    haproxy: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Fleet {
    fn start(names: &[&str]) -> Fleet {
        let mut instances = BTreeMap::new();
        let mut servers = Vec::new();
        for name in names {
            let p = Process::spawn(&[("HOST", "127.0.0.1"), ("PORT", "0"), ("INSTANCE", name)]);
            let addr = p.wait_until_listening();
            servers.push((name.to_string(), addr));
            instances.insert(name.to_string(), (p, addr));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("fleet-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(port, &servers)).unwrap();
        // Debian installs it in /usr/sbin, on no user's PATH but root's.
        let program = ["haproxy", "/usr/sbin/haproxy"]
            .into_iter()
            .find(|p| Command::new(p).arg("-v").output().is_ok())
            .unwrap_or("haproxy");
        let haproxy = Command::new(program)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "haproxy does not start ({e}): apt-get install haproxy, as scripts/test.sh does"
                )
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let fleet = Fleet {
            instances,
            haproxy,
            addr,
            dir,
        };
        // Ready once every instance has answered through it.
        let mut seen = BTreeMap::new();
        let all = eventually(Duration::from_secs(15), || {
            if let Some(name) = instance_behind(addr) {
                *seen.entry(name).or_insert(0) += 1;
            }
            seen.len() == names.len()
        });
        assert!(all, "haproxy did not reach every instance: {seen:?}");
        fleet
    }

    fn signal(&self, name: &str, signal: i32) {
        self.instances[name].0.signal(signal);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The README's haproxy configuration, listening on `port`, with `servers` in place of
/// its three.
fn haproxy_config(port: u16, servers: &[(String, SocketAddr)]) -> String {
    let readme = include_str!("../README.md");
    let block = readme
        .split("<!-- haproxy -->\n```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the README shows haproxy's configuration after <!-- haproxy -->");
    let shown = block
        .lines()
        .filter(|l| l.trim_start().starts_with("server "))
        .count();
    assert_eq!(shown, 3, "the README's configuration names three instances");
    let mut config = String::new();
    for line in block.lines() {
        match line.split_whitespace().next() {
            Some("server") => {}
            Some("bind") => config.push_str(&format!("    bind 127.0.0.1:{port}\n")),
            _ => config.push_str(&format!("{line}\n")),
        }
    }
    // The servers are the last lines of the last section, the backend.
    for (name, addr) in servers {
        config.push_str(&format!("    server {name} {addr}\n"));
    }
    config
}

/// The instance that answered `GET /` through the balancer, if one did.
fn instance_behind(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let body = answer.split_once("\r\n\r\n")?.1;
    let v: Value = serde_json::from_str(body).ok()?;
    v["instance"].as_str().map(str::to_string)
}

/// The status of `GET path` at `addr`, if it answered.
fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// What one client of the fleet received, following the stream as a dashboard does.
#[derive(Default)]
struct Followed {
    /// Every sample's seq, in the order received.
    seqs: Vec<u64>,
    /// Every sample as sent, by seq.
    samples: BTreeMap<u64, String>,
    /// The instance each connection's welcome named, in order.
    instances: Vec<String>,
}

/// Follows `/api/analytics` through the balancer at `addr` until tick `until`: on a
/// close it waits the `reconnect_after_ms` it was given, on a lost or refused connection
/// a tenth of a second, then connects again with `since=` the last seq received.
/// `connected` counts the first welcome.
fn follow(addr: SocketAddr, query: &str, until: u64, connected: &AtomicUsize) -> Followed {
    let mut got = Followed::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "did not reach tick {until}");
        let since = got
            .seqs
            .last()
            .map_or(String::new(), |s| format!("&since={s}"));
        let url = format!("ws://{addr}/api/analytics?seq=1{query}{since}");
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let Ok((mut ws, _)) = tungstenite::client(url.into_client_request().unwrap(), stream)
        else {
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        let mut wait = Duration::from_millis(100);
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if v["type"] == "welcome" {
                        if got.instances.is_empty() {
                            connected.fetch_add(1, Ordering::Relaxed);
                        }
                        got.instances
                            .push(v["instance"].as_str().unwrap().to_string());
                        continue;
                    }
                    let seq = v["seq"].as_u64().unwrap();
                    got.seqs.push(seq);
                    got.samples.insert(seq, text.to_string());
                    if seq >= until {
                        return got;
                    }
                }
                Ok(Message::Close(frame)) => {
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    let hint: Value = serde_json::from_str(&reason).unwrap_or_default();
                    if let Some(ms) = hint["reconnect_after_ms"].as_u64() {
                        wait = Duration::from_millis(ms);
                    }
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        thread::sleep(wait);
    }
}

/// The latest tick, from any instance.
fn latest(addr: SocketAddr) -> u64 {
    common::get(addr, "/api/analytics?seq=1").json()["seq"]
        .as_u64()
        .unwrap()
}

/// `clients` followers of the fleet until `ticks` after the latest; `during` runs once
/// they are all connected.
fn followers(fleet: &Fleet, clients: usize, ticks: u64, during: impl FnOnce()) -> Vec<Followed> {
    let until = latest(fleet.addr) + ticks;
    let connected = Arc::new(AtomicUsize::new(0));
    let addr = fleet.addr;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let connected = Arc::clone(&connected);
            thread::spawn(move || follow(addr, "&fields=all", until, &connected))
        })
        .collect();
    let all = eventually(Duration::from_secs(30), || {
        connected.load(Ordering::Relaxed) == clients
    });
    assert!(
        all,
        "{} of {clients} connected",
        connected.load(Ordering::Relaxed)
    );
    during();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Every tick from the first received to the last, once each, in order.
fn assert_no_gap_no_duplicate(f: &Followed) {
    let gaps: Vec<_> = f.seqs.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(
        gaps.is_empty(),
        "{gaps:?} in {:?} via {:?}",
        f.seqs,
        f.instances
    );
}

/// The clients that were on instance `name` moved to the others, and none missed or
/// repeated a tick.
fn assert_moved_off(followed: &[Followed], name: &str) {
    let moved: Vec<_> = followed.iter().filter(|f| f.instances[0] == name).collect();
    assert!(moved.len() >= 50, "{} clients were on {name}", moved.len());
    for f in followed {
        assert_no_gap_no_duplicate(f);
    }
    for f in moved {
        let back = f.instances[1..].iter().any(|i| i == name);
        assert!(f.instances.len() >= 2 && !back, "{:?}", f.instances);
    }
}

#[test]
#[ignore = "slow tier: needs haproxy (scripts/test.sh installs it)"]
fn instances_behind_a_balancer_send_the_same_bytes_for_every_tick() {
    let fleet = Fleet::start(&["a", "b", "c"]);
    let followed = followers(&fleet, 9, 3, || {});
    let mut by_instance = BTreeMap::new();
    for f in &followed {
        *by_instance.entry(f.instances[0].as_str()).or_insert(0) += 1;
        assert_no_gap_no_duplicate(f);
    }
    assert_eq!(
        by_instance.len(),
        3,
        "round robin over all three: {by_instance:?}"
    );
    // Each tick's sample, as every instance sent it: one text per tick.
    let mut texts: BTreeMap<u64, Vec<&String>> = BTreeMap::new();
    for f in &followed {
        for (seq, text) in &f.samples {
            texts.entry(*seq).or_default().push(text);
        }
    }
    for (seq, texts) in &texts {
        assert!(
            texts.windows(2).all(|w| w[0] == w[1]),
            "tick {seq}: {texts:#?}"
        );
    }
    assert!(texts.values().filter(|t| t.len() == followed.len()).count() >= 3);
}

#[test]
#[ignore = "slow tier: needs haproxy (scripts/test.sh installs it)"]
fn clients_of_a_killed_instance_resume_on_the_others_and_miss_nothing() {
    let fleet = Fleet::start(&["a", "b", "c"]);
    let followed = followers(&fleet, 300, 8, || fleet.signal("a", libc::SIGKILL));
    assert_moved_off(&followed, "a");
}

#[test]
#[ignore = "slow tier: needs haproxy (scripts/test.sh installs it)"]
fn clients_of_a_stopped_instance_move_with_its_hint_and_miss_nothing() {
    let fleet = Fleet::start(&["a", "b", "c"]);
    let direct = fleet.instances["b"].1;
    let followed = followers(&fleet, 300, 8, || {
        fleet.signal("b", libc::SIGTERM);
        // New clients meanwhile, every 2 ms: haproxy retries a refusal or a dropped
        // connection of the stopping instance on another one, before its next check.
        let refused: Vec<String> = (0..60)
            .filter_map(|_| {
                thread::sleep(Duration::from_millis(2));
                let url = format!("ws://{}/api/analytics", fleet.addr);
                let stream = TcpStream::connect(fleet.addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let request = url.into_client_request().unwrap();
                tungstenite::client(request, stream)
                    .err()
                    .map(|e| e.to_string())
            })
            .collect();
        assert!(refused.is_empty(), "while b stopped: {refused:?}");
        let not_ready = eventually(Duration::from_secs(2), || {
            status(direct, "/readyz").is_none_or(|s| s == 503)
        });
        assert!(not_ready, "an instance shutting down is not ready");
    });
    assert_moved_off(&followed, "b");
}
