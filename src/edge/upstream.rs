//! The edge's side of tiny_http: a few long-lived internal connections on which the edge
//! writes every accepted request head, canonical, one after the other.
//!
//! tiny_http reads each internal connection on one pool thread and hands the requests to
//! our workers; the workers answer the client directly (see `Client::reply`), so nothing
//! is ever written back on these connections and several clients' requests share one.
//! They are opened one at a time, each confirmed by a probe that a worker acknowledges:
//! tiny_http's task pool can lose a wake-up when connections arrive together and leave one
//! with no thread, and a connection opened alone and confirmed cannot be that one. After
//! start-up tiny_http accepts nothing more unless a line breaks and is reopened.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::sync::lock;

/// Internal connections: one pool thread of tiny_http's each. A pool thread parses a head
/// in a few microseconds, so two carry far more than the edge accepts; four ride out one
/// being descheduled.
pub const LINES: usize = 4;
/// How long a line may take to be confirmed, or to take one head.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Upstream {
    addr: SocketAddr,
    secret: String,
    lines: Vec<Mutex<Option<TcpStream>>>,
    acks: Mutex<Receiver<usize>>,
}

impl Upstream {
    /// Opens and confirms every line to tiny_http at `addr`. `acks` receives a line's
    /// number when a worker saw its probe.
    pub fn open(addr: SocketAddr, secret: String, acks: Receiver<usize>) -> io::Result<Upstream> {
        let upstream = Upstream {
            addr,
            secret,
            lines: (0..LINES).map(|_| Mutex::new(None)).collect(),
            acks: Mutex::new(acks),
        };
        for line in 0..LINES {
            *lock(&upstream.lines[line]) = Some(upstream.connect(line)?);
        }
        Ok(upstream)
    }

    /// Writes one request head for tiny_http. A broken line is reopened once.
    pub fn forward(&self, client: u64, head: &[u8]) -> io::Result<()> {
        let n = (client % LINES as u64) as usize;
        let mut line = lock(&self.lines[n]);
        if let Some(stream) = line.as_mut() {
            if stream.write_all(head).is_ok() {
                return Ok(());
            }
            log::warn!("internal connection {n} to tiny_http broke; reopening it");
        }
        *line = None;
        let mut stream = self.connect(n)?;
        stream.write_all(head)?;
        *line = Some(stream);
        Ok(())
    }

    fn connect(&self, line: usize) -> io::Result<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&self.addr, TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let acks = lock(&self.acks);
        while acks.try_recv().is_ok() {}
        write!(
            stream,
            "OPTIONS * HTTP/1.1\r\nX-Edge-Probe: {line} {}\r\n\r\n",
            self.secret
        )?;
        match acks.recv_timeout(TIMEOUT) {
            Ok(n) if n == line => Ok(stream),
            _ => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("tiny_http did not take internal connection {line}"),
            )),
        }
    }
}
