//! Several instances behind a real load balancer: Debian's haproxy, configured as the
//! README's "Running several instances" shows, in front of three instances of the built
//! binary, and in live mode Debian's redis-server behind them, every one a process on
//! loopback. Nothing is mocked.
//!
//! The slow tier (`#[ignore]`): `scripts/test.sh` runs it, and installs haproxy and
//! redis-server first. Without them these tests fail, saying how to install them.
#![cfg(unix)] // instances are stopped with kill(2); Windows has no signals to send

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
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

/// A free port on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// A program Debian installs in /usr/sbin or /usr/bin, on no user's PATH but root's.
fn debian_program(name: &str) -> String {
    [
        name.to_string(),
        format!("/usr/sbin/{name}"),
        format!("/usr/bin/{name}"),
    ]
    .into_iter()
    .find(|p| Command::new(p).arg("-v").output().is_ok())
    .unwrap_or_else(|| name.to_string())
}

/// Debian's redis-server on loopback, saving its data in a directory of its own when
/// stopped, so that a restart finds it; stopped on drop.
struct Redis {
    server: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            server: None,
            port,
            dir,
        };
        redis.run();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let server = Command::new(debian_program("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "3600 1", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "redis-server does not start ({e}): apt-get install redis-server, as \
                     scripts/test.sh does"
                )
            });
        self.server = Some(server);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let up = eventually(Duration::from_secs(10), || {
            TcpStream::connect(addr).is_ok_and(|mut s| {
                let mut pong = [0; 7];
                s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut pong).is_ok()
                    && &pong == b"+PONG\r\n"
            })
        });
        assert!(up, "redis-server did not answer on port {}", self.port);
    }

    /// Stops it as its service manager would (SIGTERM: it saves its data, then exits).
    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SAFETY: kill takes and returns integers only.
            unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
            let _ = server.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a live instance of these tests is started with, besides its name.
