//! Hostile input over real sockets. One test, run case by case: after each case the server
//! must still answer `GET /api/analytics` with a sample, and its thread and descriptor
//! counts must return to where they were (this binary holds only this test, so the counts
//! are the server's and ours).
#![cfg(target_os = "linux")] // every case counts threads, descriptors, memory or CPU in /proc

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// Sends `bytes` on a new connection (ignoring write errors: the server may hang up
/// first) and returns whatever comes back before the server closes.
fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// A connection with a 4 KiB receive buffer that sends `raw` and never reads.
fn non_reading(addr: std::net::SocketAddr, raw: &[u8]) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = (&stream).write_all(raw);
    stream
}

/// Threads, descriptors and resident bytes of this process.
fn threads_and_fds_rss() -> (usize, usize, usize) {
    let (threads, fds) = threads_and_fds();
    (threads, fds, rss())
}

fn status_of(answer: &[u8]) -> Option<u16> {
    std::str::from_utf8(answer.get(..12)?)
        .ok()?
        .get(9..12)?
        .parse()
        .ok()
}

/// A masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Writes `burst` again and again for up to `window`, never reading. Returns the bytes
/// sent and when the server ended the connection, if it did (a write that only waits,
/// because the server is not reading, does not count).
fn flood(stream: &mut TcpStream, burst: &[u8], window: Duration) -> (usize, Option<Duration>) {
    stream
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (mut sent, started) = (0, Instant::now());
    while started.elapsed() < window && sent < 256 << 20 {
        // From where the last write stopped: a frame is never cut.
        match stream.write(&burst[sent % burst.len()..]) {
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (sent, Some(started.elapsed())),
        }
    }
    (sent, None)
}

/// CPU time (user and system) used so far by this process (`"self"`) or this thread
/// (`"thread-self"`), from `/proc/<whose>/stat`.
fn cpu_time(whose: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{whose}/stat")).unwrap();
    // After the command name (in parentheses, and it may hold spaces): utime and stime are
    // the 12th and 13th fields, in clock ticks.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// The next frame the server sent (unmasked): its opcode and payload. `None` at the end of
/// the connection.
fn next_frame(reader: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).ok()?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            reader.read_exact(&mut n).ok()?;
            u16::from_be_bytes(n) as usize
        }
        127 => {
            let mut n = [0u8; 8];
            reader.read_exact(&mut n).ok()?;
            u64::from_be_bytes(n) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).ok()?;
    Some((head[0] & 0x0f, payload))
}

/// Upgrades, sends `bytes` after the handshake, and returns the close code the server
/// sent (None if it closed without one).
fn ws_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<u16> {
    let (mut stream, mut reader) = raw_upgrade(addr, "/api");
    let _ = stream.write_all(bytes);
    let mut all = Vec::new();
    let _ = reader.read_to_end(&mut all);
    // Find the server's close frame (0x88) after the welcome.
    let at = all.windows(2).position(|w| w[0] == 0x88 && w[1] >= 2)?;
    Some(u16::from_be_bytes([all[at + 2], all[at + 3]]))
}

