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
//! A full server is not a wedged one. At `MAX_HTTP_CONNECTIONS` the probe takes one of
//! the places kept for health probes, as a platform's check does; a 503 because those are
//! taken too is an answer. And running out of descriptors must not become a restart: the
//! socket of each probe is made ahead of time, right after the previous probe, so a probe
//! never needs a new descriptor (the caps count this one among the server's own). If the
//! process has none left to make it, that probe is skipped, not missed.

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
/// Stops when `stop` is disconnected.
pub fn spawn(
    listener: SocketAddr,
    stop: Receiver<()>,
    failed: impl FnOnce(std::io::Error) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let mut next = Some(socket_for(listener)?);
    thread::Builder::new()
        .name("watchdog".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut misses = 0;
            let mut skipping = false;
            loop {
                match stop.recv_timeout(EVERY) {
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
                let answered = probe(socket, listener);
                next = socket_for(listener).ok();
                match answered {
                    Ok(()) => misses = 0,
                    Err(e) => {
                        misses += 1;
                        log::warn!("watchdog: probe {misses} of {MISSES} failed: {e}");
                        if misses == MISSES {
                            failed(e);
                            return;
                        }
                    }
                }
            }
        })
}

/// A socket to probe `listener` with, not yet connected.
fn socket_for(listener: SocketAddr) -> std::io::Result<Socket> {
    Socket::new(
        Domain::for_address(listener),
        Type::STREAM,
        Some(Protocol::TCP),
    )
}

fn probe(socket: Socket, listener: SocketAddr) -> std::io::Result<()> {
    socket.connect_timeout(&listener.into(), TIMEOUT)?;
    let mut stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.take(1024).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    if answer.starts_with("HTTP/1.1 200")
        || (answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"))
    {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "unexpected answer {:?}",
            answer.lines().next().unwrap_or("")
        )))
    }
}
