//! The watchdog: proves, every few seconds, that the server still answers.
//!
//! tiny_http's accept loop ends for good on an accept error (and panics when it cannot
//! duplicate a socket, tiny-http #195). Then the process is alive but answers nothing,
//! REST included, and a platform health check may take minutes to notice. So a thread
//! sends `GET /healthz` to our own listener; after three probes in a row without an
//! answer it reports the failure, and `main` exits non-zero so that the platform
//! restarts the service.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

const EVERY: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(3);
const MISSES: u32 = 3;

/// Starts probing `listener`; a failure is sent on `failed`. Stops when `stop` is
/// disconnected.
pub fn spawn(
    listener: SocketAddr,
    stop: Receiver<()>,
    failed: Sender<String>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("watchdog".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut misses = 0;
            loop {
                match stop.recv_timeout(EVERY) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                match probe(listener) {
                    Ok(()) => misses = 0,
                    Err(e) => {
                        misses += 1;
                        log::warn!("watchdog: probe {misses} of {MISSES} failed: {e}");
                        if misses == MISSES {
                            let _ = failed.send(format!(
                                "the server stopped answering its own health probe ({e})"
                            ));
                            return;
                        }
                    }
                }
            }
        })
}

fn probe(listener: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&listener, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    if &head == b"HTTP/1.1 200" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&head)
        )))
    }
}
