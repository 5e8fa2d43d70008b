//! The edge's side of tiny_http: a few long-lived internal connections (links) on which
//! the edge writes every accepted request head, canonical, one after the other.
//!
//! tiny_http reads each internal connection on one pool thread and hands the requests to
//! our workers; the workers hand their decisions to the connections' threads (see
//! `Connection::decide`), so nothing is ever written back on these connections and several clients' requests share one.
//! They are opened one at a time, each confirmed by a probe that a worker acknowledges:
//! tiny_http's task pool can lose a wake-up when connections arrive together and leave one
//! with no thread, and a connection opened alone and confirmed cannot be that one.
//!
//! Then tiny_http's listener is closed, so that no other process can connect to it:
//! tiny_http gives every connection it accepts a thread that waits for requests with no
//! deadline, and deadlocks on an `HTTP/2.0` request line, leaking that thread and two
//! descriptors. tiny_http owns the listener, and its accept loop ends for good on its
//! first error, dropping it. So the edge keeps a second handle to it and, once the links are
//! confirmed, makes it non-blocking (a state of the socket that every handle shares: its
//! open file description on POSIX, the socket itself on Windows) and drops that handle;
//! one connection of ours wakes the accept it is blocked in, and the next accept, with
//! nothing queued, fails. A worker sees that failure and acknowledges it; start-up fails
//! if it does not come within `TIMEOUT` (a flood that keeps the queue full). The port is
//! open only while the links are opened at start-up, a few milliseconds; what another
//! process connects in them keeps one pool thread each for the life of the process, and
//! nothing can connect after.
//!
//! Checking each connection instead, and refusing any that is not one of ours, cannot be
//! done from outside: tiny_http gives a connection its thread as soon as it accepts it,
//! and an idle one never becomes a request our workers see. `Server::from_listener`
//! takes a TCP or a Unix listener, never a connected socket, and a Unix listener exists
//! on Unix only.
//!
//! So a link is never reopened. A link breaks only if tiny_http stops reading it for
//! `TIMEOUT`, or closes it (which no head the edge writes makes it do); its clients then
//! move to the other links. With none left every request is answered 503, the watchdog's
//! probes miss, and the process exits to be restarted.

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::Ack;
use crate::sync::lock;

/// Internal connections: one pool thread of tiny_http's each. A pool thread parses a head
/// in a few microseconds, so two carry far more than the edge accepts; four ride out one
/// being descheduled.
pub const LINKS: usize = 4;
/// How long a link may take to be confirmed, or to take one head, and tiny_http's accept
/// loop to end.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Upstream {
    /// `None` once broken.
    links: Vec<Mutex<Option<TcpStream>>>,
}

impl Upstream {
    /// Opens and confirms every link to tiny_http through `listener`, a second handle of
    /// the one it accepts on, then closes that listener for good. `acks` hears from the
    /// workers: a link's number when one saw its probe, then the end of the accept loop.
    pub fn open(listener: TcpListener, secret: &str, acks: &Receiver<Ack>) -> io::Result<Upstream> {
        let links = (0..LINKS)
            .map(|link| Ok(Mutex::new(Some(connect(&listener, link, secret, acks)?))))
            .collect::<io::Result<_>>()?;
        close(listener, acks)?;
        Ok(Upstream { links })
    }

    /// Writes one request head for tiny_http, on the client's link or, if that one broke,
    /// on the next that has not.
    pub fn forward(&self, client: u64, head: &[u8]) -> io::Result<()> {
        let first = (client % LINKS as u64) as usize;
        for n in (first..LINKS).chain(0..first) {
            let mut link = lock(&self.links[n]);
            let Some(stream) = link.as_mut() else {
                continue;
            };
            if stream.write_all(head).is_ok() {
                return Ok(());
            }
            log::error!("internal connection {n} to tiny_http broke; the others carry its clients");
            *link = None;
        }
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "every internal connection to tiny_http broke",
        ))
    }
}

fn connect(
    listener: &TcpListener,
    link: usize,
    secret: &str,
    acks: &Receiver<Ack>,
) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&listener.local_addr()?, TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    while acks.try_recv().is_ok() {}
    write!(
        stream,
        "OPTIONS * HTTP/1.1\r\nX-Edge-Probe: {link} {secret}\r\n\r\n"
    )?;
    match acks.recv_timeout(TIMEOUT) {
        Ok(Ack::Link(n)) if n == link => Ok(stream),
        _ => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("tiny_http did not take internal connection {link}"),
        )),
    }
}

/// Ends tiny_http's accept loop, which drops its listener (see the module doc).
fn close(listener: TcpListener, acks: &Receiver<Ack>) -> io::Result<()> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    drop(listener);
    // Refused if that accept had already failed.
    drop(TcpStream::connect_timeout(&addr, TIMEOUT));
    match acks.recv_timeout(TIMEOUT) {
        Ok(Ack::Closed) => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "tiny_http kept accepting connections on its internal port {addr} for \
                 {TIMEOUT:?} after it was closed (a local process flooding it?); start again"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{Ipv4Addr, Shutdown};

    use super::*;

    #[test]
    fn a_broken_line_hands_its_clients_to_the_next() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (links, mut ends): (Vec<_>, Vec<_>) = (0..LINKS)
            .map(|_| {
                let link = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                (Mutex::new(Some(link)), listener.accept().unwrap().0)
            })
            .unzip();
        let upstream = Upstream { links };
        let break_line = |n: usize| {
            if let Some(link) = lock(&upstream.links[n]).as_ref() {
                link.shutdown(Shutdown::Write).unwrap();
            }
        };

        break_line(1);
        upstream.forward(5, b"head").unwrap();
        let mut got = [0; 4];
        ends[2].read_exact(&mut got).unwrap();
        assert_eq!(
            &got, b"head",
            "client 5's link broke: the next took its head"
        );
        assert!(lock(&upstream.links[1]).is_none());

        (0..LINKS).for_each(break_line);
        let e = upstream.forward(5, b"head").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
    }
}