fn live_env(redis: &Redis) -> [(&'static str, String); 5] {
    [
        ("MODE", "live".to_string()),
        ("SITES", "fleet.example".into()),
        ("REDIS_URL", redis.url()),
        ("TRUSTED_PROXY_HOPS", "1".into()),
        ("INTERVAL_MS", "500".into()),
    ]
}

/// Instances a, b and c in live mode, their state in `redis`, behind haproxy.
fn live_fleet(redis: &Redis) -> Fleet {
    Fleet::start_with(&["a", "b", "c"], &live_env(redis))
}

impl Fleet {
    /// Three instances named `names`, in sim mode.
    fn start(names: &[&str]) -> Fleet {
        Fleet::start_with(names, &[])
    }

    /// Three instances named `names`, each also started with `env`.
    fn start_with(names: &[&str], env: &[(&str, String)]) -> Fleet {
        let mut instances = BTreeMap::new();
        let mut servers = Vec::new();
        for name in names {
            let mut vars = vec![("HOST", "127.0.0.1"), ("PORT", "0"), ("INSTANCE", name)];
            vars.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
            let p = Process::spawn(&vars);
            let addr = p.wait_until_listening();
            servers.push((name.to_string(), addr));
            instances.insert(name.to_string(), (p, addr));
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("fleet-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(port, &servers)).unwrap();
        let haproxy = Command::new(debian_program("haproxy"))
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
        // A test failed: what the instances logged beyond info says why.
        if thread::panicking() {
            for (name, (p, _)) in &mut self.instances {
                p.signal(libc::SIGKILL);
                p.wait_exit();
                for line in p.rest_of_log() {
                    if line.contains("[WARN]") || line.contains("[ERROR]") {
                        eprintln!("{name}: {line}");
                    }
                }
            }
        }
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The README's haproxy configuration, listening on `port`, with the addresses of
/// `servers` in place of its three (127.0.0.1:4001 to 4003, in order).
fn haproxy_config(port: u16, servers: &[(String, SocketAddr)]) -> String {
    let readme = include_str!("../README.md");
    let block = readme
        .split("<!-- haproxy -->\n```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the README shows haproxy's configuration after <!-- haproxy -->");
    assert_eq!(
        servers.len(),
        3,
        "the README's configuration names three instances"
    );
    let readme_servers: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:400{i}")).collect();
    let mut config = String::new();
    for line in block.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        // Whole addresses, each line once: a port put in may begin as the README's do.
        let server = servers
            .iter()
            .zip(&readme_servers)
            .find(|(_, readme)| words.contains(&readme.as_str()));
        let line = match (words.first(), server) {
            (Some(&"bind"), _) => format!("    bind 127.0.0.1:{port}"),
            (_, Some(((_, addr), readme))) => line.replacen(readme, &addr.to_string(), 1),
            _ => line.to_string(),
        };
        config.push_str(&line);
        config.push('\n');
    }
    config
}

#[test]
fn the_readmes_haproxy_configuration_takes_any_ports() {
    // Ephemeral ports that begin as the README's do, or as another's.
    let servers: Vec<(String, SocketAddr)> = [40021, 40083, 4003]
        .iter()
        .zip(["a", "b", "c"])
        .map(|(port, name)| (name.to_string(), SocketAddr::from(([127, 0, 0, 1], *port))))
        .collect();
    let config = haproxy_config(40012, &servers);
    let servers: Vec<&str> = config
        .lines()
        .filter_map(|line| line.trim().strip_prefix("server "))
        .map(|server| server.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        servers,
        ["127.0.0.1:40021", "127.0.0.1:40083", "127.0.0.1:4003"].repeat(2),
        "{config}"
    );
    assert!(config.contains("\n    bind 127.0.0.1:40012\n"), "{config}");
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
    /// The tick it follows the stream until.
    until: u64,
    /// Counts the followers that received a first welcome.
    connected: Arc<AtomicUsize>,
}

impl Followed {
    /// Records a connection's welcome.
    fn welcome(&mut self, text: &str) {
        if self.instances.is_empty() {
            self.connected.fetch_add(1, Ordering::Relaxed);
        }
        let v: Value = serde_json::from_str(text).unwrap();
        self.instances
            .push(v["instance"].as_str().unwrap().to_string());
    }

    /// Records a sample as sent; true once it is tick `until` or later.
    fn sample(&mut self, text: &str) -> bool {
        let v: Value = serde_json::from_str(text).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        self.seqs.push(seq);
        self.samples.insert(seq, text.to_string());
        seq >= self.until
    }
}

/// Follows `/api/analytics?seq=1{query}` through the balancer at `addr` until tick
/// `until`, one connection at a time by `over` ([`over_websocket`] or [`over_sse`]),
/// each resuming from the last seq received. Between them it waits what `over` says, or
/// a tenth of a second after a refused connection.
fn follow(
    addr: SocketAddr,
    over: fn(TcpStream, &str, &mut Followed) -> Result<(), Duration>,
    query: &str,
    until: u64,
    connected: Arc<AtomicUsize>,
) -> Followed {
    let mut got = Followed {
        until,
        connected,
        ..Followed::default()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "did not reach tick {until}");
        let wait = match TcpStream::connect(addr) {
            Ok(stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                match over(stream, query, &mut got) {
                    Ok(()) => return got,
                    Err(wait) => wait,
                }
            }
            Err(_) => Duration::from_millis(100),
        };
        thread::sleep(wait);
    }
}

/// One WebSocket connection, with `since=`: `Ok` once tick `until` came, else the time
/// to wait before the next (a close's `reconnect_after_ms`, or a tenth of a second).
fn over_websocket(stream: TcpStream, query: &str, got: &mut Followed) -> Result<(), Duration> {
    let mut wait = Duration::from_millis(100);
    let since = got
        .seqs
        .last()
        .map_or(String::new(), |s| format!("&since={s}"));
    let url = format!("ws://fleet/api/analytics?seq=1{query}{since}");
    let (mut ws, _) =
        tungstenite::client(url.into_client_request().unwrap(), stream).map_err(|_| wait)?;
    loop {
        match ws.read() {
            Ok(Message::Text(text)) if text.contains(r#""type":"welcome""#) => got.welcome(&text),
            Ok(Message::Text(text)) => {
                if got.sample(&text) {
                    return Ok(());
                }
            }
            Ok(Message::Close(frame)) => {
                let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                let hint: Value = serde_json::from_str(&reason).unwrap_or_default();
                if let Some(ms) = hint["reconnect_after_ms"].as_u64() {
                    wait = Duration::from_millis(ms);
                }
                return Err(wait);
            }
            Ok(_) => {}
            Err(_) => return Err(wait),
        }
    }
}

/// One Server-Sent Events connection, with `Last-Event-ID`: `Ok` once tick `until` came,
/// else the time to wait before the next (the last `retry:`, which a close sets to its
/// reconnect delay, or a tenth of a second).
fn over_sse(mut stream: TcpStream, query: &str, got: &mut Followed) -> Result<(), Duration> {
    let mut wait = Duration::from_millis(100);
    let resume = got
        .seqs
        .last()
        .map_or(String::new(), |s| format!("Last-Event-ID: {s}\r\n"));
    let request = format!(
        "GET /api/analytics?seq=1{query} HTTP/1.1\r\nHost: fleet\r\n\
         Accept: text/event-stream\r\n{resume}\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(|_| wait)?;
    let mut event = String::new();
    for line in std::io::BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if let Some(ms) = line.strip_prefix("retry: ") {
            wait = Duration::from_millis(ms.parse().unwrap());
        } else if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            match event.as_str() {
                "welcome" => got.welcome(data),
                "sample" if got.sample(data) => return Ok(()),
                _ => {}
            }
        }
    }
    Err(wait)
}

/// The latest tick, from any instance.
fn latest(addr: SocketAddr) -> u64 {
    common::get(addr, "/api/analytics?seq=1").json()["seq"]
        .as_u64()
        .unwrap()
}

/// `clients` followers of the fleet until `ticks` after the latest, one in three over
/// SSE; `during` runs once they are all connected.
fn followers(fleet: &Fleet, clients: usize, ticks: u64, during: impl FnOnce()) -> Vec<Followed> {
    let until = latest(fleet.addr) + ticks;
    let connected = Arc::new(AtomicUsize::new(0));
    let addr = fleet.addr;
    // Every third over Server-Sent Events.
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let connected = Arc::clone(&connected);
            let over = if i % 3 == 2 { over_sse } else { over_websocket };
            thread::spawn(move || follow(addr, over, "&fields=all", until, connected))
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
    assert_same_bytes(&followed, 0);
}

/// Every tick from `from` on, as every client received it: the same text.
fn assert_same_bytes(followed: &[Followed], from: u64) {
    let mut texts: BTreeMap<u64, Vec<&String>> = BTreeMap::new();
    for f in followed {
        for (seq, text) in f.samples.range(from..) {
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
    stop_one_with_300_clients(&Fleet::start(&["a", "b", "c"]));
}

/// SIGTERM to instance b while 300 clients follow the fleet and new ones connect: they
/// all get through, b says it is not ready, its clients move and miss nothing.
fn stop_one_with_300_clients(fleet: &Fleet) -> Vec<Followed> {
    let direct = fleet.instances["b"].1;
    let followed = followers(fleet, 300, 8, || {
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
    followed
}

/// A page view of `path` on fleet.example from visitor `n` (its User-Agent names it),
/// posted to `addr`: the answer's status and body.
fn page_view(addr: SocketAddr, n: usize, path: &str) -> (u16, Value) {
    let body =
        format!(r#"{{"n":"pageview","u":"https://fleet.example{path}","d":"fleet.example"}}"#);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /api/event HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0 visitor-{n}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status.unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Posts a page view of `path` for each visitor in `visitors` through the fleet, and
/// asserts each answer.
fn page_views(fleet: &Fleet, visitors: std::ops::Range<usize>, path: &str, reason: Option<&str>) {
    for n in visitors {
        let (status, body) = page_view(fleet.addr, n, path);
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["counted"], reason.is_none(), "{body}");
        assert_eq!(body["reason"].as_str(), reason, "{body}");
    }
}

/// The page views a client received over the ticks it followed.
fn views(f: &Followed) -> u64 {
    f.samples
        .values()
        .map(|t| {
            serde_json::from_str::<Value>(t).unwrap()["page_views"]
                .as_u64()
                .unwrap()
        })
        .sum()
}

/// The last sample a client received.
fn last(f: &Followed) -> Value {
    serde_json::from_str(f.samples.values().last().unwrap()).unwrap()
}

#[test]
#[ignore = "slow tier: needs haproxy and redis-server (scripts/test.sh installs them)"]
fn live_instances_count_each_event_once_and_send_the_same_bytes() {
    let redis = Redis::start();
    let fleet = live_fleet(&redis);
    let followed = followers(&fleet, 9, 8, || {
        page_views(&fleet, 0..30, "/", None);
        page_views(&fleet, 0..30, "/pricing", None);
    });
    let mut on = BTreeMap::new();
    for f in &followed {
        *on.entry(f.instances[0].as_str()).or_insert(0) += 1;
        assert_no_gap_no_duplicate(f);
        assert_eq!(views(f), 60, "via {:?}", f.instances);
        assert_eq!(last(f)["active_users"], 30, "via {:?}", f.instances);
    }
    assert_eq!(on.len(), 3, "round robin over all three: {on:?}");
    assert_same_bytes(&followed, 0);
}

#[test]
#[ignore = "slow tier: needs haproxy and redis-server (scripts/test.sh installs them)"]
fn live_clients_of_a_killed_instance_resume_on_the_others_and_miss_nothing() {
    let redis = Redis::start();
    let fleet = live_fleet(&redis);
    let followed = followers(&fleet, 300, 12, || {
        page_views(&fleet, 0..20, "/", None);
        fleet.signal("a", libc::SIGKILL);
        page_views(&fleet, 20..40, "/", None);
    });
    assert_moved_off(&followed, "a");
    assert_same_bytes(&followed, 0);
    for f in &followed {
        assert_eq!(views(f), 40, "via {:?}", f.instances);
    }
}

#[test]
#[ignore = "slow tier: needs haproxy and redis-server (scripts/test.sh installs them)"]
fn live_clients_of_a_stopped_instance_move_with_its_hint_and_miss_nothing() {
    let redis = Redis::start();
    let followed = stop_one_with_300_clients(&live_fleet(&redis));
    assert_same_bytes(&followed, 0);
}

/// Redis stops for 10 s: every instance says it is not ready and stays healthy, streams
/// go on with stale samples, events wait in the instances; once Redis is back, every
/// event is counted and the instances agree again.
#[test]
#[ignore = "slow tier: needs haproxy and redis-server (scripts/test.sh installs them)"]
fn redis_stopped_for_10_s_stalls_no_stream_and_loses_no_event() {
    let mut redis = Redis::start();
    let mut fleet = live_fleet(&redis);
    let direct: Vec<SocketAddr> = fleet.instances.values().map(|(_, addr)| *addr).collect();
    let all = |path: &str, want: u16| direct.iter().all(|&a| status(a, path) == Some(want));
    let mut agreed = 0;
    let followed = followers(&fleet, 9, 50, || {
        page_views(&fleet, 0..10, "/before", None);
        redis.stop();
        let stopped = Instant::now();
        assert!(
            eventually(Duration::from_secs(5), || all("/readyz", 503)),
            "every instance says it is not ready"
        );
        assert!(all("/healthz", 200), "and healthy");
        // haproxy has no instance ready: it sends clients to them anyway (the backups).
        page_views(&fleet, 10..30, "/during", Some("buffered"));
        thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
        redis.run();
        assert!(
            eventually(Duration::from_secs(10), || all("/readyz", 200)),
            "every instance is ready again"
        );
        agreed = latest(fleet.addr) + 2;
    });
    for f in &followed {
        assert_no_gap_no_duplicate(f);
        assert_eq!(f.instances.len(), 1, "never reconnected: {:?}", f.instances);
        let stale = f
            .samples
            .values()
            .filter(|t| t.contains(r#""stale":true"#))
            .count();
        assert!(stale >= 10, "{stale} stale samples via {:?}", f.instances);
        assert_eq!(views(f), 30, "via {:?}", f.instances);
        assert_eq!(last(f)["active_users"], 30, "via {:?}", f.instances);
    }
    assert_same_bytes(&followed, agreed);
    for addr in direct {
        assert_eq!(common::metric(addr, "analytics_live_buffered_events"), 0.0);
        assert!(common::metric(addr, "analytics_live_stale_ticks_total") >= 10.0);
    }
    // The outage is logged once by each instance, and so is its end; not each of
    // haproxy's health checks it failed (one a second).
    for (name, (p, _)) in &mut fleet.instances {
        p.signal(libc::SIGTERM);
        p.wait_exit();
        let log = p.rest_of_log();
        let count = |what: &str| log.iter().filter(|l| l.contains(what)).count();
        assert_eq!(
            (count("Redis failed ("), count("Redis answers again: ")),
            (1, 1),
            "{name}: {log:#?}"
        );
        assert_eq!(count("/readyz ->"), 0, "{name}: {log:#?}");
    }
}

/// An instance started once the others have counted events serves the same history,
/// byte for byte: it loads the fleet's.
#[test]
#[ignore = "slow tier: needs haproxy and redis-server (scripts/test.sh installs them)"]
fn a_late_instance_serves_the_fleets_history() {
    let redis = Redis::start();
    let fleet = live_fleet(&redis);
    let first = latest(fleet.addr);
    page_views(&fleet, 0..10, "/", None);
    assert!(eventually(Duration::from_secs(10), || latest(fleet.addr) >= first + 4));
    let last = latest(fleet.addr);
    let mut env = vec![("HOST", "127.0.0.1"), ("PORT", "0"), ("INSTANCE", "late")];
    let vars = live_env(&redis);
    env.extend(vars.iter().map(|(k, v)| (*k, v.as_str())));
    let process = Process::spawn(&env);
    let late = process.wait_until_listening();
    let history = format!(
        "/api/analytics/history?from={}&to={}&fields=all&seq=1",
        (first - 4) * 500,
        last * 500
    );
    let theirs = common::get(fleet.instances["a"].1, &history);
    let ours = common::get(late, &history);
    assert_eq!((theirs.status, ours.status), (200, 200));
    assert_eq!(theirs.text(), ours.text());
    let views: u64 = ours.json()["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["page_views"].as_u64().unwrap())
        .sum();
    assert_eq!(views, 10, "{}", ours.text());
}
