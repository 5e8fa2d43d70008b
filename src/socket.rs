//! The TCP socket behind a tiny_http upgrade or event stream.
//!
//! `Request::upgrade` hands back a `Box<dyn ReadWrite>`: two dup'd descriptors of the
//! client's socket wrapped in tiny_http's buffered, mutex-guarded reader and writer, with
//! no way to reach the socket. A WebSocket thread needs the socket itself: to make it
//! non-blocking (so one thread can both stream samples and answer pings), to be told by
//! epoll when the client sends something, and to write each frame with one syscall.
//!
//! So [`Registry::adopt`] finds the descriptor: a scan of /proc/self/fd asks
//! `getpeername` of each open descriptor and keeps the accepted sockets by peer address
//! (each appears twice: the accepted socket and tiny_http's dup of it). Adopted
//! descriptors are skipped, so a scan costs syscalls per *HTTP* connection, not per
//! WebSocket client; and one scan serves a whole burst of upgrades. The same table is
//! what `connections` inspects to enforce timeouts and limits on HTTP connections.
//! The boxed stream stays alive inside [`Upgraded`], which owns the descriptors; we only
//! borrow one. Alternatives weighed and rejected: a patched tiny_http (the user chose the
//! crate), interposing `accept4` (process-global), and splitting the box across threads
//! (undefined behaviour).
//!
//! An event stream (SSE) is a plain response, not an upgrade, so tiny_http goes on reading
//! the connection for a next request and closes its descriptors whenever it stops.
//! [`Registry::stream`] therefore gives the stream a descriptor of its own (a dup), which
//! it uses with per-call `MSG_DONTWAIT` so as not to make tiny_http's reads non-blocking.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use socket2::{SockAddr, SockRef, Socket};
use tiny_http::ReadWrite;

/// The sockets tiny_http accepted on our port, as last seen, and which of them we adopted.
pub struct Registry {
    local_port: u16,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Descriptors of adopted (WebSocket) sockets: scans skip them.
    adopted: HashSet<RawFd>,
    /// Every other accepted socket at the last scan: peer -> its descriptors.
    by_peer: HashMap<SocketAddr, Vec<RawFd>>,
    /// Peers of event streams: scans skip their descriptors.
    streaming: HashSet<SocketAddr>,
}

/// An accepted, not adopted connection as seen by [`Registry::connections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Accepted {
    pub fd: RawFd,
    pub peer: SocketAddr,
}

/// An upgraded connection: tiny_http's stream (which owns the socket) and a non-blocking
/// view of the socket that reads and writes around tiny_http's buffers.
pub struct Upgraded {
    view: ManuallyDrop<TcpStream>,
    fds: [RawFd; 2],
    registry: Arc<Registry>,
    // Declared last so it is dropped last: it closes the descriptors `view` borrows.
    owner: Box<dyn ReadWrite + Send>,
}

/// An event stream's connection: a descriptor of our own, hidden from scans (and so from
/// the connections checker's timeouts) while this lives.
pub struct Streamed {
    socket: Socket,
    peer: SocketAddr,
    registry: Arc<Registry>,
}

impl Registry {
    pub fn new(local_port: u16) -> Registry {
        Registry {
            local_port,
            state: Mutex::default(),
        }
    }

