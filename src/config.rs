//! Configuration from environment variables, validated up front.
//!
//! Every variable has a default that works on a laptop and on Render, so a plain
//! `cargo run --release` needs none of them. A bad value stops the process before it
//! binds a port, with one line that names the variable, the value and what is allowed:
//! a typo in a dashboard's deploy settings should fail the deploy, not start a server
//! that silently does something else. A value that is not UTF-8 is bad too, never taken
//! for unset (an unreadable `CORS_ORIGINS` must not allow every origin).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use log::LevelFilter;

use crate::chaos;
pub use crate::http::Cors;
use crate::http::printable;
use crate::options;
use crate::simulator::{self, Profile, Scenario};

/// The seed used when `SEED` is unset, so that a fresh start is reproducible.
pub const DEFAULT_SEED: u64 = 20_250_412;

/// Everything the server needs to start. Build it with [`Config::from_env`] in the
/// binary, or from [`Config::default`] in tests (then set `port: 0`).
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST`: the address to listen on.
    pub host: IpAddr,
    /// `PORT`: the TCP port; 0 picks a free one (its number is in the startup log line).
    pub port: u16,
    /// `INTERVAL_MS`: time between two samples.
    pub interval: Duration,
    /// `SEED`: the simulator's seed; same seed, same samples.
    pub seed: u64,
    /// `PROFILE`: the simulated site's scale and rhythm.
    pub profile: Profile,
    /// `SCENARIO`: the shape imposed on the shared stream.
    pub scenario: Scenario,
    /// `UTC_OFFSET_HOURS`: the simulated audience's time zone (where the daily peak falls).
    pub utc_offset_hours: f64,
    /// `LOG_LEVEL`: error, warn, info, debug or trace.
    pub log_level: LevelFilter,
    /// `CORS_ORIGINS`: which browser origins may read the responses.
    pub cors: Cors,
    /// `MAX_WS_CLIENTS`: open streams (WebSocket and SSE) beyond this are refused with 503.
    /// `None`: derived at startup from the descriptor and memory-map limits.
    pub max_ws_clients: Option<usize>,
    /// `MAX_HTTP_CONNECTIONS`: HTTP connections beyond this are refused with 503. `None`:
    /// derived like `max_ws_clients`.
    pub max_http_connections: Option<usize>,
    /// `MEMORY_BUDGET`: the memory every server-wide bound is a share of (see `budget`).
    /// `None`: the container's limit, else physical memory.
    pub memory_budget: Option<u64>,
    /// `CPU_BUDGET`: the CPUs the turns are derived from (see `budget`). `None`: the
    /// container's quota, else the cores.
    pub cpu_budget: Option<f64>,
    /// `IDLE_TIMEOUT_MS`: a keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// `HEADER_TIMEOUT_MS`: a request head must arrive within this (408 otherwise).
    pub header_timeout: Duration,
    /// `WRITE_TIMEOUT_MS`: a client that takes none of a response for this long is
    /// dropped.
    pub write_timeout: Duration,
    /// `MAX_HEADER_BYTES`: a larger request head is refused with 431.
    pub max_header_bytes: u64,
    /// `WS_MAX_SKIPPED`: consecutive samples a client may fail to accept before it is
    /// closed with 1008.
    pub ws_max_skipped: u32,
    /// `HEARTBEAT_MS`: a stream with nothing to send for this long gets a keep-alive (SSE:
    /// a comment line; WebSocket: a ping), so that proxies do not close it.
    pub heartbeat: Duration,
    /// `CHAOS` and `CHAOS_SEED`: delivery faults for every client that asks for none.
    pub chaos: chaos::Defaults,
    /// `INSTANCE`: this instance's name in the welcome and at `/`. `None`: a random one,
    /// drawn at start.
    pub instance: Option<String>,
    /// `MODE`: simulated traffic, or real sites' events.
    pub mode: Mode,
    /// `SITES`: the domains live mode counts, lowercased (required with `MODE=live`).
    pub sites: Vec<String>,
    /// `TRUSTED_PROXY_HOPS`: proxies in front whose `X-Forwarded-For` names the client.
    pub trusted_proxy_hops: usize,
    /// `MAX_VISITORS`: visitors live mode tracks at most. `None`: derived from the
    /// memory budget, at most 1 000 000.
    pub max_visitors: Option<usize>,
    /// `LIVE_HISTORY`: how long live samples are kept. `None`: derived, 24 hours or as
    /// long as live mode's share of the memory budget holds.
    pub live_history: Option<Duration>,
    /// `ACTIVE_WINDOW`: a visitor is active this long after its last event.
    pub active_window: Duration,
    /// `SESSION_TIMEOUT`: a session ends this long after its last event.
    pub session_timeout: Duration,
    /// `REDIS_URL`: where live mode keeps its state for several instances. `None`: in
    /// this process.
    pub redis_url: Option<String>,
    /// Variables set that mean nothing in this mode (the other mode's), for the start-up
    /// log to name.
    pub ignored: Vec<&'static str>,
}

/// Variables only the simulator reads.
const SIM_ONLY: [&str; 4] = ["SEED", "PROFILE", "SCENARIO", "UTC_OFFSET_HOURS"];
/// Variables only live mode reads (`SITES` and `REDIS_URL` are refused in sim mode).
const LIVE_ONLY: [&str; 4] = [
    "MAX_VISITORS",
    "LIVE_HISTORY",
    "ACTIVE_WINDOW",
    "SESSION_TIMEOUT",
];

/// Where samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The simulator (the default).
    Sim,
    /// Events from real sites (`POST /api/event`).
    Live,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sim => "sim",
            Mode::Live => "live",
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 4000,
            interval: Duration::from_millis(1500),
            seed: DEFAULT_SEED,
            profile: Profile::Blog,
            scenario: Scenario::Normal,
            utc_offset_hours: 0.0,
            log_level: LevelFilter::Info,
            cors: Cors::Any,
            max_ws_clients: None,
            max_http_connections: None,
            memory_budget: None,
            cpu_budget: None,
            idle_timeout: Duration::from_secs(75),
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            ws_max_skipped: 20,
            heartbeat: Duration::from_secs(15),
            chaos: chaos::Defaults::default(),
            instance: None,
            mode: Mode::Sim,
            sites: Vec::new(),
            redis_url: None,
            trusted_proxy_hops: 0,
            max_visitors: None,
            live_history: None,
            active_window: Duration::from_secs(5 * 60),
            session_timeout: Duration::from_secs(30 * 60),
            ignored: Vec::new(),
        }
    }
}

/// A variable whose value is not allowed. Its `Display` is the whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    /// The value as the message shows it: escaped, and cut to a few dozen characters
    /// (a value can be of any size).
    pub value: String,
    /// The value is not UTF-8 text.
    pub not_utf8: bool,
    /// What is allowed, and what to do.
    pub allowed: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not_utf8 = if self.not_utf8 {
            "not valid UTF-8; "
        } else {
            ""
        };
        write!(
            f,
            "invalid {}=\"{}\": {not_utf8}expected {}",
            self.var, self.value, self.allowed
        )
    }
}

impl std::error::Error for ConfigError {}

/// One environment variable, defined once: parsing, the error message, `--help` and the
/// README's configuration table (checked by `tests/docs.rs`) all come from here.
pub struct Var {
    pub name: &'static str,
    /// The default, as people read it (the value [`Config::default`] holds).
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
    kind: Kind,
}

enum Kind {
    /// An integer within `lo..=hi`.
    Integer {
        lo: u64,
        hi: u64,
        set: fn(&mut Config, u64),
    },
    /// Anything else: what is allowed, and a parser that sets it (`None`: not allowed).
    Text {
        allowed: &'static str,
        set: fn(&mut Config, &str) -> Option<()>,
    },
}

impl Var {
    /// What a value may be, as the error message and the README say it.
    pub fn allowed(&self) -> String {
        match self.kind {
            Kind::Integer { lo, hi, .. } => format!("an integer from {lo} to {hi}"),
            Kind::Text { allowed, .. } => allowed.to_string(),
        }
    }

    fn apply(&self, config: &mut Config, value: &str) -> Result<(), ConfigError> {
        let set = match self.kind {
            Kind::Integer { lo, hi, set } => value
                .parse()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .map(|n| set(config, n)),
            Kind::Text { set, .. } => set(config, value),
        };
        set.ok_or_else(|| self.refuse(value.as_bytes(), false))
    }

    /// The error for a value of this variable that cannot be used.
    fn refuse(&self, value: &[u8], not_utf8: bool) -> ConfigError {
        let value = printable(value);
        ConfigError {
            var: self.name,
            value: match self.name {
                "REDIS_URL" => without_password(&value),
                _ => value,
            },
            not_utf8,
            allowed: format!("{} (unset it to use the default)", self.allowed()),
        }
    }
}

const fn integer(
    name: &'static str,
    default: &'static str,
    (lo, hi): (u64, u64),
    doc: &'static str,
    set: fn(&mut Config, u64),
) -> Var {
    Var {
        name,
        default,
        doc,
        kind: Kind::Integer { lo, hi, set },
    }
}

const fn text(
    name: &'static str,
    default: &'static str,
    allowed: &'static str,
    doc: &'static str,
    set: fn(&mut Config, &str) -> Option<()>,
) -> Var {
    Var {
        name,
        default,
        doc,
        kind: Kind::Text { allowed, set },
    }
}

/// Every variable the server reads, in the order people look for them.
pub const VARS: [Var; 30] = [
    integer(
        "PORT",
        "4000",
        (0, 65_535),
        "TCP port (Render sets it); 0 picks a free port, printed in the startup line",
        |c, n| c.port = n as u16,
    ),
    text(
        "HOST",
        "0.0.0.0",
        "an IP address such as 0.0.0.0, 127.0.0.1 or ::",
        "address to listen on; :: listens on IPv6 and IPv4",
        |c, s| {
            c.host = s.parse().ok()?;
            Some(())
        },
    ),
    integer(
        "INTERVAL_MS",
        "1500",
        (100, 60_000),
        "time between samples, in milliseconds",
        |c, n| c.interval = Duration::from_millis(n),
    ),
    text(
        "INSTANCE",
        "random",
        "1 to 64 letters, digits, '.', '_' or '-', or \"random\"",
        "this instance's name in the welcome and at /, so that a client behind a load balancer sees which instance it reached; random: 8 hex digits drawn at start",
        |c, s| {
            let name = |s: &str| {
                s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            };
            c.instance = match s {
                "random" => None,
                _ if name(s) => Some(s.to_string()),
                _ => return None,
            };
            Some(())
        },
    ),
    text(
        "MODE",
        "sim",
        "one of sim, live",
        "sim: simulated traffic; live: page views that sites send to POST /api/event (set SITES too)",
        |c, s| {
            c.mode = match s {
                "sim" => Mode::Sim,
                "live" => Mode::Live,
                _ => return None,
            };
            Some(())
        },
    ),
    text(
        "SITES",
        "none",
        "a comma-separated list of up to 8 domains such as example.com,shop.example.com, or none",
        "the sites live mode counts, as their trackers name them (data-domain); ?site= picks one, the first by default. Required with MODE=live, refused without it",
        |c, s| {
            c.sites = match s {
                "none" => Vec::new(),
                _ => parse_sites(s)?,
            };
            Some(())
        },
    ),
    integer(
        "TRUSTED_PROXY_HOPS",
        "0",
        (0, 10),
        "proxies in front of the server whose X-Forwarded-For names the client (Render: 1); with 0 the header is ignored and the client is the socket's peer",
        |c, n| c.trusted_proxy_hops = n as usize,
    ),
    integer(
        "MAX_VISITORS",
        "derived",
        (1, 10_000_000),
        "visitors live mode tracks at most; past it, the longest idle is forgotten; derived when unset: 1000000, or as many as live mode's share of the memory budget holds",
        |c, n| c.max_visitors = Some(n as usize),
    ),
    text(
        "LIVE_HISTORY",
        "derived",
        "a duration from 1m to 7d such as 90m or 24h",
        "how long live samples are kept for history and resumes; derived when unset: 24h, or as long as half of live mode's share of the memory budget holds (the start-up log says)",
        |c, s| {
            c.live_history = Some(duration(s, 60_000, 7 * 86_400_000)?);
            Some(())
        },
    ),
    text(
        "ACTIVE_WINDOW",
        "5m",
        "a duration from 1s to 1h such as 5m, at most SESSION_TIMEOUT",
        "live mode: a visitor counts in active_users this long after its last event",
        |c, s| {
            c.active_window = duration(s, 1000, 3_600_000)?;
            Some(())
        },
    ),
    text(
        "SESSION_TIMEOUT",
        "30m",
        "a duration from 1s to 1d such as 30m, at least ACTIVE_WINDOW",
        "live mode: a session ends this long after its last event",
        |c, s| {
            c.session_timeout = duration(s, 1000, 86_400_000)?;
            Some(())
        },
    ),
    text(
        "REDIS_URL",
        "unset",
        "redis://[[user]:password@]host[:port][/db], or \"unset\"",
        "live mode: the Redis (7 or later, or Valkey) where several instances keep their state, so that each serves the same samples; unset: the state is in this process",
        |c, s| {
            c.redis_url = match s {
                "unset" => None,
                // The client takes it: a database that is no number is refused here.
                url if url.starts_with("redis://") && redis::Client::open(url).is_ok() => {
                    Some(url.to_string())
                }
                _ => return None,
            };
            Some(())
        },
    ),
    text(
        "SEED",
        "20250412",
        "an integer from 0 to 18446744073709551615, or \"random\"",
        "simulator seed: same seed, same samples at the same time",
        |c, s| {
            c.seed = if s == "random" {
                rand::random()
            } else {
                s.parse().ok()?
            };
            Some(())
        },
    ),
    text(
        "PROFILE",
        "blog",
        "one of blog, shop, news",
        "the simulated site's scale and rhythm (a client may pick another with ?profile=)",
        |c, s| {
            c.profile = simulator::parse(&Profile::ALL, Profile::name, s)?;
            Some(())
        },
    ),
    text(
        "SCENARIO",
        "normal",
        "one of normal, spike, outage, flatline, ramp",
        "the shape of the shared stream (a client may pick another with ?scenario=)",
        |c, s| {
            c.scenario = simulator::parse(&Scenario::ALL, Scenario::name, s)?;
            Some(())
        },
    ),
    text(
        "UTC_OFFSET_HOURS",
        "0",
        "a number of hours from -12 to 14, such as 5.5",
        "the simulated audience's time zone: where the daily peak falls",
        |c, s| {
            c.utc_offset_hours = s
                .parse()
                .ok()
                .filter(|h: &f64| (-12.0..=14.0).contains(h))?;
            Some(())
        },
    ),
    text(
        "CHAOS",
        "off",
        chaos::GRAMMAR,
        "delivery faults for every client, for a deployment dedicated to testing dashboards; a client's own ?chaos= overrides it, ?chaos=off turns it off",
        |c, s| {
            c.chaos.faults = options::faults(s).ok()?;
            Some(())
        },
    ),
    text(
        "CHAOS_SEED",
        "random",
        "an integer from 0 to 18446744073709551615, or \"random\"",
        "the seed of CHAOS's decisions; random: each stream or request draws its own and reports it",
        |c, s| {
            c.chaos.seed = if s == "random" {
                None
            } else {
                Some(s.parse().ok()?)
            };
            Some(())
        },
    ),
    text(
        "LOG_LEVEL",
        "info",
        "one of error, warn, info, debug, trace, off",
        "log verbosity (stderr)",
        |c, s| {
            c.log_level = s.parse().ok()?;
            Some(())
        },
    ),
    text(
        "CORS_ORIGINS",
        "*",
        "* or a comma-separated list of origins such as https://app.example.com",
        "which browser origins may read the responses",
        |c, s| {
            c.cors = parse_cors(s)?;
            Some(())
        },
    ),
    integer(
        "MAX_WS_CLIENTS",
        "derived",
        (1, 100_000),
        "open streams (WebSocket and SSE together) beyond this get 503; derived from the descriptor and thread limits and the memory budget when unset",
        |c, n| c.max_ws_clients = Some(n as usize),
    ),
    integer(
        "MAX_HTTP_CONNECTIONS",
        "derived",
        (1, 100_000),
        "HTTP connections beyond this get 503; derived like MAX_WS_CLIENTS when unset",
        |c, n| c.max_http_connections = Some(n as usize),
    ),
    text(
        "MEMORY_BUDGET",
        "derived",
        "a size from 16M to 1024G, such as 512M or 2G (K, M and G are powers of 1024)",
        "the memory every server-wide bound is a share of (the start-up log prints them); derived from the container's memory limit (cgroup v1 or v2), else physical memory, when unset",
        |c, s| {
            c.memory_budget = Some(parse_size(s).filter(|n| (16 << 20..=1 << 40).contains(n))?);
            Some(())
        },
    ),
    text(
        "CPU_BUDGET",
        "derived",
        "a number of CPUs from 0.01 to 1024, such as 0.1 or 2",
        "the CPU the server's turns are derived from (requests and encodings worked on at once, 64 per CPU, 4 to 256); derived from the container's CPU quota (cgroup v1 or v2), else the cores, when unset",
        |c, s| {
            let cpus = s
                .parse::<f64>()
                .ok()
                .filter(|n| (0.01..=1024.0).contains(n))?;
            c.cpu_budget = Some(cpus);
            Some(())
        },
    ),
    integer(
        "WS_MAX_SKIPPED",
        "20",
        (1, 10_000),
        "samples a non-reading client may miss in a row before it is closed (1008, or event: close)",
        |c, n| c.ws_max_skipped = n as u32,
    ),
    integer(
        "HEARTBEAT_MS",
        "15000",
        (1000, 600_000),
        "a stream with nothing to send for this long gets a keep-alive (SSE: a `: keep-alive` comment; WebSocket: a ping); keep it under your proxy's idle timeout",
        |c, n| c.heartbeat = Duration::from_millis(n),
    ),
    integer(
        "IDLE_TIMEOUT_MS",
        "75000",
        (1000, 3_600_000),
        "a keep-alive connection with no request for this long is closed",
        |c, n| c.idle_timeout = Duration::from_millis(n),
    ),
    integer(
        "HEADER_TIMEOUT_MS",
        "10000",
        (500, 600_000),
        "a request head must be complete this long after connecting or after its first byte (408)",
        |c, n| c.header_timeout = Duration::from_millis(n),
    ),
    integer(
        "WRITE_TIMEOUT_MS",
        "10000",
        (500, 600_000),
        "a client that takes none of a response for this long is dropped",
        |c, n| c.write_timeout = Duration::from_millis(n),
    ),
    integer(
        "MAX_HEADER_BYTES",
        "16384",
        (1024, 1_048_576),
        "larger request heads get 431",
        |c, n| c.max_header_bytes = n,
    ),
];

impl Config {
    /// The traffic model this configuration describes.
    pub fn model(&self) -> simulator::Model {
        simulator::Model {
            seed: self.seed,
            interval: self.interval,
            profile: self.profile,
            scenario: self.scenario,
            utc_offset_hours: self.utc_offset_hours,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(|name| std::env::var_os(name).map(|v| v.into_encoded_bytes()))
    }

    /// Reads variables through `get`, which gives a value's bytes as the OS holds them
    /// (UTF-8 when the value is text), so tests need not touch the process environment.
    /// A value that is not UTF-8 is refused like any other invalid value.
    pub fn from_vars(get: impl Fn(&str) -> Option<Vec<u8>>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut set = Vec::new();
        for var in &VARS {
            let Some(raw) = get(var.name) else {
                continue;
            };
            let value = std::str::from_utf8(&raw).map_err(|_| var.refuse(&raw, true))?;
            // An empty value counts as unset: Render's dashboard and shells produce them.
            if !value.trim().is_empty() {
                var.apply(&mut config, value.trim())?;
                set.push(var.name);
            }
        }
        config.check_live()?;
        // Kept set, such as a blueprint's SEED when MODE=live is added: said, not refused.
        let other_mode = match config.mode {
            Mode::Sim => LIVE_ONLY,
            Mode::Live => SIM_ONLY,
        };
        config.ignored = set.into_iter().filter(|v| other_mode.contains(v)).collect();
        Ok(config)
    }

    /// What live mode's variables require of each other.
    fn check_live(&self) -> Result<(), ConfigError> {
        let refuse = |var, value: String, allowed: &str| {
            Err(ConfigError {
                var,
                value: printable(value),
                not_utf8: false,
                allowed: allowed.into(),
            })
        };
        if self.mode == Mode::Live && self.sites.is_empty() {
            return refuse(
                "SITES",
                String::new(),
                "the domains to count, such as SITES=example.com, with MODE=live",
            );
        }
        if self.mode == Mode::Sim && !self.sites.is_empty() {
            // Else a dashboard would show simulated traffic as the sites'.
            return refuse(
                "SITES",
                self.sites.join(","),
                "unset in sim mode: add MODE=live to count these sites, or unset SITES to simulate",
            );
        }
        if let (Mode::Sim, Some(url)) = (self.mode, &self.redis_url) {
            return refuse(
                "REDIS_URL",
                without_password(url),
                "unset in sim mode, where every instance agrees without it: add MODE=live, or unset REDIS_URL",
            );
        }
        if self.active_window > self.session_timeout {
            return refuse(
                "ACTIVE_WINDOW",
                format!("{}s", self.active_window.as_secs()),
                "at most SESSION_TIMEOUT: an active visitor is in a session",
            );
        }
        Ok(())
    }
}

/// `url` with its user and password (if any) replaced by `***`, and all of it if it is
/// no URL (it may be a password pasted alone): fit for a log line.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_string();
    };
    let host = rest.find('/').map_or(rest, |end| &rest[..end]);
    match host.rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// A duration with its unit (`90s`, `15m`, `24h`, `1d`), from `lo` to `hi` ms.
fn duration(s: &str, lo: u64, hi: u64) -> Option<Duration> {
    options::with_unit(s)
        .filter(|ms| (lo..=hi).contains(ms))
        .map(Duration::from_millis)
}

/// Up to 8 domains, lowercased: letters, digits, dots and hyphens.
fn parse_sites(s: &str) -> Option<Vec<String>> {
    let sites: Vec<String> = s
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    let valid = |d: &String| {
        !d.is_empty()
            && d.len() <= 253
            && d.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    let distinct = sites
        .iter()
        .enumerate()
        .all(|(i, d)| !sites[..i].contains(d));
    (sites.len() <= 8 && sites.iter().all(valid) && distinct).then_some(sites)
}

/// `512M`, `2G`, `65536K` or a number of bytes.
fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The `--help` text: what the server is, and every variable with its default.
pub fn help() -> String {
    let mut text = format!(
        "{} {}: simulated website-traffic analytics over REST, WebSocket and Server-Sent \
         Events.\n\nUsage: {0}\n\nConfigured by environment variables, all optional (an \
         empty value is unset):\n",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
    );
    for var in &VARS {
        text += &format!(
            "\n  {} (default {})\n      {}.\n      Allowed: {}.\n",
            var.name,
            var.default,
            var.doc,
            var.allowed()
        );
    }
    text
}

fn parse_cors(s: &str) -> Option<Cors> {
    if s == "*" {
        return Some(Cors::Any);
    }
    let origins: Vec<String> = s
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_string())
        .collect();
    let valid = |o: &String| {
        (o.starts_with("http://") || o.starts_with("https://"))
            && o.len() > "https://".len()
            && !o.contains(['*', ' ', '"'])
    };
    origins.iter().all(valid).then_some(Cors::Only(origins))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let pairs: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        from_bytes(&pairs)
    }

    fn from_bytes(pairs: &[(&str, &[u8])]) -> Result<Config, ConfigError> {
        Config::from_vars(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_vec())
        })
    }

    #[test]
    fn defaults_need_no_variables() {
        let c = from(&[]).unwrap();
        assert_eq!(c.port, 4000);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(c.interval, Duration::from_millis(1500));
        assert_eq!(c.seed, DEFAULT_SEED);
        assert_eq!((c.profile, c.scenario), (Profile::Blog, Scenario::Normal));
        assert_eq!(c.cors, Cors::Any);
        assert_eq!(c.log_level, LevelFilter::Info);
    }

    /// Render's dashboard and shells produce empty values: each counts as unset, for
    /// every variable (`MAX_WS_CLIENTS=` once failed the deploy while `PORT=` did not).
    #[test]
    fn empty_values_count_as_unset() {
        let defaults = format!("{:?}", Config::default());
        for name in VARS.map(|v| v.name) {
            for empty in ["", " ", "\t"] {
                let c = from(&[(name, empty)]).unwrap_or_else(|e| panic!("{name}={empty:?}: {e}"));
                assert_eq!(format!("{c:?}"), defaults, "{name}={empty:?}");
            }
        }
    }

    /// A Redis URL may hold a password: no error shows it.
    #[test]
    fn redis_is_for_live_mode_and_its_password_is_never_shown() {
        let live = [("MODE", "live"), ("SITES", "a.example")];
        let with = |url| {
            let mut pairs = live.to_vec();
            pairs.push(("REDIS_URL", url));
            from(&pairs)
        };
        let url = "redis://:s3cret@red-1.internal:6379/2";
        assert_eq!(with(url).unwrap().redis_url.as_deref(), Some(url));
        assert_eq!(with("unset").unwrap().redis_url, None);
        for bad in [
            "rediss://:s3cret@red-1.internal:6379",
            "redis://:s3cret@red-1.internal:6379/notadb",
            "http://s3cret@red-1.internal",
            "redis://:s3cret@",
            "s3cret",
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.var, "REDIS_URL", "{bad}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        let e = from(&[("REDIS_URL", url)]).unwrap_err();
        assert_eq!(e.var, "REDIS_URL");
        assert!(e.to_string().contains("add MODE=live"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert_eq!(without_password(url), "redis://***@red-1.internal:6379/2");
    }

    #[test]
    fn an_instance_is_named_for_the_log_and_urls_alike() {
        assert_eq!(from(&[]).unwrap().instance, None, "random");
        let c = from(&[("INSTANCE", "eu-1.web_2")]).unwrap();
        assert_eq!(c.instance.as_deref(), Some("eu-1.web_2"));
        for bad in ["two words", "a/b", "<b>", &"x".repeat(65)] {
            let e = from(&[("INSTANCE", bad)]).unwrap_err();
            assert_eq!(e.var, "INSTANCE", "{bad}");
        }
    }

    #[test]
    fn the_other_modes_variables_are_named_as_ignored() {
        let live = from(&[
            ("MODE", "live"),
            ("SITES", "shop.example"),
            ("SEED", "7"),
            ("PROFILE", "shop"),
            ("ACTIVE_WINDOW", "60s"),
            ("LOG_LEVEL", "warn"),
        ])
        .unwrap();
        assert_eq!(live.ignored, ["SEED", "PROFILE"]);
        let sim = from(&[
            ("SCENARIO", "spike"),
            ("MAX_VISITORS", "1000"),
            ("SEED", " "),
        ])
        .unwrap();
        assert_eq!(sim.ignored, ["MAX_VISITORS"]);
    }

    #[test]
    fn live_mode_variables_go_together() {
        let c = from(&[("MODE", "live"), ("SITES", "Shop.example, blog.example")]).unwrap();
        assert_eq!(
            (c.mode, c.sites.join(",")),
            (Mode::Live, "shop.example,blog.example".into())
        );
        for (pairs, var, says) in [
            (&[("MODE", "live")][..], "SITES", "MODE=live"),
            // SITES without MODE=live would show simulated traffic as the sites'.
            (&[("SITES", "shop.example")][..], "SITES", "add MODE=live"),
            (
                &[("MODE", "sim"), ("SITES", "shop.example")][..],
                "SITES",
                "add MODE=live",
            ),
            (
                &[
                    ("MODE", "live"),
                    ("SITES", "a.example"),
                    ("ACTIVE_WINDOW", "31m"),
                ][..],
                "ACTIVE_WINDOW",
                "SESSION_TIMEOUT",
            ),
        ] {
            let e = from(pairs).unwrap_err();
            assert_eq!(e.var, var, "{pairs:?}");
            assert!(e.allowed.contains(says), "{pairs:?}: {}", e.allowed);
        }
    }

    #[test]
    fn memory_budgets_are_sizes_with_a_unit() {
        for (value, bytes) in [
            ("512M", Some(512 << 20)),
            ("2g", Some(2 << 30)),
            ("65536K", Some(64 << 20)),
            ("33554432", Some(32 << 20)),
        ] {
            assert_eq!(
                from(&[("MEMORY_BUDGET", value)]).unwrap().memory_budget,
                bytes
            );
        }
        for bad in [
            "15M",
            "2T",
            "1025G",
            "lots",
            "M",
            "-1G",
            "99999999999999999999G",
        ] {
            let e = from(&[("MEMORY_BUDGET", bad)]).unwrap_err();
            assert_eq!(e.var, "MEMORY_BUDGET", "{bad}");
        }
    }

    #[test]
    fn cpu_budgets_are_numbers_of_cpus() {
        for (value, cpus) in [("0.1", 0.1), ("2", 2.0), ("0.01", 0.01)] {
            assert_eq!(
                from(&[("CPU_BUDGET", value)]).unwrap().cpu_budget,
                Some(cpus)
            );
        }
        for bad in ["0", "0.001", "2000", "lots", "-1", "NaN", "inf"] {
            let e = from(&[("CPU_BUDGET", bad)]).unwrap_err();
            assert_eq!(e.var, "CPU_BUDGET", "{bad}");
        }
    }

    #[test]
    fn valid_values_are_read() {
        let c = from(&[
            ("PORT", "10000"),
            ("HOST", "::"),
            ("INTERVAL_MS", "100"),
            ("SEED", "7"),
            ("PROFILE", "News"),
            ("SCENARIO", "outage"),
            ("UTC_OFFSET_HOURS", "-5.5"),
            ("LOG_LEVEL", "DEBUG"),
            ("CORS_ORIGINS", "https://a.example, http://localhost:3000/"),
            ("MAX_WS_CLIENTS", "5"),
            ("MAX_HTTP_CONNECTIONS", "6"),
            ("IDLE_TIMEOUT_MS", "2000"),
            ("HEADER_TIMEOUT_MS", "1500"),
            ("WRITE_TIMEOUT_MS", "2500"),
            ("MAX_HEADER_BYTES", "4096"),
            ("WS_MAX_SKIPPED", "3"),
        ])
        .unwrap();
        assert_eq!(c.port, 10000);
        assert_eq!(c.host.to_string(), "::");
        assert_eq!(c.interval, Duration::from_millis(100));
        assert_eq!(c.seed, 7);
        assert_eq!(c.profile, Profile::News);
        assert_eq!(c.scenario, Scenario::Outage);
        assert_eq!(c.utc_offset_hours, -5.5);
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert_eq!(
            c.cors,
            Cors::Only(vec![
                "https://a.example".into(),
                "http://localhost:3000".into()
            ])
        );
        assert_eq!(c.max_ws_clients, Some(5));
        assert_eq!(c.max_http_connections, Some(6));
        assert_eq!(c.idle_timeout, Duration::from_secs(2));
        assert_eq!(c.header_timeout, Duration::from_millis(1500));
        assert_eq!(c.write_timeout, Duration::from_millis(2500));
        assert_eq!(c.max_header_bytes, 4096);
        assert_eq!(c.ws_max_skipped, 3);
    }

    #[test]
    fn bad_values_name_variable_value_and_what_is_allowed() {
        let cases = [
            ("PORT", "abc"),
            ("PORT", "70000"),
            ("PORT", "-1"),
            ("HOST", "localhost:80"),
            ("INTERVAL_MS", "99"),
            ("INTERVAL_MS", "60001"),
            ("SEED", "lucky"),
            ("PROFILE", "forum"),
            ("SCENARIO", "chaos"),
            ("UTC_OFFSET_HOURS", "15"),
            ("LOG_LEVEL", "loud"),
            ("CORS_ORIGINS", "example.com"),
            ("MAX_WS_CLIENTS", "0"),
            ("MAX_HTTP_CONNECTIONS", "x"),
            ("IDLE_TIMEOUT_MS", "10"),
            ("HEADER_TIMEOUT_MS", "-5"),
            ("WRITE_TIMEOUT_MS", "100"),
            ("MAX_HEADER_BYTES", "10"),
            ("WS_MAX_SKIPPED", "0"),
        ];
        for (var, value) in cases {
            let err = from(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            let msg = err.to_string();
            assert!(msg.contains(var) && msg.contains(value), "{msg}");
            assert!(msg.contains("expected"), "{msg}");
        }
    }

    /// A value that is not UTF-8 is invalid, not unset: taken for unset, a `CORS_ORIGINS`
    /// allowlist would allow every origin.
    #[test]
    fn values_that_are_not_utf8_are_refused() {
        for name in VARS.map(|v| v.name) {
            let err = from_bytes(&[(name, b"https://a.example\xff")]).unwrap_err();
            assert_eq!((err.var, err.not_utf8), (name, true));
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "invalid {name}=\"https://a.example\\xff\": not valid UTF-8; expected "
                )),
                "{msg}"
            );
        }
    }

    /// A value of any size is shown cut, with its length.
    #[test]
    fn long_values_are_shown_cut() {
        let msg = from(&[("PORT", &"9".repeat(100_000))])
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!(
                "invalid PORT=\"{}... (100000 bytes)\": expected ",
                "9".repeat(40)
            )),
            "{msg}"
        );
        let msg = from_bytes(&[("CORS_ORIGINS", &[0xff; 100_000])])
            .unwrap_err()
            .to_string();
        assert!(msg.len() < 300 && msg.contains("(100000 bytes)"), "{msg}");
    }

    /// Each variable's documented default is the value `Config::default` holds, and an
    /// integer's bounds are the ones enforced.
    #[test]
    fn the_table_agrees_with_the_defaults_and_bounds() {
        let defaults = format!("{:?}", Config::default());
        for var in &VARS {
            let mut c = Config::default();
            match var.apply(&mut c, var.default) {
                Ok(()) => assert_eq!(format!("{c:?}"), defaults, "{}", var.name),
                Err(_) => assert_eq!(var.default, "derived", "{}", var.name),
            }
            if let Kind::Integer { lo, hi, .. } = var.kind {
                for (n, ok) in [(lo, true), (hi, true), (hi + 1, false)] {
                    let got = var.apply(&mut Config::default(), &n.to_string()).is_ok();
                    assert_eq!(got, ok, "{}={n}", var.name);
                }
                if lo > 0 {
                    assert!(
                        var.apply(&mut Config::default(), &(lo - 1).to_string())
                            .is_err()
                    );
                }
            }
        }
        let names: std::collections::HashSet<_> = VARS.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), VARS.len(), "a variable is defined twice");
    }

    #[test]
    fn random_seed_differs_between_reads() {
        let a = from(&[("SEED", "random")]).unwrap().seed;
        let b = from(&[("SEED", "random")]).unwrap().seed;
        assert_ne!(a, b);
    }
}