#[test]
fn the_server_survives_hostile_input_and_returns_to_baseline() {
    let s = TestServer::with(|c| {
        c.interval = Duration::from_millis(200);
        c.header_timeout = Duration::from_millis(1000);
        c.idle_timeout = Duration::from_millis(1000);
        c.write_timeout = Duration::from_millis(1000);
    });
    let addr = s.addr;
    let check = |case: &str, baseline: (usize, usize)| {
        let r = get(addr, "/api/analytics");
        assert_eq!(r.status, 200, "{case}: still answering");
        assert_sample(&r.json());
        let back = eventually(Duration::from_secs(20), || {
            let (t, f) = threads_and_fds();
            t <= baseline.0 && f <= baseline.1
        });
        assert!(
            back,
            "{case}: baseline {baseline:?}, now {:?}",
            threads_and_fds()
        );
        eprintln!("ok: {case}");
    };
    // Baseline after a warm-up, once every lazily started thread exists and the warm-up's
    // connection threads have ended.
    let _ = get(addr, "/api/analytics");
    drop(ws_connect(addr, "/api/analytics"));
    thread::sleep(Duration::from_secs(6));
    let baseline = threads_and_fds();

    let answer = exchange(addr, b"GARBAGE\r\n\r\n");
    assert_eq!(status_of(&answer), Some(400), "malformed request line");
    check("malformed request line", baseline);

    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let answer = exchange(addr, &garbage);
    assert!(
        matches!(status_of(&answer), None | Some(400)),
        "binary garbage"
    );
    check("binary garbage", baseline);

    for size in [64 * 1024, 10 * 1024 * 1024] {
        let mut req = b"GET /api/analytics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', size));
        req.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(addr, &req);
        assert!(
            matches!(status_of(&answer), None | Some(431)),
            "{size}-byte header: {:?}",
            String::from_utf8_lossy(&answer)
        );
        check(&format!("{size}-byte header"), baseline);
    }

    let answer = exchange(
        addr,
        b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(
        status_of(&answer),
        Some(400),
        "conflicting Content-Length and Transfer-Encoding"
    );
    let answer = exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    );
    assert_eq!(status_of(&answer), Some(400), "two Content-Lengths");
    check("conflicting framing", baseline);

    // Smuggling: whatever framing trick hides a second request, it is never served, and a
    // refused request is refused every time (twenty rounds each).
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<(String, u16)> = [
        ("Content-Length: 10\r\n", 413),
        ("Transfer-Encoding: chunked\r\n", 413),
        ("Transfer-Encoding: gzip\r\n", 501),
        ("Transfer-Encoding: identity\r\n", 501),
        ("Transfer-Encoding: chunked;ext=1\r\n", 413),
        ("Content-Length: 37, 37\r\n", 400),
        ("Content-Length: +37\r\n", 400),
        ("Content-Length: abc\r\n", 400),
        ("Content-Length: 0x25\r\n", 400),
        ("Content-Length: -37\r\n", 400),
        ("Content-Length: \r\n", 400),
        ("Content-Length: 99999999999999999999\r\n", 400),
        ("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", 400),
        ("Content-Length: 1\r\nContent-Length: 2\r\n", 400),
        ("X-A: 1\r\n folded: in\r\n", 400),
    ]
    .into_iter()
    .map(|(h, status)| {
        (
            format!("GET /api/analytics HTTP/1.1\r\nHost: x\r\n{h}\r\n0\r\n\r\n{smuggled}"),
            status,
        )
    })
    .chain([(
        format!("GET /api/analytics HTTP/1.1\nHost: x\n\n{smuggled}"),
        400,
    )])
    .collect();
    for round in 0..20 {
        for (raw, status) in &cases {
            let answer = exchange(addr, raw.as_bytes());
            let text = String::from_utf8_lossy(&answer);
            assert_eq!(
                status_of(&answer),
                Some(*status),
                "round {round}: {raw:?}: {text}"
            );
            assert_eq!(
                text.matches("HTTP/1.1").count(),
                1,
                "round {round}: {raw:?}: {text}"
            );
            assert!(
                !text.contains("\"ok\""),
                "smuggled request served: {raw:?}: {text}"
            );
        }
    }
    check("smuggling by framing", baseline);

    // HTTP/2 and /3 request lines (tiny_http deadlocks writing its own 505 for these and
    // leaks a thread and two descriptors each): 505 from the edge, nothing leaks.
    for i in 0..60 {
        let version = ["HTTP/2.0", "HTTP/3.0"][i % 2];
        let answer = exchange(
            addr,
            format!("GET / {version}\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(status_of(&answer), Some(505), "{version}");
    }
    let answer = exchange(addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(status_of(&answer), Some(505), "HTTP/2 prior knowledge");
    check("HTTP/2.0 and 3.0 request lines", baseline);

    // tiny_http's own listener behind the edge has no timeouts and no cap: a local process
    // must not hold connections there, nor leak them with the HTTP/2.0 lines tiny_http
    // deadlocks on.
    let internal = s
        .server()
        .internal_addr()
        .expect("tiny_http listens on TCP");
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&internal, Duration::from_secs(1)).ok())
        .collect();
    let r = get(addr, "/api/analytics");
    assert_eq!(
        r.status, 200,
        "answering while a local process tries the internal port"
    );
    let (threads, _) = threads_and_fds();
    eprintln!(
        "internal port: {} of 300 connections accepted, threads {} -> {threads}",
        idle.len(),
        baseline.0
    );
    assert!(
        threads <= baseline.0 + 4,
        "{} idle connections to the internal port {internal}: threads {} -> {threads}",
        idle.len(),
        baseline.0
    );
    assert!(
        idle.is_empty(),
        "{} of 300 connections to the internal port {internal} accepted",
        idle.len()
    );
    check("idle connections to the internal port", baseline);
    for _ in 0..60 {
        if let Ok(mut stream) = TcpStream::connect_timeout(&internal, Duration::from_secs(1)) {
            let _ = stream.write_all(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n");
        }
    }
    check("HTTP/2.0 request lines on the internal port", baseline);

    // Clients that ask and never read: responses that do not fit the socket must not hold
    // a worker. Each burst would have stopped /healthz at once; it must answer in under
    // a second while they hang, and they are dropped within WRITE_TIMEOUT_MS.
    let openapi = "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(300);
    let history = "GET /api/analytics/history?last=4h&step=1500ms&fields=all&seq=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let lying = "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n";
    for (case, raw) in [
        ("pipelined documents", openapi.as_str()),
        ("4 MB histories", history),
        ("a promised body", lying),
    ] {
        let readers: Vec<TcpStream> = (0..4).map(|_| non_reading(addr, raw.as_bytes())).collect();
        thread::sleep(Duration::from_millis(300));
        let asked = Instant::now();
        let r = get(addr, "/healthz");
        assert_eq!(r.status, 200, "{case}");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{case}: /healthz took {:?}",
            asked.elapsed()
        );
        drop(readers);
        check(case, baseline);
    }

    // Floods from a client that never reads: pings (each asks for a pong) and empty
    // continuation frames (a message that never ends, so no message is ever complete).
    // The server stops the client at the inbound bounds with a 1008 (which the client
    // finds when it reads at last) and ends the connection after the close grace (2 s);
    // its CPU time and memory stay small while the client sends as fast as it can.
    let mut endless = frame(0x1, b"");
    endless[0] = 0x01;
    let mut continuation = frame(0x0, b"");
    continuation[0] = 0x00;
    for (case, first, unit) in [
        (
            "ping flood without reading",
            vec![],
            frame(0x9, &[b'p'; 125]),
        ),
        ("endless message without reading", endless, continuation),
    ] {
        let (mut stream, mut reader) = raw_upgrade(addr, "/api");
        stream.write_all(&first).unwrap();
        let burst = unit.repeat(128 * 1024 / unit.len());
        let before = threads_and_fds_rss().2;
        let cpu = (cpu_time("self"), cpu_time("thread-self"));
        let (sent, ended) = flood(&mut stream, &burst, Duration::from_secs(5));
        // The server's CPU time: the process's, less this thread's (the flood's).
        let server_cpu = (cpu_time("self") - cpu.0).saturating_sub(cpu_time("thread-self") - cpu.1);
        let grown = threads_and_fds_rss().2.saturating_sub(before);
        eprintln!(
            "{case}: {} KB sent, ended after {ended:?}, server CPU {server_cpu:?}, RSS grew {} KB",
            sent >> 10,
            grown >> 10
        );
        assert!(
            ended.is_some_and(|t| t < Duration::from_secs(4)),
            "{case}: still connected after {} MB",
            sent >> 20
        );
        assert!(
            server_cpu < Duration::from_millis(1500),
            "{case}: the server spent {server_cpu:?} of CPU"
        );
        assert!(grown < 16 << 20, "{case}: RSS grew {} MB", grown >> 20);
        // What the client would have read: the welcome, a few pongs, and a close 1008.
        let closes: Vec<u16> = std::iter::from_fn(|| next_frame(&mut reader))
            .filter(|(opcode, _)| *opcode == 0x8)
            .map(|(_, payload)| {
                payload
                    .get(..2)
                    .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]))
            })
            .collect();
        assert_eq!(closes, [1008], "{case}");
        drop((stream, reader));
        check(case, baseline);
    }

    for headers in [
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 99\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: \u{7f}\u{7f}\r\n",
    ] {
        let answer = exchange(
            addr,
            upgrade_request(addr, "/api/analytics", headers).as_bytes(),
        );
        assert!(matches!(status_of(&answer), Some(400 | 426)), "{headers:?}");
    }
    check("invalid handshakes", baseline);

    assert_eq!(
        ws_exchange(addr, &[0x81, 0x02, b'h', b'i']),
        Some(1002),
        "unmasked frame"
    );
    check("unmasked client frame", baseline);

    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(64u64 << 20).to_be_bytes());
    huge.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(ws_exchange(addr, &huge), Some(1009), "64 MiB frame header");
    check("frame declaring 64 MiB", baseline);

    assert_eq!(
        ws_exchange(addr, &frame(0x1, &[0xff, 0xfe, 0xfd])),
        Some(1007),
        "invalid UTF-8"
    );
    check("invalid UTF-8 text", baseline);

    // A ping flood from a client that reads its pongs: closed with 1008 at the rate bound.
    {
        let (mut ws, _) = ws_connect(addr, "/api/analytics");
        let started = Instant::now();
        for _ in 0..10_000 {
            if ws.write(Message::Ping("flood".into())).is_err() {
                break;
            }
        }
        let _ = ws.flush();
        let close = loop {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "still open after a flood of 10 000 pings"
            );
            match ws.read() {
                Ok(Message::Close(close)) => break close.expect("a close code"),
                Ok(_) => {}
                Err(e) => panic!("no close frame: {e}"),
            }
        };
        eprintln!(
            "ping flood, reading: closed after {:?}: {} ({})",
            started.elapsed(),
            close.code,
            close.reason
        );
        assert_eq!(u16::from(close.code), 1008, "{}", close.reason);
        assert!(close.reason.contains("messages"), "{}", close.reason);
        while ws.read().is_ok() {}
    }
    check("ping flood", baseline);

    // A client that pings every 100 ms for 3 s, reading as it goes, is within the bound.
    {
        let (mut ws, _) = ws_connect(addr, "/api/analytics");
        let started = Instant::now();
        let (mut due, mut pings, mut pongs, mut samples) = (started, 0, 0, 0);
        while started.elapsed() < Duration::from_secs(3) {
            if Instant::now() >= due {
                ws.send(Message::Ping("are you there".into())).unwrap();
                pings += 1;
                due += Duration::from_millis(100);
            }
            // Read until the next ping is due.
            let left = due.saturating_duration_since(Instant::now());
            ws.get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match ws.read() {
                Ok(Message::Pong(_)) => pongs += 1,
                Ok(Message::Text(_)) => samples += 1,
                Ok(Message::Ping(_)) => {}
                Ok(other) => panic!("after {pings} pings: {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("after {pings} pings: {e}"),
            }
        }
        assert!(
            pings >= 20 && samples > 0,
            "{pings} pings, {samples} samples"
        );
        // Every ping is answered.
        ws.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
        while pongs < pings {
            match ws.read() {
                Ok(Message::Pong(_)) => pongs += 1,
                Ok(Message::Close(close)) => panic!("closed after {pings} pings: {close:?}"),
                Ok(_) => {}
                Err(e) => panic!("{pongs} pongs for {pings} pings: {e}"),
            }
        }
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
    check("a ping every 100 ms", baseline);

    for _ in 0..2000 {
        drop(TcpStream::connect(addr).unwrap());
    }
    check("2000 rapid connect/disconnects", baseline);

    {
        // Half-closed HTTP and WebSocket connections: the client stops sending but keeps
        // the socket.
        let http = TcpStream::connect(addr).unwrap();
        (&http)
            .write_all(b"GET /api/analytics HTTP/1.1\r\nHo")
            .unwrap();
        http.shutdown(Shutdown::Write).unwrap();
        let (ws, _reader) = raw_upgrade(addr, "/api/analytics");
        ws.shutdown(Shutdown::Write).unwrap();
        assert!(eventually(TIMEOUT, || s.server().stream_clients() == 0));
        thread::sleep(Duration::from_millis(500));
        drop((http, ws));
    }
    check("half-closed sockets", baseline);

    // The close codes the cases above produced were all counted.
    let metrics = get(addr, "/metrics").text();
    for code in ["1002", "1007", "1009"] {
        assert!(
            metrics.contains(&format!("analytics_ws_closes_total{{code=\"{code}\"}} 1")),
            "{code}\n{metrics}"
        );
    }
}
