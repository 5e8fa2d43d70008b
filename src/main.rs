//! `realtime-analytics-backend`: reads the configuration, starts the server, and waits
//! for SIGTERM, SIGINT or SIGHUP (a graceful shutdown, exit 0) or for the server to fail (exit 1,
//! so the platform restarts it). A bad configuration, or an open-file limit too low to
//! serve, exits 2 before anything starts.
//! `--help` lists every variable.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use crossbeam_channel::select;
use realtime_analytics_backend::config::Mode;
use realtime_analytics_backend::{Config, logging, platform, start};

fn main() -> ExitCode {
    // Configured by the environment alone; the only arguments say how.
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("-h" | "--help") => {
            print!("{}", realtime_analytics_backend::config::help());
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!(
                "realtime-analytics-backend: unexpected argument {other:?}: the server is \
                 configured by environment variables (see --help)"
            );
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("realtime-analytics-backend: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(config.log_level) {
        eprintln!("realtime-analytics-backend: cannot start logging: {e}");
        return ExitCode::FAILURE;
    }
    let status = serve(&config);
    // The `log` thread writes the last lines before the process ends.
    log::logger().flush();
    status
}

/// Runs the server until a signal or a failure; returns the exit status.
fn serve(config: &Config) -> ExitCode {
    // Register for signals before starting, so none is missed in between.
    let signals = match platform::shutdown_signals() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle SIGTERM, SIGINT or SIGHUP: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match start(config) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(e.exit_status());
        }
    };
    let addr = server.local_addr();
    let caps = server.caps();
    let host = server.host();
    log::info!(
        "{} {} listening on http://{addr} (instance {}, {}, INTERVAL_MS={}): REST http://{host}/api/analytics, \
         WebSocket ws://{host}/api/analytics, SSE the same URL with Accept: text/event-stream, \
         dashboard http://{host}/dashboard, API http://{host}/openapi.json, service info \
         http://{host}/ and http://{host}/api",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        server.instance(),
        // What instances must share to send the same bytes.
        match config.mode {
            Mode::Sim => format!(
                "sim, SEED={} PROFILE={} SCENARIO={} UTC_OFFSET_HOURS={}",
                config.seed,
                config.profile.name(),
                config.scenario.name(),
                config.utc_offset_hours,
            ),
            Mode::Live => format!("live, SITES={}", config.sites.join(",")),
        },
        config.interval.as_millis(),
    );
    log::info!(
        "limits: MAX_WS_CLIENTS={} MAX_HTTP_CONNECTIONS={}; {}",
        caps.streams,
        caps.http,
        server.budget().summary(),
    );
    if let Some(live) = server.live_summary() {
        log::info!("{live}");
    }
    if !config.ignored.is_empty() {
        let it = if config.ignored.len() == 1 {
            "it"
        } else {
            "them"
        };
        log::warn!(
            "{} set but ignored: {} mode does not read {it}; unset {it} to silence this",
            config.ignored.join(", "),
            config.mode.name(),
        );
    }
    // Once serving: resizing the futex hash took the kernel 30-45 ms here, which start-up
    // must not wait for.
    platform::expect_threads(caps.streams + caps.http);

    select! {
        recv(signals) -> signal => {
            let name = signal.unwrap_or("a signal");
            log::info!("{name} received: closing {} streaming clients and stopping", server.stream_clients());
            server.shutdown();
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        recv(server.failed()) -> why => {
            match why {
                Ok(failure) => log::error!("exiting: {failure}"),
                Err(_) => log::error!("exiting: the server stopped"),
            }
            ExitCode::FAILURE
        }
    }
}
