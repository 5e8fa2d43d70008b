//! The server: the listening socket, tiny_http's receive loop, and the choice between
//! REST and WebSocket for each request.
//!
//! The listener is built with socket2 rather than `Server::http` so that its options are
//! ours: a deep accept backlog (a burst of dashboards reconnecting after a deploy must not
//! see SYN drops), `TCP_NODELAY` (small frames go out at once), TCP keepalive (idle peers
//! that vanished are found) and `TCP_USER_TIMEOUT` (a peer that stops acknowledging our
//! frames is dropped after 30 s instead of Linux's ~15 minutes of retransmissions). On
//! Linux, accepted sockets inherit all of them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tiny_http::Request;

use crate::config::Config;
use crate::connections::{Connections, Limits};
use crate::generator;
use crate::http::{self, Reply, request_header};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::options;
use crate::paths;
use crate::routes::{self, Service};
use crate::socket::Registry;
use crate::sse;
use crate::watchdog;
use crate::watcher::Watcher;
use crate::ws::{self, Streams};

/// Threads taking requests from tiny_http's queue. Handlers only copy a sample or build a
/// small JSON body; upgrades are handed to their own thread at once.
const WORKERS: usize = 4;
const BACKLOG: i32 = 1024;
/// Unacknowledged data older than this aborts the connection.
const USER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for WebSocket clients to finish their close handshakes.
const DRAIN: Duration = Duration::from_secs(5);

/// A running server. Dropping it without [`Server::shutdown`] leaves its threads running.
pub struct Server {
    addr: SocketAddr,
    http: Arc<tiny_http::Server>,
    /// The generator, the connections checker and the watchdog.
    threads: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    streams: Arc<Streams>,
    stop: Sender<()>,
    ready: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    failed: Receiver<String>,
    caps: (usize, usize),
}

