//! Budgets over real sockets: long resumes and big histories, the heaviest requests a
//! client can make legitimately, cost memory in pieces whatever the clients do, and a
//! client that reads slowly gets its answer or a 503 that says when to retry.
#![cfg(target_os = "linux")] // RSS is read from /proc/self/status: the server runs in this process

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Every test here measures this process's RSS, or floods both cores: run together, they
/// would measure each other (one history test saw 44 MiB where it holds under 40, beside
/// a flood's clients). Each holds this guard throughout.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The seq of the latest sample.
fn latest(addr: SocketAddr) -> u64 {
    get(addr, "/api/analytics?seq=1").json()["seq"]
        .as_u64()
        .unwrap()
}

/// The worst resume: every field of the 10 000 samples a replay holds.
fn worst_resume(addr: SocketAddr) -> String {
    format!(
        "/api/analytics?since={}&fields=all&seq=1",
        latest(addr) - 9999
    )
}

/// The worst history: 9600 points of every field (4.4 MB).
const WORST_HISTORY: &str = "/api/analytics/history?last=4h&step=1500ms&fields=all&seq=1";

/// A client socket that takes almost nothing: a 4 KiB receive buffer, never read.
fn never_reading(addr: SocketAddr, request: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    (&stream).write_all(request.as_bytes()).unwrap();
    stream
}

/// The most this process's RSS rose above `before` over `window`.
fn peak_growth(before: usize, window: Duration) -> usize {
    let deadline = Instant::now() + window;
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(rss().saturating_sub(before));
        thread::sleep(Duration::from_millis(50));
    }
    peak
}

