//! Configuration from environment variables, validated up front.
//!
//! Every variable has a default that works on a laptop and on Render, so a plain
//! `cargo run --release` needs none of them. A bad value stops the process before it
//! binds a port, with one line that names the variable, the value and what is allowed:
//! a typo in a dashboard's deploy settings should fail the deploy, not start a server
//! that silently does something else.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use log::LevelFilter;

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
    /// `MAX_WS_CLIENTS`: open WebSockets beyond this are refused with 503. `None`: derived
    /// at startup from the descriptor and memory-map limits.
    pub max_ws_clients: Option<usize>,
    /// `MAX_HTTP_CONNECTIONS`: HTTP connections beyond this are refused with 503. `None`:
    /// derived like `max_ws_clients`.
    pub max_http_connections: Option<usize>,
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
}

/// Which origins get an `Access-Control-Allow-Origin` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// `*`: every origin (the data is public and carries no credentials).
    Any,
    /// Only these exact origins, echoed back with `Vary: Origin`.
    Only(Vec<String>),
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
            idle_timeout: Duration::from_secs(75),
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            ws_max_skipped: 20,
        }
    }
}

/// A variable whose value is not allowed. Its `Display` is the whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub allowed: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {} (unset it to use the default)",
            self.var, self.value, self.allowed
        )
    }
}

impl std::error::Error for ConfigError {}

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
        Config::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads variables through `get`, so tests need not touch the process environment.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        // An empty value counts as unset: Render's dashboard and shells produce them.
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = var("HOST") {
            config.host = parse(
                "HOST",
                &v,
                "an IP address such as 0.0.0.0, 127.0.0.1 or ::",
                |s| s.parse().ok(),
            )?;
        }
        if let Some(v) = var("PORT") {
            config.port = parse("PORT", &v, "an integer from 0 to 65535", |s| s.parse().ok())?;
        }
        if let Some(v) = var("INTERVAL_MS") {
            let ms = parse(
                "INTERVAL_MS",
                &v,
                "an integer from 100 to 60000",
                in_range(100..=60_000u64),
            )?;
            config.interval = Duration::from_millis(ms);
        }
        if let Some(v) = var("SEED") {
            config.seed = parse(
                "SEED",
                &v,
                "an integer from 0 to 18446744073709551615, or \"random\"",
                |s| match s {
                    "random" => Some(rand::random()),
                    _ => s.parse().ok(),
                },
            )?;
        }
        if let Some(v) = var("PROFILE") {
            config.profile = parse("PROFILE", &v, "one of blog, shop, news", |s| {
                simulator::parse(&Profile::ALL, Profile::name, s)
            })?;
        }
        if let Some(v) = var("SCENARIO") {
            config.scenario = parse(
                "SCENARIO",
                &v,
                "one of normal, spike, outage, flatline, ramp",
                |s| simulator::parse(&Scenario::ALL, Scenario::name, s),
            )?;
        }
        if let Some(v) = var("UTC_OFFSET_HOURS") {
            config.utc_offset_hours = parse(
                "UTC_OFFSET_HOURS",
                &v,
                "a number of hours from -12 to 14, such as 5.5",
                |s| s.parse().ok().filter(|h: &f64| (-12.0..=14.0).contains(h)),
            )?;
        }
        if let Some(v) = var("LOG_LEVEL") {
            config.log_level = parse(
                "LOG_LEVEL",
                &v,
                "one of error, warn, info, debug, trace, off",
                |s| s.parse().ok(),
            )?;
        }
        if let Some(v) = var("CORS_ORIGINS") {
            config.cors = parse(
                "CORS_ORIGINS",
                &v,
                "* or a comma-separated list of origins such as https://app.example.com",
                parse_cors,
            )?;
        }
        let count =
            |name, lo, hi, allowed| var(name).map(|v| parse(name, &v, allowed, in_range(lo..=hi)));
        let millis = |var, lo, hi, allowed| {
            count(var, lo, hi, allowed).map(|r| r.map(|ms| Duration::from_millis(ms as u64)))
        };
        if let Some(n) = count("MAX_WS_CLIENTS", 1, 100_000, "an integer from 1 to 100000") {
            config.max_ws_clients = Some(n?);
        }
        if let Some(n) = count(
            "MAX_HTTP_CONNECTIONS",
            1,
            100_000,
            "an integer from 1 to 100000",
        ) {
            config.max_http_connections = Some(n?);
        }
        if let Some(ms) = millis(
            "IDLE_TIMEOUT_MS",
            1000,
            3_600_000,
            "an integer from 1000 to 3600000",
        ) {
            config.idle_timeout = ms?;
        }
        if let Some(ms) = millis(
            "HEADER_TIMEOUT_MS",
            500,
            600_000,
            "an integer from 500 to 600000",
        ) {
            config.header_timeout = ms?;
        }
        if let Some(ms) = millis(
            "WRITE_TIMEOUT_MS",
            500,
            600_000,
            "an integer from 500 to 600000",
        ) {
            config.write_timeout = ms?;
        }
        if let Some(n) = count(
            "MAX_HEADER_BYTES",
            1024,
            1_048_576,
            "an integer from 1024 to 1048576",
        ) {
            config.max_header_bytes = n? as u64;
        }
        if let Some(n) = count("WS_MAX_SKIPPED", 1, 10_000, "an integer from 1 to 10000") {
            config.ws_max_skipped = n? as u32;
        }
        Ok(config)
    }
}

fn parse<T>(
    var: &'static str,
    value: &str,
    allowed: &'static str,
    f: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ConfigError> {
    f(value.trim()).ok_or_else(|| ConfigError {
        var,
        value: value.to_string(),
        allowed,
    })
}

/// A parser for integers within `range`.
fn in_range<T>(range: std::ops::RangeInclusive<T>) -> impl FnOnce(&str) -> Option<T>
where
    T: std::str::FromStr + PartialOrd,
{
    move |s| s.parse().ok().filter(|n| range.contains(n))
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
        Config::from_vars(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
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
        const VARIABLES: [&str; 16] = [
            "HOST",
            "PORT",
            "INTERVAL_MS",
            "SEED",
            "PROFILE",
            "SCENARIO",
            "UTC_OFFSET_HOURS",
            "LOG_LEVEL",
            "CORS_ORIGINS",
            "MAX_WS_CLIENTS",
            "MAX_HTTP_CONNECTIONS",
            "IDLE_TIMEOUT_MS",
            "HEADER_TIMEOUT_MS",
            "WRITE_TIMEOUT_MS",
            "MAX_HEADER_BYTES",
            "WS_MAX_SKIPPED",
        ];
        let defaults = format!("{:?}", Config::default());
        for name in VARIABLES {
            for empty in ["", " ", "\t"] {
                let c = from(&[(name, empty)]).unwrap_or_else(|e| panic!("{name}={empty:?}: {e}"));
                assert_eq!(format!("{c:?}"), defaults, "{name}={empty:?}");
            }
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

    #[test]
    fn random_seed_differs_between_reads() {
        let a = from(&[("SEED", "random")]).unwrap().seed;
        let b = from(&[("SEED", "random")]).unwrap().seed;
        assert_ne!(a, b);
    }
}
