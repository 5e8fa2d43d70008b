//! `realtime-analytics-backend`: reads the configuration, starts the server, and waits
//! for SIGTERM, SIGINT or SIGHUP (a graceful shutdown, exit 0) or for the server to fail (exit 1,
//! so the platform restarts it). A bad configuration, or an open-file limit too low to
//! serve, exits 2 before anything starts.
//! `--help` lists every variable.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use crossbeam_channel::select;
use realtime_analytics_backend::{Config, platform, start};
use simplelog::{ColorChoice, ConfigBuilder, TermLogger, TerminalMode};

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
    let log_config = ConfigBuilder::new()
        .set_time_format_custom(simplelog::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        // tiny_http's one line above debug is its accept loop ending, which the edge causes
        // once its internal connections are open.
        .add_filter_ignore_str("tiny_http")
        .build();
    let _ = TermLogger::init(
        config.log_level,
        log_config,
        TerminalMode::Stderr,
        ColorChoice::Never,
    );

    // Register for signals before starting, so none is missed in between.
    let signals = match platform::shutdown_signals() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle SIGTERM, SIGINT or SIGHUP: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match start(&config) {
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
        "{} {} listening on http://{addr} (seed {}, interval {} ms): REST http://{host}/api/analytics, \
         WebSocket ws://{host}/api/analytics, SSE the same URL with Accept: text/event-stream, \
         dashboard http://{host}/dashboard, API http://{host}/openapi.json, service info \
         http://{host}/ and http://{host}/api",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        config.seed,
        config.interval.as_millis(),
    );
    log::info!(
        "limits: MAX_WS_CLIENTS={} MAX_HTTP_CONNECTIONS={}; {}",
        caps.streams,
        caps.http,
        server.budget().summary(),
    );
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
