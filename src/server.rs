//! The server: the edge in front, tiny_http and its workers behind it, and for each request
//! one decision: a REST reply, a WebSocket stream or an event stream.
//!
//! tiny_http accepts the edge's few internal connections on a loopback port, closed as
//! soon as they are open (see `edge`). Its workers take each parsed request, find the
//! client connection it came from, read the request once (`ClientRequest`), decide, and
//! hand the decision back to that connection's thread, which carries it out.

use std::borrow::Cow;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use socket2::{Domain, Protocol, Socket, Type};
use tiny_http::{Method, Request};

use crate::budget::{self, Budget, Turns};
use crate::config::{Config, Mode};
use crate::context::{Caps, Context};
use crate::edge::{self, Connections, Edge, Limits, PeerNames};
use crate::error::{Failure, Refusal, StartError};
use crate::feed::Feed;
use crate::generator;
use crate::http::{self, Cors, Decision, Reply, StreamFn};
use crate::hub::Hub;
use crate::live::store::Store;
use crate::live::{self, Live};
use crate::metrics::Metrics;
use crate::paths::{self, Route};
use crate::platform;
use crate::request::ClientRequest;
use crate::routes;
use crate::stream::{Streams, sse, ws};
use crate::watchdog;
use crate::watcher::Watcher;

/// Threads taking requests from tiny_http's queue. They only build small replies and send
/// them without blocking; streams and slow clients are the connections' own threads' work.
const WORKERS: usize = 4;
const BACKLOG: i32 = 1024;
/// How long shutdown waits for streaming clients to finish their close handshakes.
const DRAIN: Duration = Duration::from_secs(5);
/// The server's own descriptors, which the caps leave room for beside its clients'.
/// Counted on Linux, which uses the most.
const OWN_DESCRIPTORS: usize = 3 // stdin, stdout, stderr (the log)
    + 2 // the signal thread's socket pair
    + 3 // the stream watcher: its poll, the poll's registry, its waker
    + 2 // the listener, and the accept loop's spare (or the connection it refuses)
    + 1 // tiny_http's listener
    + 3 * edge::INTERNAL_CONNECTIONS // each: the edge's end, tiny_http's, and its copy
    + 1 // the watchdog's next probe
    + 1 // the connection that wakes the accept loop at shutdown
    + 1; // the process status file (Linux), read for /metrics one at a time

/// Visitors live mode tracks when `MAX_VISITORS` is unset, if its memory holds them.
const MAX_VISITORS: u64 = 1_000_000;
/// How long live samples are kept when `LIVE_HISTORY` is unset, if its memory holds them.
const LIVE_HISTORY_MS: u64 = 24 * 3_600_000;

