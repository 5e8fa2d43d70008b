//! Helpers shared by the integration tests: the real server in-process on port 0, a raw
//! HTTP client (so tests control every byte on the wire), and a WebSocket client.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use realtime_analytics_backend::{Config, Server};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket, client::IntoClientRequest};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The real server, started in this process on a free port and shut down on drop.
pub struct TestServer {
    server: Option<Server>,
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with(|_| {})
    }

    pub fn with(configure: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config {
            host: [127, 0, 0, 1].into(),
            port: 0,
            ..Config::default()
        };
        configure(&mut config);
        let server = realtime_analytics_backend::start(&config).expect("server starts");
        let addr = server.local_addr();
        TestServer {
            server: Some(server),
            addr,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    pub fn server_mut(&mut self) -> &mut Server {
        self.server.as_mut().expect("running")
    }

    /// Shuts down now (graceful: WebSocket clients get 1001).
    pub fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `raw` bytes as they are and reads one response (to EOF if it has no length).
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(raw).expect("send request");
    read_response(&mut BufReader::new(stream), raw.starts_with(b"HEAD "))
}

/// Reads one HTTP/1.1 response from `reader`.
pub fn read_response(reader: &mut impl BufRead, head: bool) -> Response {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').expect("header has a colon");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let mut body = Vec::new();
    if !head && status != 101 && status != 204 && status != 304 {
        match length {
            Some(n) => {
                body.resize(n, 0);
                reader.read_exact(&mut body).expect("body");
            }
            None => {
                reader.read_to_end(&mut body).expect("body");
            }
        }
    }
    Response {
        status,
        headers,
        body,
    }
}

/// A request with `Connection: close` and any extra header lines.
pub fn request(addr: SocketAddr, method: &str, target: &str, headers: &[&str]) -> Response {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    send_raw(addr, raw.as_bytes())
}

pub fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[])
}

pub type Ws = WebSocket<TcpStream>;

/// The headers of a valid upgrade, with the RFC 6455 example key.
pub const HANDSHAKE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// A GET of `path` with `headers` (each ending in CRLF).
pub fn upgrade_request(addr: SocketAddr, path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n")
}

/// Upgrades to `path` with raw bytes and asserts the 101. Returns the socket for
/// writing and a reader positioned at the first frame.
pub fn raw_upgrade(addr: SocketAddr, path: &str) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    (&stream)
        .write_all(upgrade_request(addr, path, HANDSHAKE).as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let response = read_response(&mut reader, false);
    assert_eq!(response.status, 101, "{}", response.text());
    (stream, reader)
}

/// Opens an event stream on `/api/analytics` (with `extra` header lines, each ending in
/// CRLF) and reads up to its first sample. Returns the stream and its reader.
pub fn open_event_stream(addr: SocketAddr, extra: &str) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        &stream,
        "GET /api/analytics HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with("event: sample") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
    }
    (stream, reader)
}

/// Reads until the peer's close frame and returns it (other messages are skipped).
pub fn read_close(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame,
            Ok(_) => {}
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

/// Opens a WebSocket to `path` and returns it with the welcome message already read.
pub fn ws_connect(addr: SocketAddr, path: &str) -> (Ws, serde_json::Value) {
    let mut ws = ws_open(addr, path);
    let welcome = next_json(&mut ws);
    assert_eq!(welcome["type"], "welcome", "first frame is the welcome");
    (ws, welcome)
}

/// Opens a WebSocket to `path` without reading anything.
pub fn ws_open(addr: SocketAddr, path: &str) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let request = format!("ws://{addr}{path}").into_client_request().unwrap();
    let (ws, response) = tungstenite::client(request, stream).expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// The next text message, as JSON (control frames are skipped).
pub fn next_json(ws: &mut Ws) -> serde_json::Value {
    serde_json::from_str(&next_text(ws)).expect("text frames are JSON")
}

pub fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a message before the timeout") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Asserts that `v` is a sample: exactly the seed's four fields with the right types.
pub fn assert_sample(v: &serde_json::Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "active_users",
            "avg_session_duration",
            "page_views",
            "timestamp"
        ]
    );
    let ts = v["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "RFC 3339 with milliseconds: {ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    assert!(v["active_users"].is_u64());
    assert!(v["page_views"].is_u64());
    let d = v["avg_session_duration"].as_f64().unwrap();
    assert!(
        (d * 10.0 - (d * 10.0).round()).abs() < 1e-9,
        "one decimal: {d}"
    );
}

/// The value of an unlabelled metric from `GET /metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let body = get(addr, "/metrics").text();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .parse()
        .unwrap()
}

/// Polls `check` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Resident bytes of this process.
#[cfg(target_os = "linux")] // read from /proc
pub fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

/// Thread and open-descriptor counts of this process.
#[cfg(target_os = "linux")] // read from /proc
pub fn threads_and_fds() -> (usize, usize) {
    threads_and_fds_of("self")
}

