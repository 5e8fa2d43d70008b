//! The TCP socket behind a tiny_http upgrade.
//!
//! `Request::upgrade` hands back a `Box<dyn ReadWrite>`: two dup'd descriptors of the
//! client's socket wrapped in tiny_http's buffered, mutex-guarded reader and writer, with
//! no way to reach the socket. A WebSocket thread needs the socket itself: to make it
//! non-blocking (so one thread can both stream samples and answer pings), to be told by
//! epoll when the client sends something, and to write each frame with one syscall.
//!
//! So [`Registry::adopt`] finds the descriptor: it asks `getpeername` of each open
//! descriptor until two match the request's peer address (the accepted socket and
//! tiny_http's dup of it). Descriptors already adopted are skipped, so the scan costs one
//! syscall per *other* open descriptor (HTTP connections), not per WebSocket client.
//! The boxed stream stays alive inside [`Upgraded`], which owns the descriptors; we only
//! borrow one. Alternatives weighed and rejected: a patched tiny_http (the user chose the
//! crate), interposing `accept4` (process-global), and splitting the box across threads
//! (undefined behaviour).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use socket2::{SockAddr, SockRef};
use tiny_http::ReadWrite;

/// Descriptors that belong to adopted sockets, so later scans skip them.
#[derive(Default)]
pub struct Registry {
    adopted: Mutex<HashSet<RawFd>>,
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

impl Registry {
    /// Finds the socket behind `owner`, whose peer is `peer`, and makes it non-blocking.
    /// Returns the connection and any bytes tiny_http had already read past the request.
    pub fn adopt(
        self: &Arc<Self>,
        owner: Box<dyn ReadWrite + Send>,
        peer: SocketAddr,
        local_port: u16,
    ) -> io::Result<(Upgraded, Vec<u8>)> {
        let fds = {
            let mut adopted = self.lock();
            let fds = find(peer, local_port, &adopted)?;
            adopted.extend(fds);
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

    fn lock(&self) -> MutexGuard<'_, HashSet<RawFd>> {
        self.adopted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Upgraded {
    pub fn fd(&self) -> RawFd {
        self.view.as_raw_fd()
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
        let mut adopted = self.registry.lock();
        for fd in self.fds {
            adopted.remove(&fd);
        }
    }
}

/// The two descriptors of the connection from `peer` to `local_port`.
fn find(peer: SocketAddr, local_port: u16, skip: &HashSet<RawFd>) -> io::Result<[RawFd; 2]> {
    let limit = fd_limit();
    let mut found = Vec::with_capacity(2);
    for fd in 0..limit {
        if skip.contains(&fd) {
            continue;
        }
        if address(fd, libc::getpeername) == Some(peer)
            && address(fd, libc::getsockname).map(|a| a.port()) == Some(local_port)
        {
            found.push(fd);
            if found.len() == 2 {
                return Ok([found[0], found[1]]);
            }
        }
    }
    Err(io::Error::other(format!(
        "no socket connected to {peer} among {limit} descriptors"
    )))
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

fn fd_limit() -> RawFd {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit`.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok {
        RawFd::try_from(limit.rlim_cur).unwrap_or(RawFd::MAX)
    } else {
        1024
    }
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