/// How live mode counts, from the configuration: its visitors and kept samples must fit
/// live mode's share of the memory budget ([`Budget::live`]).
fn live_settings(config: &Config, budget: &Budget) -> Result<live::Settings, StartError> {
    let interval_ms = config.interval.as_millis().max(1) as u64;
    let sites = config.sites.len() as u64;
    let share = budget.live();
    let mib = |bytes: u64| bytes.div_ceil(1 << 20);
    // Kept samples take half the share at most, so that visitors have the other half.
    let fits = share / 2 / (sites * budget::KEPT_SAMPLE_COST);
    // Less than a minute of samples, or a thousand visitors, is no live mode to run.
    let too_small = |needed: u64| StartError::LiveMemory {
        var: "MEMORY_BUDGET",
        needed_mib: mib(needed),
        share_mib: mib(share),
        advice: format!(
            "give the server at least MEMORY_BUDGET={}M (or a container that large), or set \
             fewer SITES",
            mib(budget::live_budget_for(needed))
        ),
    };
    let minimum = |ticks: u64| sites * ticks * budget::KEPT_SAMPLE_COST;
    if fits * interval_ms < 60_000 || share / 2 / budget::VISITOR_COST < 1000 {
        let needed = 2 * minimum(60_000 / interval_ms).max(1000 * budget::VISITOR_COST);
        return Err(too_small(needed));
    }
    let history_ticks = match config.live_history {
        Some(kept) => kept.as_millis() as u64 / interval_ms,
        None => (LIVE_HISTORY_MS / interval_ms).min(fits),
    };
    if history_ticks > fits {
        return Err(StartError::LiveMemory {
            var: "LIVE_HISTORY",
            needed_mib: mib(sites * history_ticks * budget::KEPT_SAMPLE_COST),
            share_mib: mib(share),
            advice: format!(
                "keep at most {}m of samples for {sites} site(s), set fewer SITES, or leave \
                 LIVE_HISTORY unset",
                fits * interval_ms / 60_000
            ),
        });
    }
    let kept = sites * history_ticks * budget::KEPT_SAMPLE_COST;
    let room = (share - kept) / budget::VISITOR_COST;
    let max_visitors = match config.max_visitors {
        Some(n) if n as u64 > room => {
            return Err(StartError::LiveMemory {
                var: "MAX_VISITORS",
                needed_mib: mib(n as u64 * budget::VISITOR_COST),
                share_mib: mib(share - kept),
                advice: format!("track at most {room} visitors, or leave MAX_VISITORS unset"),
            });
        }
        Some(n) => n,
        None => room.clamp(1, MAX_VISITORS) as usize,
    };
    Ok(live::Settings {
        sites: config.sites.clone(),
        interval: config.interval,
        active_window: config.active_window,
        session_timeout: config.session_timeout,
        max_visitors,
        history_ticks: history_ticks as usize,
    })
}

/// A running server. Dropping it without [`Server::shutdown`] leaves its threads running.
pub struct Server {
    addr: SocketAddr,
    edge: Arc<Edge>,
    http: Arc<tiny_http::Server>,
    /// The accept loop, the generator and the watchdog.
    threads: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    streams: Arc<Streams>,
    stop: Sender<()>,
    /// Disconnected to stop the generator: at shutdown, or by [`Server::stop_generator`].
    generator: Option<Sender<()>>,
    ready: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    failed: Receiver<Failure>,
    caps: Caps,
    budget: Budget,
}

