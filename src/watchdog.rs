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
//! requests: a probe that times out while they did is not a miss, nor a `stale` answer
//! while the generator published since the previous probe (late, not stopped); a restart
//! would only drop every stream. A full server is not a wedged one either: at
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

/// What the server has done so far: the watchdog tells a busy server from a wedged one
/// by whether these move.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Requests the workers have decided on.
    pub decided: u64,
    /// Samples the generator has published.
    pub published: u64,
}

/// Starts probing `listener`; after three misses in a row, `failed` gets the last error.
/// A probe that times out while the workers decided on requests is not a miss, nor a
/// `stale` answer while the generator published since the previous probe (it is late,
/// not stopped). Stops when `stop` is disconnected.
pub fn spawn(
    listener: SocketAddr,
    stop: Receiver<()>,
    progress: impl Fn() -> Progress + Send + 'static,
    failed: impl FnOnce(std::io::Error) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    watch(listener, stop, progress, failed, EVERY, TIMEOUT)
}

fn watch(
    listener: SocketAddr,
    stop: Receiver<()>,
    progress: impl Fn() -> Progress + Send + 'static,
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
            let mut published = progress().published;
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
                let before = progress();
                let outcome = probe(socket, listener, timeout);
                next = socket_for(listener).ok();
                let after = progress();
                let published_since = std::mem::replace(&mut published, after.published);
                let late = match &outcome {
                    Err(Miss::Silent(e)) if after.decided != before.decided => Some(format!(
                        "no answer to a probe within {timeout:?} ({e}), but the workers \
                         decided on requests meanwhile"
                    )),
                    Err(Miss::Stale) if after.published != published_since => Some(
                        "/healthz says stale, but the generator published since the last \
                         probe"
                            .to_string(),
                    ),
                    _ => None,
                };
                if let Some(why) = late {
                    if !busy {
                        log::warn!(
                            "watchdog: {why}: the host is short of CPU, not wedged; not \
                             counted as a miss"
                        );
                    }
                    (misses, busy) = (0, true);
                    continue;
                }
                let e = match outcome {
                    Ok(()) => {
                        (misses, busy) = (0, false);
                        continue;
                    }
                    Err(Miss::Silent(e)) => e,
                    Err(Miss::Stale) => std::io::Error::other("/healthz says stale"),
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
    /// `/healthz` answered 503 `stale`: no sample for two intervals.
    Stale,
    /// An answer other than 200, the cap's 503 or `stale` (its first line).
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
        _ if answer.starts_with("HTTP/1.1 503") && answer.contains("\"stale\"") => Err(Miss::Stale),
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

    /// Watches `listener` with fast timings; `deciding` and `publishing` say whether
    /// the workers' and the generator's counts move from one reading to the next.
    /// Returns the channel the failure arrives on, and the sender whose drop stops the
    /// watchdog.
    fn watched(
        listener: SocketAddr,
        deciding: bool,
        publishing: bool,
    ) -> (Receiver<std::io::Error>, Sender<()>) {
        let (failed_tx, failed) = bounded(1);
        let (stop, stopped) = bounded(0);
        let count = Arc::new(AtomicU64::new(0));
        let decided = move || {
            let n = count.fetch_add(1, Ordering::Relaxed);
            Progress {
                decided: if deciding { n } else { 0 },
                published: if publishing { n } else { 0 },
            }
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
        let (failed, _stop) = watched(listener.local_addr().unwrap(), false, true);
        assert!(failed.recv_timeout(Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn probes_unanswered_while_requests_are_decided_are_not_a_failure() {
        let listener = silent();
        let (failed, _stop) = watched(listener.local_addr().unwrap(), true, false);
        // Ten probes' worth at least.
        assert!(failed.recv_timeout(Duration::from_millis(700)).is_err());
    }

    /// A listener that answers every connection with `answer`.
    fn answering(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for mut probe in listener.incoming().flatten() {
                let _ = probe.write_all(answer);
            }
        });
        addr
    }

    const STALE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"error\":\"stale\"}";

    /// What the watchdog reports for a server at `addr` that answers the same way every
    /// time, with `deciding` and `publishing` saying whether it makes progress.
    fn failure(addr: SocketAddr, deciding: bool, publishing: bool) -> String {
        let (failed, _stop) = watched(addr, deciding, publishing);
        let e = failed
            .recv_timeout(Duration::from_secs(2))
            .expect("no failure");
        e.to_string()
    }

    #[test]
    fn an_unhealthy_answer_is_a_miss_however_busy() {
        let e = failure(
            answering(b"HTTP/1.1 500 Internal Server Error\r\n\r\n"),
            true,
            true,
        );
        assert!(e.contains("500"), "{e}");
    }

    #[test]
    fn stale_while_nothing_is_published_is_a_failure() {
        let e = failure(answering(STALE), true, false);
        assert!(e.contains("stale"), "{e}");
    }

    #[test]
    fn stale_while_samples_are_published_is_not_a_failure() {
        let (failed, _stop) = watched(answering(STALE), false, true);
        assert!(failed.recv_timeout(Duration::from_millis(700)).is_err());
    }
}
