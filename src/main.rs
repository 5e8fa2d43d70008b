//! `realtime-analytics-backend`: reads the configuration, starts the server, and waits
//! for SIGTERM or SIGINT (a graceful shutdown, exit 0) or for the server to fail (exit 1,
//! so the platform restarts it). A bad configuration exits 2 before anything starts.

use std::process::ExitCode;
use std::thread;

use crossbeam_channel::{bounded, select};
use realtime_analytics_backend::{Config, start};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{ColorChoice, ConfigBuilder, TermLogger, TerminalMode};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("realtime-analytics-backend: {e}");
            return ExitCode::from(2);
        }
    };
    let log_config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .build();
    let _ = TermLogger::init(
        config.log_level,
        log_config,
        TerminalMode::Stderr,
        ColorChoice::Never,
    );
    raise_fd_limit();

    // Register for signals before starting, so none is missed in between.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle SIGTERM/SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match start(&config) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = server.local_addr();
    let (max_ws, max_http) = server.caps();
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
    log::info!("limits: MAX_WS_CLIENTS={max_ws} MAX_HTTP_CONNECTIONS={max_http}");

    let (signal_tx, signal_rx) = bounded(1);
    let spawned = thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = signal_tx.send(signal);
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the signal thread: {e}");
        return ExitCode::FAILURE;
    }
    select! {
        recv(signal_rx) -> signal => {
            let name = if signal == Ok(SIGINT) { "SIGINT" } else { "SIGTERM" };
            log::info!("{name} received: closing {} streaming clients and stopping", server.ws_clients());
            server.shutdown();
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        recv(server.failed()) -> why => {
            log::error!("exiting: {}", why.unwrap_or_default());
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit: each WebSocket client holds two
/// descriptors, and the common soft default of 1024 would cap us near 500 clients.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write one `rlimit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                log::warn!(
                    "cannot raise the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
