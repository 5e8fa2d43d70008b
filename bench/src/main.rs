//! `loadgen`: many WebSocket clients from one thread, for the benchmarks and the soak test.
//!
//! One mio event loop drives every client over raw sockets: it writes the upgrade request,
//! checks the 101, and parses the server's (unmasked) frames itself. One thread for all
//! clients keeps the load generator's own CPU low, so it disturbs the server it measures
//! as little as possible on a small machine.
//!
//! It records, per tick, when the first and the last client received that tick's sample
//! (fan-out spread), and per client the gaps between consecutive samples' timestamps
//! (samples lost) and how far each arrival is from one interval after the previous one
//! (jitter). With `--churn`, clients leave and new ones join every second, half with a
//! close frame and half by dropping the connection. A client whose upgrade is refused
//! (a 503 while a cap is full, say) tries again a second later, as a dashboard does, so
//! the number of clients holds.
//!
//! ```text
//! loadgen --url ws://127.0.0.1:4000/api/analytics --clients 1000 --seconds 60 [--ramp 1000] [--churn 10]
//! loadgen startup --port 4000 --log server.log -- COMMAND ARGS...
//! ```
//! The first form prints one JSON object on stdout. `startup` starts COMMAND (which must
//! listen on `--port`), polls `GET /api/analytics` every millisecond until it answers 200,
//! and prints `{"pid": ..., "first_answer_ms": ...}`, leaving the server running.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;

struct Args {
    addr: SocketAddr,
    host: String,
    path: String,
    clients: usize,
    seconds: f64,
    ramp: f64,
    churn: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut url = "ws://127.0.0.1:4000/api/analytics".to_string();
    let (mut clients, mut seconds, mut ramp, mut churn) = (100, 20.0, 1000.0, 0);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--url" => url = value,
            "--clients" => clients = number(&value)? as usize,
            "--seconds" => seconds = number(&value)?,
            "--ramp" => ramp = number(&value)?,
            "--churn" => churn = number(&value)? as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let rest = url
        .strip_prefix("ws://")
        .ok_or("only ws:// URLs are supported")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or(format!("{host}: no address"))?;
    Ok(Args {
        addr,
        host: host.to_string(),
        path: if path.is_empty() { "/" } else { path }.to_string(),
        clients,
        seconds,
        ramp,
        churn,
    })
}

enum State {
    Handshake(Vec<u8>),
    Open,
}

struct Client {
    stream: TcpStream,
    state: State,
    buf: Vec<u8>,
    last_ts: Option<i64>,
    last_arrival: Option<Instant>,
    /// The last sample was a broadcast, not the one sent on connect.
    live: bool,
}