/// Binds, starts tiny_http and its workers, the edge, the generator and the watchdog.
pub fn start(config: &Config) -> Result<Server, StartError> {
    let budget = Budget::new(config.memory_budget, config.cpu_budget);
    let caps = caps(
        config,
        platform::raise_fd_limit(),
        platform::thread_limit(),
        &budget,
    )?;
    let addr = SocketAddr::new(config.host, config.port);
    let listener = listen(addr).map_err(|source| StartError::Listen { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    let part = StartError::part;

    let model = config.model();
    let now = generator::now_ms();
    let first = model.tick_at(now);
    let metrics = Arc::new(Metrics::default());
    let live = match config.mode {
        Mode::Live => {
            let settings = live_settings(config, &budget)?;
            let store = config.redis_url.as_deref().map(Store::new).transpose();
            let store = store.map_err(|e| StartError::Part {
                what: "the Redis client",
                source: Box::new(e),
            })?;
            Some(Arc::new(Live::new(settings, Arc::clone(&metrics), store)))
        }
        Mode::Sim => None,
    };
    let feed = Feed { model, live };
    let openapi = routes::openapi(feed.sites());
    let ready = Arc::new(AtomicBool::new(true));
    let peer_names = PeerNames::new(config.mode == Mode::Live);
    let ctx = Arc::new(Context {
        hubs: feed
            .ticks(first, now)
            .into_iter()
            .map(|tick| Arc::new(Hub::new(tick)))
            .collect(),
        feed,
        chaos: config.chaos,
        metrics: Arc::clone(&metrics),
        ready: Arc::clone(&ready),
        caps,
        default_host: default_host(addr),
        turns: Turns::new(budget.turns),
        openapi,
        peer_names,
        instance: config
            .instance
            .clone()
            .unwrap_or_else(|| format!("{:08x}", rand::random::<u32>())),
    });
    let (stop, stopped) = bounded::<()>(0);
    let (failed_tx, failed) = bounded(WORKERS + 1);
    let streams = Arc::new(Streams {
        ctx: Arc::clone(&ctx),
        max_skipped: config.ws_max_skipped,
        heartbeat: config.heartbeat,
        stopping: AtomicBool::new(false),
        watcher: Watcher::start().map_err(part("the stream watcher"))?,
        clients: AtomicUsize::new(0),
    });

    // tiny_http, on a loopback port that the edge connects to and then closes.
    let private = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| Ok((l.try_clone()?, l)))
        .map_err(part("tiny_http's internal listener"))?;
    let http = Arc::new(
        tiny_http::Server::from_listener(private.1, None).map_err(|source| StartError::Part {
            what: "tiny_http",
            source,
        })?,
    );
    let (clients, acked) = Connections::new();
    let stopping = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        let worker = Worker {
            http: Arc::clone(&http),
            clients: Arc::clone(&clients),
            ctx: Arc::clone(&ctx),
            streams: Arc::clone(&streams),
            cors: config.cors.clone(),
            stopping: Arc::clone(&stopping),
            failed: failed_tx.clone(),
        };
        let handle = thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || worker.run())
            .map_err(part("the HTTP workers"))?;
        workers.push(handle);
    }

    let limits = Limits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        write_timeout: config.write_timeout,
        max_header_bytes: config.max_header_bytes as usize,
        max_connections: caps.http,
        trusted_proxy_hops: config.trusted_proxy_hops,
        peer_names,
        fleet_digests: config.redis_url.is_some(),
    };
    let edge = Arc::new(
        Edge::new(
            listener,
            private.0,
            (clients, acked),
            limits,
            config.cors.clone(),
            ctx.turns.clone(),
            Arc::clone(&metrics),
        )
        .map_err(part("the edge"))?,
    );
    let (generator, generator_stopped) = bounded::<()>(0);
    let progress = Arc::clone(&metrics);
    let threads = vec![
        edge.spawn().map_err(part("the accept loop"))?,
        generator::spawn(
            ctx.feed.clone(),
            first,
            ctx.hubs.clone(),
            metrics,
            generator_stopped,
        )
        .map_err(part("the generator"))?,
        watchdog::spawn(
            edge::loopback(addr),
            stopped,
            move || watchdog::Progress {
                decided: progress.requests_decided(),
                published: progress.samples_published(),
            },
            move |e| {
                let _ = failed_tx.try_send(Failure::Unresponsive(e));
            },
        )
        .map_err(part("the watchdog"))?,
    ];
    Ok(Server {
        addr,
        edge,
        http,
        threads,
        workers,
        streams,
        stop,
        generator: Some(generator),
        ready,
        stopping,
        failed,
        caps,
        budget,
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

    /// This instance's name (`INSTANCE`, or drawn at start), as the welcome and `/` say it.
    pub fn instance(&self) -> &str {
        &self.streams.ctx.instance
    }

    /// Receives a message if the server can no longer serve (tiny_http's workers lost
    /// their queue, or the watchdog's probes went unanswered). The process should then
    /// exit non-zero so that it is restarted.
    pub fn failed(&self) -> &Receiver<Failure> {
        &self.failed
    }

    /// The loopback address tiny_http listened on behind the edge, closed once the edge's
    /// connections to it were open: for tests that try to reach it as another local
    /// process would. `None` only for a listener that is not TCP.
    #[doc(hidden)]
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.http.server_addr().to_ip()
    }

    /// Open streaming connections (WebSocket and SSE).
    pub fn stream_clients(&self) -> usize {
        self.streams.clients()
    }

    /// In live mode, what it counts and keeps, for the start-up log.
    pub fn live_summary(&self) -> Option<String> {
        let live = self.streams.ctx.feed.live.as_ref()?;
        let s = &live.settings;
        let kept = s.interval * s.history_ticks as u32;
        let state = live.redis().map_or("in this process".to_string(), |url| {
            format!("in Redis at {url}")
        });
        Some(format!(
            "live mode: SITES={} MAX_VISITORS={}, samples kept {} min, active window {} s, \
             sessions end after {} s idle, state {state}",
            s.sites.join(","),
            s.max_visitors,
            kept.as_secs() / 60,
            s.active_window.as_secs(),
            s.session_timeout.as_secs(),
        ))
    }

    /// The caps in force, derived or configured.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// The memory budget in force and the bounds derived from it.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Stops the generator, as a bug or a stuck thread would: no sample is published any
    /// more, and `/healthz` turns 503 two intervals later (so the watchdog restarts the
    /// process). For tests of exactly that.
    pub fn stop_generator(&mut self) {
        self.generator = None;
    }

    /// Graceful shutdown: `/readyz` turns 503 and new streams are refused; every stream
    /// gets its close (1001, or `event: close`) with a randomised reconnect delay (up to
    /// 5 s are given to the close handshakes); then the edge stops accepting and closes
    /// the HTTP connections, and the workers stop.
    pub fn shutdown(self) {
        self.ready.store(false, Ordering::SeqCst);
        self.streams.stop();
        drop(self.stop);
        drop(self.generator);
        let deadline = Instant::now() + DRAIN;
        while self.streams.clients() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        self.edge.stop();
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
    socket.bind(&addr.into())?;
    // A deep backlog: a burst of dashboards reconnecting after a deploy must not see SYN
    // drops.
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The caps in force: configured, or derived from what the process can hold: at most
/// `descriptors` open at once (`RLIMIT_NOFILE`), `threads`, and the `memory` budget's
/// share for each kind of client. Each client costs one descriptor and one thread, and so
/// does each place kept for health probes (`edge::PROBE_PLACES`); the server keeps
/// `OWN_DESCRIPTORS` for itself. A fifth of what is left goes to HTTP connections, the
/// rest to streams. Configured caps the limits cannot hold are lowered, with a warning:
/// refusing clients with 503 beats running out of descriptors, or being killed for
/// memory. A descriptor limit that cannot hold one client of each kind is an error.
fn caps(
    config: &Config,
    descriptors: Option<u64>,
    threads: Option<usize>,
    memory: &Budget,
) -> Result<Caps, StartError> {
    let reserved = OWN_DESCRIPTORS + edge::PROBE_PLACES;
    let minimum = reserved + 2;
    if let Some(limit) = descriptors.filter(|&n| n < minimum as u64) {
        return Err(StartError::DescriptorLimit { limit, minimum });
    }
    // At least one client of each kind: the descriptors were checked above, and a thread
    // budget lower than that (vm.max_map_count under 2010) is not worth refusing to start.
    let budget = [
        descriptors.map(|n| usize::try_from(n).unwrap_or(usize::MAX) - reserved),
        threads.map(|n| n.saturating_sub(edge::PROBE_PLACES)),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(200_000)
    .max(2);
    // HTTP connections first: a fifth of the budget, or as configured, within their share
    // of the memory; then streams, within what is left and their share.
    let mut http = config
        .max_http_connections
        .unwrap_or(budget / 5)
        .min(memory.http);
    if http >= budget {
        http = budget / 5;
    }
    let http = http.max(1);
    let ws = config
        .max_ws_clients
        .unwrap_or(usize::MAX)
        .min(budget - http)
        .min(memory.streams)
        .max(1);
    let lowered = |configured: Option<usize>, used| configured.is_some_and(|c| c > used);
    if lowered(config.max_ws_clients, ws) || lowered(config.max_http_connections, http) {
        log::warn!(
            "MAX_WS_CLIENTS and MAX_HTTP_CONNECTIONS as configured need more than this process \
             may have ({budget} clients by its open-file and thread limits; a memory budget of \
             {} MiB, {}); using {ws} and {http}. Raise the open-file limit (ulimit -n) or \
             MEMORY_BUDGET to allow more.",
            memory.memory >> 20,
            memory.source,
        );
    } else if budget < 200 {
        log::warn!(
            "the open-file or thread limit allows only {budget} clients; raise it (ulimit -n) \
             to serve more"
        );
    }
    Ok(Caps { streams: ws, http })
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
    clients: Arc<Connections>,
    ctx: Arc<Context>,
    streams: Arc<Streams>,
    cors: Cors,
    stopping: Arc<AtomicBool>,
    failed: Sender<Failure>,
}

/// What every reply gets on its way out: counted, logged unless it succeeded, and
/// given its CORS headers. Borrows what it needs of the request; a reply computed later
/// outlives the request and takes an owned copy ([`Settlement::into_owned`]).
struct Settlement<'r> {
    metrics: Arc<Metrics>,
    cors: Cow<'r, Cors>,
    origin: Option<Cow<'r, str>>,
    /// The method and target, for the log.
    method: Method,
    target: Cow<'r, str>,
    /// The peer, for the log: none for an event, whose sender is a site's visitor.
    peer: Option<String>,
    /// The route, for the metrics and the log.
    route: Option<Route>,
}

impl Settlement<'_> {
    fn reply(self, reply: Reply) -> Reply {
        let status = reply.status_code().0;
        self.metrics
            .request(self.route.map_or("other", Route::path), status);
        // `/readyz`'s 503 is a state whose start and end are logged (shutdown, Redis
        // failing), not once per health check.
        let state = self.route == Some(Route::Ready) && status == 503;
        if !(200..400).contains(&status) && !state {
            let level = if status >= 500 {
                log::Level::Warn
            } else {
                log::Level::Info
            };
            let peer = self.peer.map_or(String::new(), |p| format!(" peer={p}"));
            log::log!(
                level,
                "{} {} -> {status}{peer}",
                http::printable(self.method.as_str()),
                http::printable(self.target.as_ref()),
            );
        }
        http::with_cors(reply, &self.cors, self.origin.as_deref())
    }

    fn into_owned(self) -> Settlement<'static> {
        Settlement {
            metrics: self.metrics,
            cors: Cow::Owned(self.cors.into_owned()),
            origin: self.origin.map(|o| Cow::Owned(o.into_owned())),
            method: self.method,
            target: Cow::Owned(self.target.into_owned()),
            peer: self.peer,
            route: self.route,
        }
    }
}