/// 40 WebSocket and 40 SSE clients resume 10 000 samples with every field and never read.
/// Each replay was assembled whole before it was written: 5.5 MiB a client, 273 MiB for
/// 50 WebSocket clients, 424 MiB for 60 SSE ones. Now a replay is encoded a sample at a
/// time as the client takes it, and long ones take turns.
#[test]
fn long_resumes_never_read_cost_bounded_memory() {
    let _one = one_at_a_time();
    let s = TestServer::start();
    let target = worst_resume(s.addr);
    let (threads, _) = threads_and_fds();
    let before = rss();
    let clients: Vec<TcpStream> = (0..80)
        .map(|i| {
            let head = if i % 2 == 0 {
                upgrade_request(s.addr, &target, HANDSHAKE)
            } else {
                format!("GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            };
            never_reading(s.addr, &head)
        })
        .collect();
    let grown = peak_growth(before, Duration::from_secs(4));
    assert_eq!(get(s.addr, "/healthz").status, 200);
    eprintln!(
        "80 never-read resumes of 10 000 samples: RSS +{} KiB",
        grown >> 10
    );
    assert!(grown < 40 << 20, "RSS grew {} MiB", grown >> 20);
    drop(clients);
    assert!(
        eventually(Duration::from_secs(30), || threads_and_fds().0
            <= threads + 2),
        "stream threads did not end: {:?} (baseline {threads})",
        threads_and_fds()
    );
}

/// A socket with a 4 KiB receive buffer, connected to `addr`.
fn small_receiver(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads a resume of 10 000 samples from `addr` through `next` (the next sample's seq),
/// slowly as it ends, up to well past the replay. Asserts every seq in order, once,
/// except those the server skipped because this slow reader had not taken the previous
/// one (the slow-consumer policy, counted in `/metrics`): never one lost otherwise.
fn read_slowly_to_the_end(addr: SocketAddr, since: u64, mut next: impl FnMut() -> u64) {
    let skipped = || {
        metric(addr, "analytics_ws_frames_skipped_total")
            + metric(addr, "analytics_sse_events_skipped_total")
    };
    let skipped_before = skipped();
    let latest = since + 9999;
    let mut expected = since + 1;
    let mut gaps = Vec::new();
    while expected <= latest + 30 {
        let got = next();
        assert!(
            got >= expected,
            "{got} again, or out of order, after {}",
            expected - 1
        );
        if got > expected {
            gaps.push(expected..got);
        }
        expected = got + 1;
        if expected + 200 > latest && expected < latest + 20 {
            thread::sleep(Duration::from_millis(20));
        }
    }
    let missing: u64 = gaps.iter().map(|g| g.end - g.start).sum();
    let skipped = skipped() - skipped_before;
    assert!(
        missing as f64 <= skipped,
        "missing {gaps:?} (replay to {latest}), of which {skipped} skipped for a slow reader; \
         {} samples missed in the hub",
        metric(addr, "analytics_samples_missed_total")
    );
}

/// A replay long enough that samples are published while it is written is followed by
/// those samples, then the live ones, with no gap. The client has a small receive buffer
/// and slows down as the replay ends, so the last of it waits in the server while ticks
/// pass. The replay checked for newer samples before its last bytes were written, and the
/// ticks published while they were found the stream's queue full of stale ones: lost
/// (over SSE, whose opening gathers up to a batch, in 2 runs of 4; over WebSocket when
/// the stream's thread was descheduled there, in 1 of ~50).
#[test]
fn a_long_resume_read_slowly_continues_without_a_gap() {
    let _one = one_at_a_time();
    let s = TestServer::with(|c| c.interval = Duration::from_millis(250));
    let since = latest(s.addr) - 9999;
    let target = format!("/api/analytics?since={since}&fields=all&seq=1");

    let url = format!("ws://{}{target}", s.addr);
    let (mut ws, _) = tungstenite::client(url, small_receiver(s.addr)).unwrap();
    assert_eq!(next_json(&mut ws)["type"], "welcome");
    read_slowly_to_the_end(s.addr, since, || {
        next_json(&mut ws)["seq"].as_u64().unwrap()
    });
    drop(ws);

    let since = latest(s.addr) - 9999;
    let target = format!("/api/analytics?since={since}&fields=all&seq=1");
    let stream = small_receiver(s.addr);
    write!(
        &stream,
        "GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    read_slowly_to_the_end(s.addr, since, || {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
            if let Some(id) = line.strip_prefix("id: ") {
                return id.trim().parse().unwrap();
            }
        }
    });
}

/// 60 clients ask the worst history and never read. Each history was built whole and
/// held: RSS rose 123-198 MiB where 64 MiB were promised. Now a history is produced a
/// piece at a time, and at most a few at once.
#[test]
fn big_histories_never_read_cost_bounded_memory() {
    let _one = one_at_a_time();
    let s = TestServer::start();
    let before = rss();
    let request = format!("GET {WORST_HISTORY} HTTP/1.1\r\nHost: x\r\n\r\n");
    let clients: Vec<TcpStream> = (0..60).map(|_| never_reading(s.addr, &request)).collect();
    let grown = peak_growth(before, Duration::from_secs(4));
    let asked = Instant::now();
    assert_eq!(get(s.addr, "/healthz").status, 200);
    assert!(asked.elapsed() < Duration::from_secs(1));
    eprintln!("60 never-read worst histories: RSS +{} KiB", grown >> 10);
    assert!(grown < 40 << 20, "RSS grew {} MiB", grown >> 20);
    drop(clients);
}

/// Honest slow readers of the worst history, on a small host (4 turns): each gets the
/// whole answer, or a 503 with `Retry-After`; never a connection closed without a status
/// (36 of 50 got that when the held bytes ran out).
#[test]
fn slow_readers_of_big_histories_get_the_answer_or_a_retry() {
    let _one = one_at_a_time();
    let s = TestServer::with(|c| c.cpu_budget = Some(0.05));
    let turns = s.server().budget().turns;
    let addr = s.addr;
    let readers: Vec<_> = (0..50)
        .map(|_| {
            thread::spawn(move || {
                let stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                write!(&stream, "GET {WORST_HISTORY} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let mut reader = BufReader::new(stream);
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0];
                    if reader.read(&mut byte).unwrap_or(0) == 0 {
                        return Err(format!("closed after {} bytes of head", head.len()));
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap_or_else(|| panic!("{head}"))
                    .parse()
                    .unwrap();
                // About 1.3 MB/s.
                let (mut got, mut chunk) = (0, vec![0; 64 << 10]);
                while got < len {
                    match reader.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                Ok((head, len, got))
            })
        })
        .collect();
    let mut answered = 0;
    for reader in readers {
        let (head, len, got) = reader.join().unwrap().unwrap();
        if head.starts_with("HTTP/1.1 200") {
            assert_eq!(got, len, "a 200 cut short");
            answered += 1;
        } else {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            assert!(head.contains("Retry-After: "), "{head}");
        }
    }
    assert!(answered >= turns.min(50), "only {answered} answered");
}

/// Clients that take the head of the worst history, then stop reading, hold no turn: a
/// turn is taken to encode a piece and given back before the piece is written. Turns were
/// held for the whole body: with 2 turns, the third and fourth such client waited 5 s for
/// a 503, and so did every other history and long resume.
#[test]
fn clients_that_stop_reading_hold_no_turns() {
    let _one = one_at_a_time();
    let s = TestServer::with(|c| c.cpu_budget = Some(0.01));
    assert_eq!(s.server().budget().turns, 4);
    let request = format!("GET {WORST_HISTORY} HTTP/1.1\r\nHost: x\r\n\r\n");
    let asked = Instant::now();
    let stalled: Vec<_> = (0..4)
        .map(|_| {
            let stream = never_reading(s.addr, &request);
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut head = [0; 12];
            (&stream).read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
            stream
        })
        .collect();
    let r = get(s.addr, "/api/analytics/history?last=1h&fields=all");
    assert_eq!(r.status, 200, "{}", r.text());
    let (mut ws, _) = ws_connect(s.addr, &worst_resume(s.addr));
    let first = next_json(&mut ws);
    assert!(first["seq"].is_u64(), "the resume's first sample: {first}");
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "answered after {:?}: a turn was waited for",
        asked.elapsed()
    );
    drop(stalled);
}

/// A resume that missed nothing (`since` is the latest sample) replays nothing: the
/// welcome, with no `replay`, then the stream stays open for the next sample.
#[test]
fn a_resume_that_missed_nothing_stays_open() {
    let _one = one_at_a_time();
    let s = TestServer::with(|c| c.interval = Duration::from_secs(60));
    let latest = latest(s.addr);
    let (mut ws, welcome) = ws_connect(s.addr, &format!("/api/analytics?since={latest}"));
    assert!(welcome.get("replay").is_none(), "{welcome}");
    assert!(welcome.get("resume_ignored").is_none(), "{welcome}");
    ws.send(tungstenite::Message::Ping("still there".into()))
        .unwrap();
    match ws.read().expect("the stream stays open") {
        tungstenite::Message::Pong(p) => assert_eq!(&p[..], b"still there"),
        other => panic!("nothing was missed, yet {other:?} came"),
    }
}

/// Streams at their worst: each client parks an unfinished message of nearly the 16 KiB
/// a message may have (the server must hold it to see whether it ends). What they cost
/// stays within the stream's share of the budget (`budget::STREAM_COST`, which adds the
/// kernel's socket buffers to this).
#[test]
fn streams_that_park_unfinished_messages_stay_within_their_cost() {
    let _one = one_at_a_time();
    use realtime_analytics_backend::budget::STREAM_COST;
    let s = TestServer::start();
    let (threads, _) = threads_and_fds();
    let before = rss();
    // Two fragments of 8000 bytes and most of a third: masked text, no FIN.
    let fragment = |opcode: u8, len: usize| {
        let mut frame = vec![opcode, 0x80 | 126, (len >> 8) as u8, len as u8, 0, 0, 0, 0];
        frame.extend(std::iter::repeat_n(b'a', len));
        frame
    };
    let mut payload = fragment(0x1, 8000);
    payload.extend(fragment(0x0, 8000));
    payload.extend(&fragment(0x0, 300)[..200]);
    let clients: Vec<TcpStream> = (0..200)
        .map(|_| {
            let (stream, _reader) = raw_upgrade(s.addr, "/api/analytics");
            (&stream).write_all(&payload).unwrap();
            stream
        })
        .collect();
    let grown = peak_growth(before, Duration::from_secs(2));
    let each = grown / clients.len();
    eprintln!(
        "200 streams, each parking 16 KB: RSS +{} KiB a stream",
        each >> 10
    );
    // The kernel's part (send and receive buffers, doubled) is not in RSS. A debug
    // build's frames are larger: there, RSS alone is held to the whole cost.
    let kernel = if cfg!(debug_assertions) { 0 } else { 24 << 10 };
    assert!(
        (each as u64) < STREAM_COST - kernel,
        "{each} bytes a stream"
    );
    drop(clients);
    assert!(eventually(Duration::from_secs(10), || threads_and_fds().0
        <= threads + 2));
}

/// A cgroup of this test's own whose processes get `quota` of CPU every 100 ms (cgroup v2
/// `cpu.max`, else v1 `cpu.cfs_quota_us`): a small host's fraction of a core. Needs root,
/// or a cgroup delegated to the user; removed on drop.
struct CpuLimit(std::path::PathBuf);

impl CpuLimit {
    fn new(name: &str, quota: Duration) -> CpuLimit {
        let quota = quota.as_micros();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        // "... MOUNT_POINT OPTIONS - TYPE SOURCE SUPER_OPTIONS" per mount.
        let mount = |fs: &str, option: Option<&str>| {
            mountinfo.lines().find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let mut right = right.split_whitespace();
                let (kind, _, options) = (right.next()?, right.next()?, right.next()?);
                let fits = kind == fs && option.is_none_or(|o| options.split(',').any(|x| x == o));
                fits.then(|| left.split_whitespace().nth(4).unwrap().to_string())
            })
        };
        // v2 where its hierarchy has the cpu controller (not where v1 holds it).
        let v2 = mount("cgroup2", None).and_then(|root| {
            let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
            let parent = std::path::Path::new(&root).join(path.trim_start_matches('/'));
            let controllers = std::fs::read_to_string(parent.join("cgroup.controllers")).ok()?;
            controllers
                .split_whitespace()
                .any(|c| c == "cpu")
                .then_some(parent)
        });
        let (dir, file, value) = if let Some(parent) = v2 {
            let control = parent.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "cpu") {
                std::fs::write(&control, "+cpu").unwrap_or_else(|e| {
                    panic!("cannot enable the cpu controller in {control:?}: {e}; run as root")
                });
            }
            (parent.join(name), "cpu.max", format!("{quota} 100000"))
        } else {
            let root = mount("cgroup", Some("cpu")).expect("a cgroup v2 or v1 cpu hierarchy");
            let path = own
                .lines()
                .find_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                    controllers.split(',').any(|c| c == "cpu").then_some(path)
                })
                .unwrap();
            let dir = std::path::Path::new(&root)
                .join(path.trim_start_matches('/'))
                .join(name);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot create the cgroup {dir:?}: {e}; run as root"));
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
            (dir, "cpu.cfs_quota_us", quota.to_string())
        };
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create the cgroup {dir:?}: {e}; run as root"));
        std::fs::write(dir.join(file), value).unwrap();
        CpuLimit(dir)
    }

    fn procs(&self) -> std::path::PathBuf {
        self.0.join("cgroup.procs")
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // The kernel refuses while a process in it has not been reaped.
        eventually(TIMEOUT, || std::fs::remove_dir(&self.0).is_ok());
    }
}