/// Why the server could not start.
#[derive(Debug)]
pub struct StartError(String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Binds, starts the generator, the HTTP workers and the WebSocket watcher.
pub fn start(config: &Config) -> Result<Server, StartError> {
    let addr = SocketAddr::new(config.host, config.port);
    let listener = listen(addr).map_err(|e| {
        StartError(match e.kind() {
            io::ErrorKind::AddrInUse => format!(
                "cannot listen on {addr}: the port is already in use; stop the other \
                 process or set PORT to a free port"
            ),
            io::ErrorKind::AddrNotAvailable => format!(
                "cannot listen on {addr}: no interface has that address; set HOST to one \
                 this machine has, or 0.0.0.0 for all"
            ),
            _ => format!("cannot listen on {addr}: {e}"),
        })
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let failure =
        |what: &str, e: &dyn std::fmt::Display| StartError(format!("cannot start {what}: {e}"));

    let (max_ws, max_http) = caps(config);
    let model = config.model();
    let first = model.tick_at(generator::now_ms());
    let hub = Arc::new(Hub::new(generator::tick(&model, first)));
    let metrics = Arc::new(Metrics::default());
    let sockets = Arc::new(Registry::new(addr.port()));
    let ready = Arc::new(AtomicBool::new(true));
    let (stop, stopped) = bounded::<()>(0);
    let (failed_tx, failed) = bounded(WORKERS + 1);
    let streams = Arc::new(Streams {
        hub: Arc::clone(&hub),
        model,
        max_clients: max_ws,
        max_skipped: config.ws_max_skipped,
        stop: stopped.clone(),
        ready: Arc::clone(&ready),
        sockets: Arc::clone(&sockets),
        metrics: Arc::clone(&metrics),
        watcher: Watcher::start().map_err(|e| failure("the WebSocket watcher", &e))?,
        clients: AtomicUsize::new(0),
    });
    let own = SocketAddr::new(loopback_for(addr.ip()), addr.port());
    let connections = Arc::new(Connections::new(
        Limits {
            idle_timeout: config.idle_timeout,
            header_timeout: config.header_timeout,
            max_header_bytes: config.max_header_bytes,
            max_connections: max_http,
        },
        sockets,
        Arc::clone(&metrics),
        own,
    ));
    let http = Arc::new(
        tiny_http::Server::from_listener(listener, None).map_err(|e| failure("tiny_http", &e))?,
    );
    let threads = vec![
        generator::spawn(
            model,
            first,
            Arc::clone(&hub),
            Arc::clone(&metrics),
            stopped.clone(),
        )
        .map_err(|e| failure("the generator", &e))?,
        connections
            .spawn(stopped.clone())
            .map_err(|e| failure("the connections checker", &e))?,
        watchdog::spawn(own, stopped, failed_tx.clone())
            .map_err(|e| failure("the watchdog", &e))?,
    ];

    let service = Arc::new(Service {
        hub,
        model,
        default_host: default_host(addr),
        metrics,
        caps: (max_ws, max_http),
        ready: Arc::clone(&ready),
    });
    let stopping = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        let worker = Worker {
            http: Arc::clone(&http),
            service: Arc::clone(&service),
            streams: Arc::clone(&streams),
            connections: Arc::clone(&connections),
            cors: config.cors.clone(),
            stopping: Arc::clone(&stopping),
            failed: failed_tx.clone(),
        };
        let handle = thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || worker.run())
            .map_err(|e| failure("the HTTP workers", &e))?;
        workers.push(handle);
    }
    Ok(Server {
        addr,
        http,
        threads,
        workers,
        streams,
        stop,
        ready,
        stopping,
        failed,
        caps: (max_ws, max_http),
    })
}

impl Server {
    /// The address the server listens on (with the real port when `PORT=0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port` for URLs to this server: `localhost:PORT` when listening on every
    /// interface.
    pub fn host(&self) -> String {
        default_host(self.addr)
    }

    /// Receives a message if the server can no longer accept connections (tiny_http's
    /// accept loop ended). The process should then exit non-zero so that it is restarted.
    pub fn failed(&self) -> &Receiver<String> {
        &self.failed
    }

    /// Open WebSocket connections.
    pub fn ws_clients(&self) -> usize {
        self.streams.clients()
    }

    /// (`MAX_WS_CLIENTS`, `MAX_HTTP_CONNECTIONS`) in force, derived or configured.
    pub fn caps(&self) -> (usize, usize) {
        self.caps
    }

    /// Graceful shutdown: `/readyz` turns 503 and new upgrades are refused; every
    /// WebSocket gets close 1001 with a randomised reconnect delay (up to 5 s are given
    /// to the close handshakes); requests in progress finish; then the workers stop.
    pub fn shutdown(self) {
        self.ready.store(false, Ordering::SeqCst);
        drop(self.stop);
        let deadline = Instant::now() + DRAIN;
        while self.streams.clients() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        self.stopping.store(true, Ordering::SeqCst);
        for _ in &self.workers {
            self.http.unblock();
        }
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `HOST=::` serves IPv4 clients too.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_keepalive(true)?;
    socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10))
            .with_retries(3),
    )?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The caps in force: configured, or derived from what the process can hold. Each client
/// costs up to three descriptors (tiny_http dups every socket, an event stream dups it
/// once more) and up to two threads of about five memory mappings each; past
/// `vm.max_map_count` thread creation fails or the process aborts, and past the
/// descriptor limit tiny_http's accept loop dies. A fifth of the budget goes to HTTP
/// connections.
fn caps(config: &Config) -> (usize, usize) {
    let descriptors = fd_limit().saturating_sub(256) / 3;
    let mappings = max_map_count().saturating_sub(2000) / 10;
    let budget = descriptors.min(mappings).max(10);
    let http = config.max_http_connections.unwrap_or(budget / 5);
    let ws = config
        .max_ws_clients
        .unwrap_or_else(|| budget.saturating_sub(http).max(1));
    (ws, http)
}

fn fd_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530)
}

/// The address to reach our own listener at.
fn loopback_for(ip: IpAddr) -> IpAddr {
    if ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        ip
    }
}

/// `host:port` for URLs when a request carries no usable `Host` header.
fn default_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

struct Worker {
    http: Arc<tiny_http::Server>,
    service: Arc<Service>,
    streams: Arc<Streams>,
    connections: Arc<Connections>,
    cors: crate::config::Cors,
    stopping: Arc<AtomicBool>,
    failed: Sender<String>,
}