impl Worker {
    fn run(self) {
        loop {
            match self.http.recv() {
                Ok(request) => self.handle(request),
                Err(_) if self.stopping.load(Ordering::SeqCst) => return,
                // tiny_http's accept loop ends this way once the edge closed its listener.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.clients.accept_loop_ended();
                }
                Err(e) => {
                    let failure = Failure::Workers(e);
                    log::error!("{failure}");
                    let _ = self.failed.try_send(failure);
                    return;
                }
            }
        }
    }

    fn handle(&self, mut request: Request) {
        let Some((client, hop)) = self.clients.find(&request) else {
            edge::finish(request);
            return;
        };
        // Only an event's body is ever forwarded, whole and bounded by the edge: reading
        // it waits on nothing.
        let mut body = Vec::new();
        if request.body_length().is_some_and(|n| n > 0) {
            let limit = paths::MAX_EVENT_BODY;
            let _ = request.as_reader().take(limit).read_to_end(&mut body);
        }
        let read = ClientRequest::read(&request, client.peer, hop, body, &self.ctx);
        let decision = match self.decide(&read) {
            Decision::Reply(reply, delay) => {
                Decision::Reply(self.settle(&read).reply(reply), delay)
            }
            Decision::Later(answer) => {
                let settle = self.settle(&read).into_owned();
                Decision::Later(Box::new(move || {
                    let ((reply, delay), pieces) = answer();
                    ((settle.reply(reply), delay), pieces)
                }))
            }
            stream => stream,
        };
        drop(read);
        self.ctx.metrics.decided();
        client.decide(request, decision);
    }

    /// The one decision: a WebSocket upgrade, an event stream, or REST.
    fn decide(&self, request: &ClientRequest) -> Decision {
        if request.repeated == Some("Origin") {
            let refusal = http::error(
                400,
                "bad_request",
                "Origin is sent twice: a request comes from one page (RFC 6454 §7.3). Send \
                 it once.",
                &[],
            );
            return Decision::Reply(refusal, Duration::ZERO);
        }
        if request.hop.body {
            return Decision::Reply(routes::body_not_accepted(request), Duration::ZERO);
        }
        let stream = if request.websocket {
            self.websocket(request)
        } else if request.route.is_some_and(Route::sends_samples) && request.event_stream {
            self.event_stream(request)
        } else {
            return routes::handle(request, &self.ctx);
        };
        stream.map_or_else(
            |reply| Decision::Reply(reply, Duration::ZERO),
            Decision::Stream,
        )
    }

    fn websocket(&self, request: &ClientRequest) -> Result<StreamFn, Reply> {
        let route = request
            .route
            .filter(|r| r.websocket())
            .ok_or_else(|| routes::not_found(request))?;
        let refused = |refusal: Refusal| refusal.reply();
        self.allowed_origin(request).map_err(refused)?;
        let accept = ws::handshake(request).map_err(refused)?;
        // A refusal takes a slot too: its connection is a WebSocket until it closes.
        let slot = self.streams.reserve().map_err(refused)?;
        Ok(match request.options.clone() {
            Ok(options) => ws::session(accept, slot, route, options, self.peer(request)),
            Err(invalid) => ws::refusal(accept, slot, invalid, self.peer(request)),
        })
    }

    fn event_stream(&self, request: &ClientRequest) -> Result<StreamFn, Reply> {
        let options = request.options.clone().map_err(|e| e.reply())?;
        let slot = self.streams.reserve().map_err(|r| r.reply())?;
        let cors = http::cors_headers(&self.cors, request.origin);
        Ok(sse::session(slot, options, cors, self.peer(request)))
    }

    /// The request's peer, as the log names it.
    fn peer(&self, request: &ClientRequest) -> String {
        self.ctx.peer_names.name(request.peer)
    }

    /// With a `CORS_ORIGINS` allowlist, a browser's upgrade from another origin is refused
    /// (browsers do not apply CORS to WebSockets; the server must). Clients that send no
    /// `Origin` are not browsers and are let in.
    fn allowed_origin(&self, request: &ClientRequest) -> Result<(), Refusal> {
        match (&self.cors, request.origin) {
            (Cors::Only(allowed), Some(origin)) if !allowed.iter().any(|a| a == origin) => {
                Err(Refusal::OriginNotAllowed(origin.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// How this request's reply will be settled (see [`Settlement`]).
    /// Events are answered to any origin, whatever `CORS_ORIGINS` says: `SITES` decides
    /// which sites may send them, and their answers tell a page nothing.
    fn settle<'r>(&'r self, request: &ClientRequest<'r>) -> Settlement<'r> {
        let event = request.route == Some(Route::Event);
        Settlement {
            metrics: Arc::clone(&self.ctx.metrics),
            cors: if event {
                Cow::Owned(Cors::Any)
            } else {
                Cow::Borrowed(&self.cors)
            },
            origin: request.origin.map(Cow::Borrowed),
            method: request.method.clone(),
            target: Cow::Borrowed(request.target),
            // A site's visitor is never logged, not even by a digest.
            peer: (!event).then(|| self.ctx.peer_names.name(request.peer)),
            route: request.route,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_caps_fill_the_descriptor_limit_beside_the_servers_own() {
        let unbounded = Budget::of(1 << 50, "MEMORY_BUDGET", 2.0);
        let derived = Config::default();
        let wanted = Config {
            max_http_connections: Some(1000),
            max_ws_clients: Some(1000),
            ..Config::default()
        };
        // (configuration, descriptors, threads) -> (streams, HTTP connections)
        for (config, descriptors, threads, expected) in [
            (&derived, Some(30), None, (1, 1)),
            (&derived, Some(64), None, (29, 7)),
            // The thread budget, when it is the lower.
            (&derived, Some(1 << 20), Some(102), (80, 20)),
            (&derived, None, None, (160_000, 40_000)),
            // Configured caps the descriptors cannot hold are lowered.
            (&wanted, Some(64), None, (29, 7)),
            (&wanted, Some(4096), None, (1000, 1000)),
        ] {
            let c = caps(config, descriptors, threads, &unbounded).unwrap();
            assert_eq!((c.streams, c.http), expected, "{descriptors:?} {threads:?}");
        }
        for limit in [30, 31, 64, 1024, 1 << 20] {
            let c = caps(&derived, Some(limit), None, &unbounded).unwrap();
            let used = c.streams + c.http + OWN_DESCRIPTORS + edge::PROBE_PLACES;
            assert_eq!(used as u64, limit, "{c:?}");
        }
        assert!(matches!(
            caps(&derived, Some(29), None, &unbounded),
            Err(StartError::DescriptorLimit {
                limit: 29,
                minimum: 30
            })
        ));
    }

    #[test]
    fn live_state_fits_its_share_of_the_memory_budget() {
        let budget = Budget::of(512 << 20, "test", 0.1);
        let config = |sites: usize, history: Option<u64>, visitors: Option<usize>| Config {
            sites: (0..sites).map(|i| format!("s{i}.example")).collect(),
            live_history: history.map(|h| Duration::from_secs(h * 3600)),
            max_visitors: visitors,
            ..Config::default()
        };
        let fits = |s: &live::Settings| {
            s.sites.len() as u64 * s.history_ticks as u64 * budget::KEPT_SAMPLE_COST
                + s.max_visitors as u64 * budget::VISITOR_COST
                <= budget.live()
        };
        let one = live_settings(&config(1, None, None), &budget).unwrap();
        assert_eq!(one.history_ticks, 24 * 2400, "a day of 1.5 s ticks");
        assert!(one.max_visitors > 200_000 && fits(&one), "{one:?}");
        let eight = live_settings(&config(8, None, None), &budget).unwrap();
        assert!(
            eight.history_ticks < one.history_ticks && fits(&eight),
            "{eight:?}"
        );
        let big = Budget::of(64 << 30, "test", 2.0);
        let roomy = live_settings(&config(1, None, None), &big).unwrap();
        assert_eq!(roomy.max_visitors, 1_000_000);
        let tiny = Budget::of(16 << 20, "test", 0.1);
        for (config, budget, var) in [
            (config(1, Some(7 * 24), None), &budget, "LIVE_HISTORY"),
            (config(1, None, Some(10_000_000)), &budget, "MAX_VISITORS"),
            (config(1, None, None), &tiny, "MEMORY_BUDGET"),
        ] {
            match live_settings(&config, budget) {
                Err(e @ StartError::LiveMemory { var: v, .. }) => {
                    assert_eq!(v, var);
                    assert_eq!(e.exit_status(), 2);
                    assert!(e.to_string().contains(var), "{e}");
                }
                other => panic!("{var}: {other:?}"),
            }
        }
    }

    #[test]
    fn derived_and_configured_caps_fit_the_memory_budget() {
        let budget = Budget::of(512 << 20, "cgroup limit", 0.1);
        let c = caps(&Config::default(), Some(1 << 20), None, &budget).unwrap();
        assert_eq!((c.streams, c.http), (budget.streams, budget.http));
        let wanted = Config {
            max_ws_clients: Some(100_000),
            max_http_connections: Some(100),
            ..Config::default()
        };
        let c = caps(&wanted, Some(1 << 20), None, &budget).unwrap();
        assert_eq!((c.streams, c.http), (budget.streams, 100));
        // An HTTP cap past what the memory holds takes nothing from the streams.
        let wanted = Config {
            max_http_connections: Some(100_000),
            ..Config::default()
        };
        for limit in [Some(1 << 20), None] {
            let c = caps(&wanted, limit, None, &budget).unwrap();
            assert_eq!((c.streams, c.http), (budget.streams, budget.http));
        }
        let c = caps(
            &wanted,
            Some(12_732),
            None,
            &Budget::of(1 << 40, "test", 2.0),
        )
        .unwrap();
        assert_eq!((c.streams, c.http), (10_164, 2_540));
    }
}