/// Reads one response and returns its status; `None` if the connection ended first.
fn status_of(reader: &mut impl std::io::BufRead) -> Option<u16> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut len = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(value) = header.strip_prefix("content-length:") {
            len = value.trim().parse().ok()?;
        }
    }
    reader.read_exact(&mut vec![0; len]).ok()?;
    Some(status)
}

/// Starts a server in a cpu cgroup of a tenth of a core, runs `flood` on 300 threads
/// (each gets the address, the flood's request and a flag that says stop) for 2 s, then
/// sends a health check every 200 ms for 10 s: their statuses, how long each took, and
/// the error of those refused.
fn health_checks_at_a_tenth_of_a_core(
    name: &str,
    request: impl Fn(SocketAddr) -> String,
    flood: fn(SocketAddr, &[u8], &AtomicBool),
) -> Vec<(u16, Duration, String)> {
    let limit = CpuLimit::new(
        &format!("rab-{name}-{}", std::process::id()),
        Duration::from_millis(10),
    );
    let p = Process::spawn_in(
        &limit.procs(),
        &[
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("MEMORY_BUDGET", "512M"),
        ],
    );
    let addr = p.wait_until_listening();
    let limits = p.wait_for_line("limits:");
    assert!(limits.contains("0.1 CPU, 6 turns"), "{limits}");
    let request = Arc::new(request(addr));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..300)
        .map(|_| {
            let (request, stop) = (Arc::clone(&request), Arc::clone(&stop));
            thread::spawn(move || flood(addr, request.as_bytes(), &stop))
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let mut probes = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let asked = Instant::now();
        let answer = send_raw(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let took = asked.elapsed();
        let error = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .map_or(String::new(), |body| body["error"].to_string());
        probes.push((answer.status, took, error));
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let slowest = probes.iter().map(|&(_, took, _)| took).max().unwrap();
    eprintln!("{} health checks, the slowest {slowest:?}", probes.len());
    probes
}

/// On a tenth of a core (Render's smallest instances) with 300 connections looping
/// requests (short histories), health checks are answered within a second: every
/// request but a probe's is worked on under one of a few turns, so a probe waits
/// behind a few requests, not behind the flood's hundreds.
#[test]
#[ignore = "slow tier: floods a server in a cpu cgroup for 12 s; needs root; scripts/test.sh runs it"]
fn a_tenth_of_a_core_flooded_with_requests_answers_health_checks() {
    let _one = one_at_a_time();
    let probes = health_checks_at_a_tenth_of_a_core(
        "requests",
        |_| "GET /api/analytics/history?last=6m HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        |addr, request, stop| {
            while !stop.load(Ordering::Relaxed) {
                let Ok(stream) = TcpStream::connect(addr) else {
                    continue;
                };
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                while !stop.load(Ordering::Relaxed)
                    && (&stream).write_all(request).is_ok()
                    && status_of(&mut reader) == Some(200)
                {}
                thread::sleep(Duration::from_millis(50));
            }
        },
    );
    assert!(
        probes
            .iter()
            .all(|(status, took, _)| *status == 200 && *took < Duration::from_secs(1)),
        "health checks: {probes:?}"
    );
}

/// On a tenth of a core, 300 WebSocket clients resume the longest replay with every field,
/// read its first 256 KiB and stop reading: hundreds of stream threads are runnable at
/// once, encoding and writing. Health checks are still answered within Render's 5 s,
/// and at most half say `stale`: stream threads run below the generator, accept and
/// the probes (nice 19 on Linux), but nice is a weight, and hundreds of runnable stream
/// threads can still make the generator late by a tick or two (docs/limits.md).
#[test]
#[ignore = "slow tier: floods a server in a cpu cgroup for 12 s; needs root; scripts/test.sh runs it"]
fn a_tenth_of_a_core_with_hundreds_of_stalled_resumes_answers_health_checks() {
    let _one = one_at_a_time();
    let probes = health_checks_at_a_tenth_of_a_core(
        "resumes",
        |addr| upgrade_request(addr, &worst_resume(addr), HANDSHAKE),
        |addr, request, stop| {
            let stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            (&stream).write_all(request).unwrap();
            // Takes the first 256 KiB, as a dashboard that stalls would, then stops reading.
            let _ = (&stream).take(256 << 10).read_to_end(&mut Vec::new());
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
            }
        },
    );
    let stale = probes
        .iter()
        .filter(|(.., error)| error == "\"stale\"")
        .count();
    assert!(
        probes.iter().all(|(status, took, error)| {
            (*status == 200 || error == "\"stale\"") && *took < Duration::from_secs(5)
        }) && stale * 2 <= probes.len(),
        "health checks: {probes:?}"
    );
}