impl Worker {
    fn run(self) {
        loop {
            match self.http.recv() {
                Ok(request) => self.handle(request),
                Err(_) if self.stopping.load(Ordering::SeqCst) => return,
                Err(e) => {
                    // tiny_http reports an accept error once, then its accept loop is gone.
                    let message = format!("the HTTP accept loop stopped: {e}");
                    log::error!("{message}");
                    let _ = self.failed.try_send(message);
                    return;
                }
            }
        }
    }

    fn handle(&self, request: Request) {
        if let Some(peer) = request.remote_addr() {
            self.connections.saw_request(*peer);
        }
        if let Some(refusal) = self.refuse(&request) {
            let peer = request.remote_addr().copied();
            self.respond(request, refusal, None);
            if let Some(peer) = peer {
                self.connections.hang_up(peer);
            }
            return;
        }
        let path = paths::normalise(request.url());
        let route = paths::route(&path);
        let reply = if ws::is_upgrade(&request) {
            match route.filter(|r| r.websocket()) {
                Some(route) => match self.stream_options(&request) {
                    Ok(options) => match ws::handshake(&request, &self.streams) {
                        Ok((accept, slot)) => {
                            return ws::start(request, accept, slot, route, options);
                        }
                        Err(refusal) => refusal,
                    },
                    Err(e) => http::bad_query(&e),
                },
                None => routes::not_found(&path),
            }
        } else if route.is_some_and(|r| r.streams()) && sse::is_event_stream(&request) {
            match self.stream_options(&request) {
                Ok(options) => match self.streams.reserve() {
                    Ok(slot) => {
                        let origin = request_header(&request, "Origin");
                        let cors = http::cors_headers(&self.cors, origin);
                        return sse::start(request, slot, options, cors);
                    }
                    Err(refusal) => refusal,
                },
                Err(e) => http::bad_query(&e),
            }
        } else {
            routes::handle(&request, &path, &self.service)
        };
        self.respond(request, reply, route);
    }

    /// The options of a stream (WebSocket or SSE), from its query string. A resuming
    /// `EventSource`'s `Last-Event-ID` stands for `since` when the query has none.
    fn stream_options(&self, request: &Request) -> Result<options::Options, options::Invalid> {
        let mut pairs = options::pairs(options::query(request.url()));
        if !pairs.iter().any(|(k, _)| k == "since") {
            pairs.extend(sse::last_event_id(request).map(|id| ("since".to_string(), id)));
        }
        options::parse(&pairs, &self.streams.model, self.streams.hub.latest().seq)
    }

    /// Requests refused before routing: a head larger than the limit (the connections
    /// checker catches heads that are still arriving; this catches those that arrived
    /// whole), and ambiguous framing, which request smuggling relies on.
    fn refuse(&self, request: &Request) -> Option<Reply> {
        let head: usize = request.url().len()
            + request
                .headers()
                .iter()
                .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
                .sum::<usize>();
        let max = self.connections.max_header_bytes();
        if head as u64 > max {
            let message = format!("Request head over {max} bytes. Send fewer or smaller headers.");
            return Some(http::error(431, "headers_too_large", &message, &[]));
        }
        let count = |name| {
            request
                .headers()
                .iter()
                .filter(|h| h.field.equiv(name))
                .count()
        };
        let lengths = count("Content-Length");
        if lengths > 1 || (lengths == 1 && count("Transfer-Encoding") > 0) {
            return Some(http::error(
                400,
                "ambiguous_framing",
                "Send either one Content-Length or Transfer-Encoding, not both.",
                &[],
            ));
        }
        None
    }

    fn respond(&self, request: Request, reply: Reply, route: Option<paths::Route>) {
        let status = reply.status_code().0;
        let label = route.map_or("other", |r| r.path());
        self.service.metrics.request(label, status);
        if !(200..300).contains(&status) {
            let level = if status >= 500 {
                log::Level::Warn
            } else {
                log::Level::Info
            };
            log::log!(
                level,
                "{} {} -> {status} peer={}",
                request.method(),
                request.url(),
                request.remote_addr().map_or("-".into(), |a| a.to_string())
            );
        }
        let origin = request_header(&request, "Origin").map(str::to_string);
        let reply = http::with_cors(reply, &self.cors, origin.as_deref());
        if let Err(e) = request.respond(reply) {
            log::debug!("response not delivered: {e}");
        }
    }
}