    /// Finds the socket behind `owner`, whose peer is `peer`, and makes it non-blocking.
    /// Returns the connection and any bytes tiny_http had already read past the request.
    pub fn adopt(
        self: &Arc<Self>,
        owner: Box<dyn ReadWrite + Send>,
        peer: SocketAddr,
    ) -> io::Result<(Upgraded, Vec<u8>)> {
        let fds = {
            let mut state = self.lock();
            let fds = match self.lookup(&state, peer) {
                Some(fds) => fds,
                None => {
                    self.rescan(&mut state)?;
                    self.lookup(&state, peer).ok_or_else(|| {
                        io::Error::other(format!("no open socket is connected to {peer}"))
                    })?
                }
            };
            state.by_peer.remove(&peer);
            state.adopted.extend(fds);
            fds
        };
        // SAFETY: `fds[0]` is open and stays open while `owner` lives; `Upgraded` keeps
        // `owner` and never closes the view (ManuallyDrop), so the descriptor is not
        // closed twice or used after close.
        let view = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fds[0]) });
        // From here on, dropping `upgraded` on an error unregisters and closes cleanly.
        let mut upgraded = Upgraded {
            view,
            fds,
            registry: Arc::clone(self),
            owner,
        };
        upgraded.view.set_nonblocking(true)?;
        // Descriptors share their file status flags, so tiny_http's reader is now
        // non-blocking too: drain what it buffered after the request line and headers.
        let leftover = drain(&mut upgraded.owner)?;
        Ok((upgraded, leftover))
    }

    /// Takes `peer`'s connection for an event stream (see the module docs).
    pub fn stream(self: &Arc<Self>, peer: SocketAddr) -> io::Result<Streamed> {
        // Any descriptor of the connection will do: after a last request tiny_http may
        // already have closed its reading one.
        let claim = |state: &State| {
            state
                .by_peer
                .get(&peer)
                .and_then(|fds| fds.iter().find_map(|&fd| Accepted { fd, peer }.claim()))
        };
        let mut state = self.lock();
        let mut socket = claim(&state);
        if socket.is_none() {
            self.rescan(&mut state)?;
            socket = claim(&state);
        }
        let socket = socket
            .ok_or_else(|| io::Error::other(format!("no open socket is connected to {peer}")))?;
        state.by_peer.remove(&peer);
        state.streaming.insert(peer);
        Ok(Streamed {
            socket: Socket::from(socket),
            peer,
            registry: Arc::clone(self),
        })
    }

    /// Scans the open descriptors and returns every accepted connection we have not
    /// adopted, one descriptor each.
    pub fn connections(&self) -> io::Result<Vec<Accepted>> {
        let mut state = self.lock();
        self.rescan(&mut state)?;
        Ok(state
            .by_peer
            .iter()
            .filter_map(|(peer, fds)| fds.first().map(|&fd| Accepted { fd, peer: *peer }))
            .collect())
    }

    /// How many descriptors belong to adopted sockets (two per WebSocket).
    pub fn adopted(&self) -> usize {
        self.lock().adopted.len()
    }

    /// The two descriptors of `peer`'s connection if the last scan saw them and they
    /// still are that connection's (a number may have been closed and reused since).
    fn lookup(&self, state: &State, peer: SocketAddr) -> Option<[RawFd; 2]> {
        match state.by_peer.get(&peer)?.as_slice() {
            &[a, b] if self.is_connection(a, peer) && self.is_connection(b, peer) => Some([a, b]),
            _ => None,
        }
    }

    fn is_connection(&self, fd: RawFd, peer: SocketAddr) -> bool {
        address(fd, libc::getpeername) == Some(peer)
            && address(fd, libc::getsockname).map(|a| a.port()) == Some(self.local_port)
    }

    /// Rebuilds `by_peer` from /proc/self/fd. Costs two syscalls per open descriptor that
    /// is not an adopted socket.
    fn rescan(&self, state: &mut State) -> io::Result<()> {
        state.by_peer.clear();
        for entry in std::fs::read_dir("/proc/self/fd")? {
            let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if state.adopted.contains(&fd) {
                continue;
            }
            let Some(peer) =
                address(fd, libc::getpeername).filter(|p| !state.streaming.contains(p))
            else {
                continue;
            };
            if address(fd, libc::getsockname).map(|a| a.port()) == Some(self.local_port) {
                state.by_peer.entry(peer).or_default().push(fd);
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Accepted {
    /// A descriptor of our own for this connection, or `None` if `fd` no longer is it.
    /// Acting through the duplicate, never the number, means a closed and reused number
    /// can never make us touch someone else's connection.
    pub fn claim(&self) -> Option<OwnedFd> {
        // SAFETY: F_DUPFD_CLOEXEC on any number either fails or returns a new descriptor
        // that we own.
        let dup = unsafe { libc::fcntl(self.fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return None;
        }
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        (address(owned.as_raw_fd(), libc::getpeername) == Some(self.peer)).then_some(owned)
    }
}

impl Upgraded {
    pub fn fd(&self) -> RawFd {
        self.view.as_raw_fd()
    }

    /// Switches the socket (and tiny_http's view of it) between blocking and not.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.view.set_nonblocking(nonblocking)
    }

    /// Socket options for a long-lived, low-rate stream, applied after the upgrade.
    pub fn socket(&self) -> SockRef<'_> {
        SockRef::from(&*self.view)
    }
}

impl Read for Upgraded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.view).read(buf)
    }
}

impl Write for Upgraded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.view).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        // Forget the descriptors before `owner` closes them, so that a scan never skips
        // a reused number that now belongs to someone else.
        let mut state = self.registry.lock();
        for fd in self.fds {
            state.adopted.remove(&fd);
        }
    }
}

impl Streamed {
    pub fn socket(&self) -> &Socket {
        &self.socket
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        self.registry.lock().streaming.remove(&self.peer);
    }
}

type AddressFn =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// The peer or local address of descriptor `fd`, if it is an IP socket.
fn address(fd: RawFd, get: AddressFn) -> Option<SocketAddr> {
    // SAFETY: `try_init` hands us storage and its length; `get` is getpeername or
    // getsockname, which write at most that many bytes. On a descriptor that is not an
    // open socket they fail with EBADF or ENOTSOCK and touch nothing.
    let (_, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            if get(fd, storage.cast(), len) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
    }
    .ok()?;
    addr.as_socket()
}

/// Reads everything `stream` yields before it would block.
fn drain(stream: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
