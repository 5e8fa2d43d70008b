//! The watcher: one thread that turns "this client sent something" into a channel
//! message, and the socket type of a stream.
//!
//! A stream's thread must react to new samples (a channel from the hub) and to frames from
//! its client (pings, close). A thread can block on only one of them, so the socket side
//! is converted to the other: the watcher waits on every stream's socket at once (mio,
//! which uses each OS's readiness API) and, when one becomes readable or hangs up, sends a
//! unit message on that stream's channel. Readiness is edge-triggered: the stream reads
//! until `WouldBlock` (or until it chooses to stop), and the next edge is the next
//! message. A client that sends faster than its thread reads costs one wake-up, not one
//! per byte.
//!
//! While a write to the socket would block, the watcher also reports when the socket
//! takes bytes again: a stream that stopped reading because its answers could not be
//! written learns when to go on (see `stream::ws`). Only then: a socket watched for
//! writability all the time may be reported at every acknowledgement from its client
//! (kqueue's write filter is), a wake-up per sample for nothing.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, bounded};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use socket2::SockRef;

const STOP: Token = Token(0);

pub struct Watcher {
    shared: Arc<Shared>,
    waker: Waker,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    registry: Registry,
    wakers: Mutex<HashMap<Token, Sender<()>>>,
    next: AtomicUsize,
}

impl Watcher {
    pub fn start() -> io::Result<Watcher> {
        let mut poll = Poll::new()?;
        let shared = Arc::new(Shared {
            registry: poll.registry().try_clone()?,
            wakers: Mutex::default(),
            next: AtomicUsize::new(STOP.0 + 1),
        });
        let waker = Waker::new(poll.registry(), STOP)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (thread_shared, thread_stopping) = (Arc::clone(&shared), Arc::clone(&stopping));
        let thread = thread::Builder::new()
            .name("watcher".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut events = Events::with_capacity(256);
                while !thread_stopping.load(Ordering::SeqCst) {
                    if let Err(e) = poll.poll(&mut events, None) {
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        log::error!("stream watcher stopped: {e}");
                        return;
                    }
                    let wakers = thread_shared.lock();
                    for event in &events {
                        if let Some(tx) = wakers.get(&event.token()) {
                            // Full means a wake-up is already pending: nothing to add.
                            let _ = tx.try_send(());
                        }
                    }
                }
            })?;
        Ok(Watcher {
            shared,
            waker,
            stopping,
            thread: Some(thread),
        })
    }
}

impl Watcher {
    /// Wakes every watched stream, as if its client had sent something.
    pub fn wake_all(&self) {
        for tx in self.shared.lock().values() {
            let _ = tx.try_send(());
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<Token, Sender<()>>> {
        crate::sync::lock(&self.wakers)
    }
}

/// A stream client's socket: blocking (with the timeouts std offers) while the stream
/// opens and sends its first burst, then non-blocking and watched.
pub struct WatchedSocket {
    io: Io,
    watched: Option<(Arc<Shared>, Token)>,
    /// The last write would have blocked: the socket is watched for writability too.
    write_blocked: bool,
    /// Bytes reads may still return (see [`WatchedSocket::allow_reads`]).
    allowance: usize,
}

enum Io {
    Blocking(TcpStream),
    Watched(mio::net::TcpStream),
    Gone,
}

impl WatchedSocket {
    pub fn new(stream: TcpStream) -> WatchedSocket {
        WatchedSocket {
            io: Io::Blocking(stream),
            watched: None,
            write_blocked: false,
            allowance: usize::MAX,
        }
    }

    /// Socket options (timeouts, buffer sizes, shutdown).
    pub fn options(&self) -> SockRef<'_> {
        match &self.io {
            Io::Blocking(s) => SockRef::from(s),
            Io::Watched(s) => SockRef::from(s),
            Io::Gone => unreachable!("a socket is only gone while it is being switched"),
        }
    }

    /// Switches to non-blocking and starts watching. The returned channel receives a
    /// message whenever the client sent something or hung up, and when the socket takes
    /// bytes again after a write would have blocked. Data that arrived before this call is
    /// reported at once.
    pub fn watch(&mut self, watcher: &Watcher) -> io::Result<Receiver<()>> {
        let Io::Blocking(stream) = std::mem::replace(&mut self.io, Io::Gone) else {
            return Err(io::Error::other("the socket is already watched"));
        };
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        let token = Token(watcher.shared.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = bounded(1);
        watcher.shared.lock().insert(token, tx);
        let registered = watcher
            .shared
            .registry
            .register(&mut stream, token, Interest::READABLE);
        self.io = Io::Watched(stream);
        self.watched = Some((Arc::clone(&watcher.shared), token));
        registered.map(|()| rx)
    }
}

impl WatchedSocket {
    /// Bounds what reads return from now on to `bytes` in all: past it they say
    /// `WouldBlock`, whatever the client sent. A parser reading the socket (tungstenite)
    /// then stops within the bound even while its client never stops sending.
    pub fn allow_reads(&mut self, bytes: usize) {
        self.allowance = bytes;
    }

    /// Bytes reads may still return: 0 once a `WouldBlock` may have been the bound's.
    pub fn read_allowance(&self) -> usize {
        self.allowance
    }

    /// Watches for writability too while a write would block, and stops once one
    /// succeeds.
    fn watch_writes(&mut self, blocked: bool) {
        if blocked == self.write_blocked {
            return;
        }
        let (Some((shared, token)), Io::Watched(stream)) = (&self.watched, &mut self.io) else {
            return;
        };
        let interest = if blocked {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match shared.registry.reregister(stream, *token, interest) {
            Ok(()) => self.write_blocked = blocked,
            Err(e) => log::debug!("cannot change what a stream's socket is watched for: {e}"),
        }
    }
}

impl Read for WatchedSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().min(self.allowance);
        if len == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let read = match &mut self.io {
            Io::Blocking(s) => s.read(&mut buf[..len]),
            Io::Watched(s) => s.read(&mut buf[..len]),
            Io::Gone => Err(io::ErrorKind::NotConnected.into()),
        }?;
        self.allowance -= read;
        Ok(read)
    }
}

impl Write for WatchedSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = match &mut self.io {
            Io::Blocking(s) => return s.write(buf),
            Io::Watched(s) => s.write(buf),
            Io::Gone => return Err(io::ErrorKind::NotConnected.into()),
        };
        self.watch_writes(matches!(&written, Err(e) if e.kind() == io::ErrorKind::WouldBlock));
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for WatchedSocket {
    fn drop(&mut self) {
        if let (Some((shared, token)), Io::Watched(stream)) = (self.watched.take(), &mut self.io) {
            let _ = shared.registry.deregister(stream);
            shared.lock().remove(&token);
        }
    }
}