/// On a tenth of a core, 300 sockets connect, say nothing and reconnect the moment they
/// are closed: they fill `MAX_HTTP_CONNECTIONS` (287) and the probes' places, and the
/// rest keep evicting each other from those. Health checks are still answered: half the
/// room for evicted connections that are still closing is kept for newcomers that sent
/// a probe's whole head. Some may still get the cap's 503, as a probe accepted before
/// its head arrived looks like a squatter (docs/limits.md): at most one in five, where
/// a third did while squatters could fill that room.
#[test]
#[ignore = "slow tier: floods a server in a cpu cgroup for 12 s; needs root; scripts/test.sh runs it"]
fn a_tenth_of_a_core_with_silent_sockets_reconnecting_answers_health_checks() {
    let _one = one_at_a_time();
    let probes = health_checks_at_a_tenth_of_a_core(
        "squatters",
        |_| String::new(),
        |addr, _, stop| {
            while !stop.load(Ordering::Relaxed) {
                let Ok(idle) = TcpStream::connect(addr) else {
                    continue;
                };
                idle.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                while !stop.load(Ordering::Relaxed)
                    && matches!((&idle).read(&mut [0; 512]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                {}
            }
        },
    );
    let refused = probes.iter().filter(|(status, ..)| *status != 200).count();
    assert!(
        refused * 5 <= probes.len()
            && probes
                .iter()
                .all(|(_, took, _)| *took < Duration::from_secs(3)),
        "health checks: {probes:?}"
    );
}
