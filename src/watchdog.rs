//! The watchdog: proves, every few seconds, that the server still answers.
//!
//! If the path from the listener to a worker breaks (tiny_http's threads gone, a bug that
//! wedges the workers), the process is alive but answers nothing, and a platform health
//! check may take minutes to notice. So a thread sends `GET /healthz` to our own listener
//! through the edge, like any client; after three probes in a row without an answer it
//! reports the failure, and `main` exits non-zero so that the platform restarts the
//! service. `/healthz` is 503 when the generator stopped publishing, so that is a miss
//! too.
//!
//! A busy server is not a wedged one. On a host with a fraction of a CPU, clients can
//! keep a probe waiting longer than its timeout while the workers still decide on
//! requests: a probe that times out while they did is not a miss, and a restart would
//! only drop every stream. A full server is not a wedged one either: at
//! `MAX_HTTP_CONNECTIONS` the probe takes one of the places kept for health probes, as a
//! platform's check does; a 503 because those are taken too is an answer. And running out
//! of descriptors must not become a restart: the socket of each probe is made ahead of
//! time, right after the previous probe, so a probe never needs a new descriptor (the
//! caps count this one among the server's own). If the process has none left to make
//! it, that probe is skipped, not missed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use socket2::{Domain, Protocol, Socket, Type};

const EVERY: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(3);
const MISSES: u32 = 3;

/// Starts probing `listener`; after three misses in a row, `failed` gets the last error.
/// `decided` counts the requests the workers have decided on: a probe that times out
/// while it moves is not a miss. Stops when `stop` is disconnected.
pub fn spawn(
    listener: SocketAddr,
    stop: Receiver<()>,
    decided: impl Fn() -> u64 + Send + 'static,
    failed: impl FnOnce(std::io::Error) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    watch(listener, stop, decided, failed, EVERY, TIMEOUT)
}

fn watch(
    listener: SocketAddr,
    stop: Receiver<()>,
    decided: impl Fn() -> u64 + Send + 'static,
    failed: impl FnOnce(std::io::Error) + Send + 'static,
    every: Duration,
    timeout: Duration,
) -> std::io::Result<JoinHandle<()>> {
    let mut next = Some(socket_for(listener)?);
    thread::Builder::new()
        .name("watchdog".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut misses = 0;
            let mut skipping = false;
            let mut busy = false;
            loop {
                match stop.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let socket = match next.take().map_or_else(|| socket_for(listener), Ok) {
                    Ok(socket) => socket,
                    Err(e) => {
                        if !skipping {
                            log::warn!(
                                "watchdog: cannot make a socket to probe with ({e}); probes \
                                 are skipped, not missed, until it can"
                            );
                        }
                        skipping = true;
                        continue;
                    }
                };
                skipping = false;
                let before = decided();
                let outcome = probe(socket, listener, timeout);
                next = socket_for(listener).ok();
                let e = match outcome {
                    Ok(()) => {
                        (misses, busy) = (0, false);
                        continue;
                    }
                    Err(Miss::Silent(e)) if decided() != before => {
                        if !busy {
                            log::warn!(
                                "watchdog: no answer to a probe within {timeout:?} ({e}), \
                                 but the workers decided on requests meanwhile: the host is \
                                 short of CPU, not wedged; not counted as a miss"
                            );
                        }
                        (misses, busy) = (0, true);
                        continue;
                    }
                    Err(Miss::Silent(e)) => e,
                    Err(Miss::Unhealthy(answer)) => {
                        std::io::Error::other(format!("unexpected answer {answer:?}"))
                    }
                };
                misses += 1;
                log::warn!("watchdog: probe {misses} of {MISSES} failed: {e}");
                if misses == MISSES {
                    failed(e);
                    return;
                }
            }
        })
}

/// Why a probe failed.
enum Miss {
    /// No answer within the timeout, or the connection failed.
    Silent(std::io::Error),
    /// An answer other than 200 or the cap's 503 (the first line): `/healthz` is 503
    /// `stale` when the generator stopped.
    Unhealthy(String),
}

/// A socket to probe `listener` with, not yet connected.
fn socket_for(listener: SocketAddr) -> std::io::Result<Socket> {
    Socket::new(
        Domain::for_address(listener),
        Type::STREAM,
        Some(Protocol::TCP),
    )
}

fn probe(socket: Socket, listener: SocketAddr, timeout: Duration) -> Result<(), Miss> {
    let mut answer = Vec::new();
    let asked = socket
        .connect_timeout(&listener.into(), timeout)
        .map(|()| TcpStream::from(socket))
        .and_then(|mut stream| {
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.write_all(
                b"GET /healthz HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n",
            )?;
            stream.take(1024).read_to_end(&mut answer)
        });
    let answer = String::from_utf8_lossy(&answer);
    if answer.starts_with("HTTP/1.1 200")
        || (answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"))
    {
        return Ok(());
    }
    match asked {
        Err(e) if answer.is_empty() => Err(Miss::Silent(e)),
        _ => Err(Miss::Unhealthy(
            answer.lines().next().unwrap_or("").to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use crossbeam_channel::{Sender, bounded};

    const FAST: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(50));

    /// Watches `listener` with fast timings, `moving` deciding whether the workers'
    /// count moves between a probe's start and its end. Returns the channel the failure
    /// arrives on, and the sender whose drop stops the watchdog.
    fn watched(listener: SocketAddr, moving: bool) -> (Receiver<std::io::Error>, Sender<()>) {
        let (failed_tx, failed) = bounded(1);
        let (stop, stopped) = bounded(0);
        let count = Arc::new(AtomicU64::new(0));
        let decided = move || match moving {
            true => count.fetch_add(1, Ordering::Relaxed),
            false => 0,
        };
        let failed_tx = move |e| {
            let _ = failed_tx.send(e);
        };
        watch(listener, stopped, decided, failed_tx, FAST.0, FAST.1).unwrap();
        (failed, stop)
    }

    /// A listener that never accepts: a probe connects (the backlog takes it) and waits.
    fn silent() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn probes_unanswered_while_nothing_is_decided_are_a_failure() {
        let listener = silent();
        let (failed, _stop) = watched(listener.local_addr().unwrap(), false);
        assert!(failed.recv_timeout(Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn probes_unanswered_while_requests_are_decided_are_not_a_failure() {
        let listener = silent();
        let (failed, _stop) = watched(listener.local_addr().unwrap(), true);
        // Ten probes' worth at least.
        assert!(failed.recv_timeout(Duration::from_millis(700)).is_err());
    }

    #[test]
    fn an_unhealthy_answer_is_a_miss_however_busy() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for mut probe in listener.incoming().flatten() {
                let _ = probe.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\nstale");
            }
        });
        let (failed, _stop) = watched(addr, true);
        let e = failed
            .recv_timeout(Duration::from_secs(2))
            .expect("no failure");
        assert!(e.to_string().contains("503"), "{e}");
    }
}