#[derive(Default)]
struct Stats {
    interval_ms: i64,
    connected: u64,
    refused: BTreeMap<String, u64>,
    received: u64,
    lost: u64,
    duplicates: u64,
    closes: BTreeMap<String, u64>,
    /// Tick timestamp -> (first arrival, last arrival, clients).
    ticks: HashMap<i64, (Instant, Instant, u32)>,
    jitter_us: Vec<u64>,
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("startup") {
        match startup(std::env::args().skip(2).collect()) {
            Ok(report) => println!("{report}"),
            Err(e) => {
                eprintln!("loadgen startup: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let report = run(&args);
    println!("{report}");
}

/// Starts a server and measures the time to its first successful answer.
fn startup(args: Vec<String>) -> Result<serde_json::Value, String> {
    let split = args
        .iter()
        .position(|a| a == "--")
        .ok_or("usage: startup --port N --log FILE -- CMD")?;
    let (flags, command) = (&args[..split], &args[split + 1..]);
    let flag = |name: &str| {
        flags
            .iter()
            .position(|f| f == name)
            .and_then(|i| flags.get(i + 1))
            .ok_or(format!("{name} is required"))
    };
    let port: u16 = flag("--port")?.parse().map_err(|_| "--port: not a port")?;
    let log = std::fs::File::create(flag("--log")?).map_err(|e| e.to_string())?;
    let (program, rest) = command.split_first().ok_or("no command")?;
    let started = Instant::now();
    let child = std::process::Command::new(program)
        .args(rest)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while started.elapsed() < Duration::from_secs(10) {
        if answers(addr) {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            return Ok(json!({ "pid": child.id(), "first_answer_ms": ms }));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(format!("no answer from {addr} within 10 s"))
}

fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let request = b"GET /api/analytics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let mut head = [0u8; 12];
    s.write_all(request).is_ok() && s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

fn run(args: &Args) -> serde_json::Value {
    let mut poll = Poll::new().expect("epoll");
    let mut events = Events::with_capacity(1024);
    let mut clients: Vec<Option<Client>> = Vec::new();
    // Servers that do not announce their interval in the welcome (the Node original) tick
    // every 1.5 s.
    let mut stats = Stats {
        interval_ms: 1500,
        ..Stats::default()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        args.path, args.host
    );
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.seconds);
    let mut opened = 0usize;
    let mut next_churn = started + Duration::from_secs(1);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut all_open_at: Option<Instant> = None;
    let mut retries: Vec<Instant> = Vec::new();

    while Instant::now() < end {
        // Ramp: open clients at `ramp` per second until `clients` are open.
        let due = ((started.elapsed().as_secs_f64() * args.ramp) as usize).min(args.clients);
        while opened < due {
            match connect(&poll, &mut clients, args.addr, &request) {
                Ok(()) => {}
                Err(e) => *stats.refused.entry(format!("connect: {e}")).or_default() += 1,
            }
            opened += 1;
        }
        let now = Instant::now();
        for _ in retries.extract_if(.., |due| *due <= now) {
            if let Err(e) = connect(&poll, &mut clients, args.addr, &request) {
                *stats.refused.entry(format!("connect: {e}")).or_default() += 1;
            }
        }
        if all_open_at.is_none() && opened == args.clients {
            all_open_at = Some(Instant::now());
        }
        if args.churn > 0 && Instant::now() >= next_churn {
            next_churn += Duration::from_secs(1);
            for _ in 0..args.churn {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng % clients.len().max(1) as u64) as usize;
                if let Some(mut c) = clients.get_mut(i).and_then(Option::take) {
                    if rng.is_multiple_of(2) {
                        // A masked close frame with code 1000 and no payload beyond it.
                        let _ = c.stream.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
                    }
                    let _ = poll.registry().deregister(&mut c.stream);
                    *stats.closes.entry("client_churn".into()).or_default() += 1;
                    let _ = connect(&poll, &mut clients, args.addr, &request);
                }
            }
        }
        let wait = end
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(20));
        if let Err(e) = poll.poll(&mut events, Some(wait))
            && e.kind() != io::ErrorKind::Interrupted
        {
            panic!("poll: {e}");
        }
        for event in &events {
            let i = event.token().0;
            let Some(client) = clients.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            if let Err(why) = drive(client, &mut stats) {
                if let Some(mut c) = clients[i].take() {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
                if why == "refused" {
                    retries.push(Instant::now() + Duration::from_secs(1));
                }
                *stats.closes.entry(why).or_default() += 1;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let open = clients.iter().filter(|c| c.is_some()).count();
    // Ticks every client could have seen: after all were open, and not the last one (it
    // may still be on its way). Clients still open count the ticks they missed at the end.
    let settled = all_open_at.unwrap_or(started) + Duration::from_secs(1);
    let mut complete: Vec<i64> = stats.ticks.keys().copied().collect();
    complete.sort_unstable();
    let last_tick = complete.iter().rev().nth(1).copied();
    if let Some(last) = last_tick {
        for c in clients.iter().flatten() {
            if let Some(ts) = c.last_ts {
                let behind = (last - ts).max(0) as f64 / stats.interval_ms.max(1) as f64;
                stats.lost += behind.round() as u64;
            }
        }
    }
    let mut spreads: Vec<u64> = stats
        .ticks
        .iter()
        .filter(|(ts, (first, _, _))| *first >= settled && Some(**ts) <= last_tick)
        .map(|(_, (first, last, _))| (*last - *first).as_micros() as u64)
        .collect();
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "clients": args.clients,
        "open_at_end": open,
        "connected": stats.connected,
        "refused": stats.refused,
        "seconds": wall,
        "interval_ms": stats.interval_ms,
        "samples_received": stats.received,
        "samples_lost": stats.lost,
        "duplicates": stats.duplicates,
        "ticks_measured": spreads.len(),
        "spread_ms": {
            "p50": ms(percentile(&mut spreads, 0.50)),
            "p99": ms(percentile(&mut spreads, 0.99)),
            "max": ms(percentile(&mut spreads, 1.0)),
        },
        "jitter_ms": {
            "p50": ms(percentile(&mut stats.jitter_us, 0.50)),
            "p99": ms(percentile(&mut stats.jitter_us, 0.99)),
        },
        "closes": stats.closes,
        "loadgen_cpu_pct": own_cpu_seconds().map(|cpu| 100.0 * cpu / wall),
    })
}

fn connect(
    poll: &Poll,
    clients: &mut Vec<Option<Client>>,
    addr: SocketAddr,
    request: &str,
) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    let i = clients
        .iter()
        .position(Option::is_none)
        .unwrap_or(clients.len());
    poll.registry().register(
        &mut stream,
        Token(i),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    let client = Client {
        stream,
        state: State::Handshake(request.as_bytes().to_vec()),
        buf: Vec::with_capacity(256),
        last_ts: None,
        last_arrival: None,
        live: false,
    };
    if i == clients.len() {
        clients.push(Some(client));
    } else {
        clients[i] = Some(client);
    }
    Ok(())
}

/// Advances one client: sends what is left of the request, reads what arrived.
/// Returns why the client ended, if it did.
fn drive(c: &mut Client, stats: &mut Stats) -> Result<(), String> {
    if let State::Handshake(pending) = &mut c.state
        && !pending.is_empty()
    {
        match c.stream.write(pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(format!("write: {}", e.kind())),
        }
    }
    let mut chunk = [0u8; 16 * 1024];
    // Bytes that arrived with the end of the stream (a 503 and the server's close, say)
    // are parsed before the end is reported.
    let mut eof = false;
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(format!("read: {}", e.kind())),
        }
    }
    if let State::Handshake(_) = c.state {
        let Some(end) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return if eof { Err("eof".into()) } else { Ok(()) };
        };
        let status = String::from_utf8_lossy(&c.buf[9..12.min(end)]).into_owned();
        if status != "101" {
            *stats.refused.entry(status).or_default() += 1;
            return Err("refused".into());
        }
        stats.connected += 1;
        c.buf.drain(..end + 4);
        c.state = State::Open;
    }
    while let Some((opcode, payload, used)) = frame(&c.buf) {
        let now = Instant::now();
        match opcode {
            0x1 => {
                let text = String::from_utf8_lossy(&c.buf[payload]).into_owned();
                on_text(c, stats, &text, now);
            }
            0x8 => {
                let code = c
                    .buf
                    .get(payload.start..payload.start + 2)
                    .map_or("none".into(), |b| {
                        u16::from_be_bytes([b[0], b[1]]).to_string()
                    });
                return Err(format!("server_close_{code}"));
            }
            _ => {}
        }
        c.buf.drain(..used);
    }
    if eof { Err("eof".into()) } else { Ok(()) }
}

fn on_text(c: &mut Client, stats: &mut Stats, text: &str, now: Instant) {
    if text.contains("\"type\":\"welcome\"") {
        if let Some(ms) = field(text, "\"interval_ms\":").and_then(|v| v.parse().ok()) {
            stats.interval_ms = ms;
        }
        return;
    }
    let Some(ts) = field(text, "\"timestamp\":\"").and_then(parse_ms) else {
        return;
    };
    stats.received += 1;
    // A client's first sample is the latest one, sent on connect: not part of a broadcast,
    // so it counts for loss but not for spread or jitter.
    if let Some(prev) = c.last_ts {
        let tick = stats.ticks.entry(ts).or_insert((now, now, 0));
        tick.1 = now;
        tick.2 += 1;
        // Gaps in whole intervals, rounded: a server whose timestamps are wall-clock times
        // rather than a tick grid (the Node original) is measured the same way.
        let interval = stats.interval_ms.max(1);
        let gap = ((ts - prev) as f64 / interval as f64).round() as i64;
        if ts <= prev {
            stats.duplicates += 1;
        } else {
            stats.lost += (gap - 1).max(0) as u64;
            if gap == 1
                && let Some(at) = c.last_arrival.filter(|_| c.live)
            {
                let gap = (now - at).as_micros() as i64;
                stats.jitter_us.push((gap - interval * 1000).unsigned_abs());
            }
        }
    }
    c.live = c.last_ts.is_some();
    c.last_ts = Some(ts);
    c.last_arrival = Some(now);
}

/// The value after `key` up to the next `"` or `,`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    Some(&rest[..rest.find(['"', ',', '}'])?])
}

/// `2026-11-28T05:53:01.500Z` as Unix milliseconds.
fn parse_ms(ts: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// A complete server frame at the start of `buf`: (opcode, payload range, bytes used).
fn frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, start) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    (buf.len() >= start + len).then_some((b0 & 0x0f, start..start + len, start + len))
}

fn percentile(values: &mut [u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// CPU time this process has used, user and system.
#[cfg(unix)] // getrusage
fn own_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes one rusage.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// Not measured without getrusage (Windows): `loadgen_cpu_pct` is null.
#[cfg(not(unix))] // no getrusage
fn own_cpu_seconds() -> Option<f64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_unix_milliseconds() {
        assert_eq!(parse_ms("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(
            parse_ms("2025-04-12T12:01:00.000Z"),
            Some(1_744_459_260_000)
        );
    }

    #[test]
    fn frames_are_parsed_only_when_complete() {
        assert_eq!(frame(&[0x81, 0x02, b'h', b'i']), Some((1, 2..4, 4)));
        assert_eq!(frame(&[0x81, 0x02, b'h']), None);
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(vec![b'x'; 256]);
        assert_eq!(frame(&long), Some((1, 4..260, 260)));
    }
}