/// Thread and open-descriptor counts of the process `pid` (a number, or `self`).
#[cfg(target_os = "linux")] // read from /proc
pub fn threads_and_fds_of(pid: &str) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (threads, fds)
}

/// The built binary, started with `env`, stderr captured line by line.
pub struct Process {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Process {
    pub fn spawn(env: &[(&str, &str)]) -> Process {
        Process::run(
            Command::new(env!("CARGO_BIN_EXE_realtime-analytics-backend")),
            env,
        )
    }

    /// Spawns with the open-file limit (soft and hard) set to `nofile`, if given. Values
    /// need not be UTF-8.
    #[cfg(unix)] // the limit is set with setrlimit in the child, before exec
    pub fn spawn_limited<V: AsRef<std::ffi::OsStr>>(
        env: &[(&str, V)],
        nofile: Option<libc::rlim_t>,
    ) -> Process {
        Process::spawn_crowded(env, nofile, 0)
    }

    /// Like [`Process::spawn_limited`], with `inherited` descriptors the server did not
    /// open (copies of stderr, left open across exec, numbered from 3) taking part of the
    /// limit.
    #[cfg(unix)] // the limit is set with setrlimit and the copies made with dup2 before exec
    pub fn spawn_crowded<V: AsRef<std::ffi::OsStr>>(
        env: &[(&str, V)],
        nofile: Option<libc::rlim_t>,
        inherited: usize,
    ) -> Process {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_realtime-analytics-backend"));
        if let Some(n) = nofile {
            // SAFETY: setrlimit and dup are async-signal-safe and touch only the child.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // Until exec the child still holds this process's descriptors
                    // (closed on exec): the copies take numbers under the limit, in
                    // their place.
                    for fd in 3..3 + inherited as libc::c_int {
                        if libc::dup2(2, fd) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        Process::run(cmd, env)
    }

    /// Spawns in the cgroup whose `cgroup.procs` file is `procs`, from its first
    /// instruction: it sees the cgroup's limits as it starts.
    #[cfg(target_os = "linux")] // cgroups are Linux's
    pub fn spawn_in(procs: &std::path::Path, env: &[(&str, &str)]) -> Process {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"echo $$ > "$0" && exec "$1""#])
            .arg(procs)
            .arg(env!("CARGO_BIN_EXE_realtime-analytics-backend"));
        Process::run(cmd, env)
    }

    fn run<V: AsRef<std::ffi::OsStr>>(mut cmd: Command, env: &[(&str, V)]) -> Process {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, lines }
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?}"),
            }
        }
    }

    /// Waits for the startup line and returns the address it listens on.
    pub fn wait_until_listening(&self) -> SocketAddr {
        let line = self.wait_for_line("listening on http://");
        let rest = line.split("listening on http://").nth(1).unwrap();
        let addr = rest.split_whitespace().next().unwrap();
        addr.parse()
            .unwrap_or_else(|_| panic!("address in {line:?}"))
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "process did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[cfg(unix)] // sent with kill(2); Windows has no signals to send to another process
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with a pid we spawned.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// The rest of the log, up to end of file: call after [`Process::wait_exit`].
    pub fn rest_of_log(&self) -> Vec<String> {
        self.lines.iter().collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks that the block of `file` (relative to the crate) between `<!-- generated: NAME -->`
/// and `<!-- end: NAME -->` is `text`. With `UPDATE_DOCS=1` it rewrites the block instead,
/// so a change to the code's tables is one command away from the docs.
pub fn check_generated(file: &str, name: &str, text: &str) {
    check_block(file, name, text, |s| s.to_string());
}

/// Like [`check_generated`], for output that differs from run to run: the block must equal
/// `text` once every number is replaced by 0 (times, ports, counts).
pub fn check_shape(file: &str, name: &str, text: &str) {
    check_block(file, name, text, |s| {
        let (mut out, mut digits) = (String::new(), false);
        for c in s.chars() {
            if !(c.is_ascii_digit() && digits) {
                out.push(if c.is_ascii_digit() { '0' } else { c });
            }
            digits = c.is_ascii_digit();
        }
        out
    });
}

fn check_block(file: &str, name: &str, text: &str, normalise: impl Fn(&str) -> String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let doc = std::fs::read_to_string(&path).unwrap();
    let (open, close) = (
        format!("<!-- generated: {name} -->\n"),
        format!("<!-- end: {name} -->"),
    );
    let start = doc
        .find(&open)
        .unwrap_or_else(|| panic!("{file}: no `{open}`"))
        + open.len();
    let end = start
        + doc[start..]
            .find(&close)
            .unwrap_or_else(|| panic!("{file}: no `{close}`"));
    if normalise(&doc[start..end]) == normalise(text) {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{}{text}{}", &doc[..start], &doc[end..])).unwrap();
        return;
    }
    panic!(
        "{file}'s `{name}` block is out of date; run `UPDATE_DOCS=1 cargo test --test docs` \
         to regenerate it. It should be:\n{text}"
    );
}
