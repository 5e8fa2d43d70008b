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
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tiny_http::Request;

use crate::config::Config;
use crate::generator::{self, Model};
use crate::http::{self, request_header};
use crate::hub::Hub;
use crate::paths;
use crate::routes::{self, Service};
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
    workers: Vec<JoinHandle<()>>,
    generator: JoinHandle<()>,
    streams: Arc<Streams>,
    stop: Sender<()>,
    stopping: Arc<AtomicBool>,
    failed: Receiver<String>,
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

    let model = Model {
        seed: config.seed,
        interval: config.interval,
    };
    let first = model.current_tick();
    let hub = Arc::new(Hub::new(model.tick(first)));
    let (stop, stopped) = bounded::<()>(0);
    let streams = Streams::new(
        Arc::clone(&hub),
        config.interval,
        config.max_ws_clients,
        config.ws_max_skipped,
        addr.port(),
        stopped.clone(),
    )
    .map_err(|e| failure("the WebSocket watcher", &e))?;
    let streams = Arc::new(streams);
    let generator = generator::spawn(model, first, Arc::clone(&hub), stopped)
        .map_err(|e| failure("the generator", &e))?;
    let http = Arc::new(
        tiny_http::Server::from_listener(listener, None).map_err(|e| failure("tiny_http", &e))?,
    );

    let service = Arc::new(Service {
        hub,
        interval: config.interval,
        default_host: default_host(addr),
    });
    let stopping = Arc::new(AtomicBool::new(false));
    let (failed_tx, failed) = bounded(WORKERS);
    let mut workers = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        let worker = Worker {
            http: Arc::clone(&http),
            service: Arc::clone(&service),
            streams: Arc::clone(&streams),
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
        workers,
        generator,
        streams,
        stop,
        stopping,
        failed,
    })
}

impl Server {
    /// The address the server listens on (with the real port when `PORT=0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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

    /// Stops the generator, closes every WebSocket with 1001 (waiting up to 5 s for the
    /// close handshakes), then stops the HTTP workers.
    pub fn shutdown(self) {
        self.stopping.store(true, Ordering::SeqCst);
        drop(self.stop);
        let _ = self.generator.join();
        let deadline = Instant::now() + DRAIN;
        while self.streams.clients() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
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
        let path = paths::normalise(request.url());
        let route = paths::route(&path);
        let reply = match route {
            Some(route) if ws::is_upgrade(&request) => {
                match ws::handshake(&request, &self.streams) {
                    Ok((accept, slot)) => return ws::start(request, accept, slot, route),
                    Err(refusal) => refusal,
                }
            }
            _ => routes::handle(&request, &path, &self.service),
        };
        let status = reply.status_code().0;
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
