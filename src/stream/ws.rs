//! WebSocket: the handshake over tiny_http's upgrade, and the encoder that frames the
//! stream as text messages (tungstenite), with pings as its keep-alive and close codes
//! for its ends.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use serde_json::{Value, json};
use tiny_http::{Method, Request};
use tungstenite::error::ProtocolError;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error, Message, Utf8Bytes, WebSocket};

use super::{Encoder, End, Slot, Start};
use crate::edge::StreamFn;
use crate::error::Refusal;
use crate::http::request_header;
use crate::metrics::Stream;
use crate::options::{Invalid, Options};
use crate::paths::Route;
use crate::watcher::Socket;

/// Clients send only control frames and perhaps a small text message; anything larger is
/// refused with 1009 rather than buffered.
const MAX_MESSAGE: usize = 16 * 1024;
/// Bytes of control replies and frames we hold for a client that is not reading (pongs
/// to a ping flood included); past this, samples are skipped and the client is closed.
const MAX_WRITE_BUFFER: usize = 64 * 1024;
/// Messages read per wake-up before the thread looks at its samples and the server's state.
const READ_BUDGET: usize = 256;
/// How long a closing connection waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long the 101 may take to write.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the request asks to switch to WebSocket.
pub fn is_upgrade(request: &Request) -> bool {
    request_header(request, "Upgrade").is_some_and(|v| {
        v.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
    })
}

/// Checks an upgrade request; `connection_upgrade`: its `Connection` header named
/// `upgrade` (the edge read it). Returns the `Sec-WebSocket-Accept` value, or why the
/// handshake cannot be completed.
pub fn handshake(request: &Request, connection_upgrade: bool) -> Result<String, Refusal> {
    if *request.method() != Method::Get {
        return Err(Refusal::NotGet);
    }
    if !connection_upgrade {
        return Err(Refusal::NoConnectionUpgrade);
    }
    if request_header(request, "Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Err(Refusal::WebSocketVersion);
    }
    let key = request_header(request, "Sec-WebSocket-Key")
        .map(str::trim)
        .filter(|k| is_valid_key(k))
        .ok_or(Refusal::BadKey)?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// A key is 16 bytes in base64: 22 characters and `==`.
fn is_valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The stream of an accepted upgrade, run on the connection's own thread: the 101, then
/// the stream until it ends.
pub fn stream(
    accept: String,
    slot: Slot,
    route: Route,
    options: Options,
    peer: SocketAddr,
) -> StreamFn {
    let start = Start::new(&slot.0, route);
    Box::new(move |socket: TcpStream, leftover: Vec<u8>| {
        if let Err(e) = switch(&socket, &accept) {
            log::info!("ws {peer}: the 101 was not delivered: {e}");
            return;
        }
        let streams = &slot.0;
        let metrics = &streams.ctx.metrics;
        let started = Instant::now();
        let ws = websocket(socket, leftover);
        metrics.ws_opened(route.path());
        log::info!(
            "ws connect path={} peer={peer} clients={}{}",
            route.path(),
            streams.clients(),
            super::chaos_note(&options, route)
        );
        let encoder = Frames { ws, pending: false };
        let (close, sent) = super::run(streams, encoder, route, &options, start);
        metrics.ws_closed(
            route.path(),
            close.split(' ').next().unwrap_or("").to_string(),
        );
        log::info!(
            "ws disconnect path={} peer={peer} lifetime={:.1}s close={close} samples={sent}",
            route.path(),
            started.elapsed().as_secs_f64(),
        );
    })
}

/// The stream's WebSocket, on the heap: built out of line, so that its bytes are not
/// one more copy in the stream closure's frame, which every stream thread's stack holds
/// for its lifetime (see `edge::STACK`).
#[inline(never)]
fn websocket(socket: TcpStream, leftover: Vec<u8>) -> Box<WebSocket<Socket>> {
    let socket = Socket::new(socket);
    Box::new(WebSocket::from_partially_read(
        socket,
        leftover,
        Role::Server,
        Some(config()),
    ))
}

/// A handshake that could be completed, with options that cannot be used: run on the
/// connection's thread, it accepts, sends one frame with the same JSON a REST client would
/// get (`"type": "error"`), and closes with 1008 and a short reason. Browsers and Flutter's
/// `web_socket_channel` show nothing of a refused handshake but its status; they do show
/// a message and a close reason. The connection holds its `slot` until it closes.
pub fn refusal(accept: String, slot: Slot, invalid: Invalid, peer: SocketAddr) -> StreamFn {
    Box::new(move |socket: TcpStream, leftover: Vec<u8>| {
        let _slot = slot;
        log::info!(
            "ws {peer}: refused (bad_query, {}): {}",
            invalid.parameter,
            invalid.message
        );
        if switch(&socket, &accept).is_err() || socket.set_read_timeout(Some(CLOSE_GRACE)).is_err()
        {
            return;
        }
        let mut ws = WebSocket::from_partially_read(socket, leftover, Role::Server, Some(config()));
        let error = json!({
            "type": "error",
            "error": "bad_query",
            "parameter": invalid.parameter,
            "message": invalid.message,
        });
        let mut reason = format!("bad {}: {}", invalid.parameter, invalid.message);
        while reason.len() > 123 {
            reason.pop();
        }
        let frame = CloseFrame {
            code: CloseCode::Policy,
            reason: reason.into(),
        };
        if ws.send(Message::Text(error.to_string().into())).is_ok() && ws.close(Some(frame)).is_ok()
        {
            // The client's close frame, or the grace period, ends it.
            let deadline = Instant::now() + CLOSE_GRACE;
            while ws.read().is_ok() && Instant::now() < deadline {}
        }
    })
}

/// Writes the 101 that switches the connection to WebSocket. Written out here rather than
/// by tiny_http's `raw_print`, whose `io::copy` puts an 8 KiB buffer on the stream
/// thread's stack: those pages would stay resident for the connection's lifetime
/// (measured: 8 KiB more RSS per WebSocket client).
fn switch(socket: &TcpStream, accept: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    socket.set_write_timeout(Some(SWITCH_TIMEOUT))?;
    (&*socket).write_all(head.as_bytes())
}

/// tungstenite's settings: small buffers, bounded messages and replies.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// The WebSocket encoder: each sample a text message.
struct Frames {
    ws: Box<WebSocket<Socket>>,
    /// The last frame is still in tungstenite's buffer: the client is not reading.
    pending: bool,
}

impl Encoder for Frames {
    const KIND: Stream = Stream::WebSocket;
    const RESUME: &'static str = "Reconnect with ?since=SEQ (the seq of the last sample you got; \
        add seq=1 to receive it in each sample) to get every sample you missed, then the stream.";

    fn socket(&mut self) -> &mut Socket {
        self.ws.get_mut()
    }

    fn open(&mut self, welcome: &Value, samples: Vec<(u64, Bytes)>) -> Result<(), End> {
        let too_slow = |e: Error| match e {
            Error::Io(e) if is_timeout(&e) => {
                End::close(1008, "client too slow to take the opening samples")
            }
            e => lost(e),
        };
        self.ws
            .write(Message::Text(welcome.to_string().into()))
            .map_err(too_slow)?;
        for (_, json) in samples {
            self.ws
                .write(Message::Text(utf8(json)?))
                .map_err(too_slow)?;
        }
        self.ws.flush().map_err(too_slow)
    }

    fn flush(&mut self) -> Result<bool, End> {
        if self.pending {
            match self.ws.flush() {
                Ok(()) => self.pending = false,
                Err(Error::Io(e)) if is_timeout(&e) => {}
                Err(e) => return Err(lost(e)),
            }
        }
        Ok(!self.pending)
    }

    fn send(&mut self, _seq: u64, json: Bytes) -> Result<(), End> {
        let text = utf8(json)?;
        self.write(Message::Text(text))
    }

    /// Reads everything the client sent. tungstenite queues the replies to pings and to a
    /// close frame; the flush at the end sends them.
    fn read(&mut self) -> Result<(), End> {
        let mut client_close = None;
        for budget in (0..=READ_BUDGET).rev() {
            if budget == 0 {
                // More to read: come back after the samples and the server's state had a look.
                self.ws.get_ref().wake_again();
                break;
            }
            match self.ws.read() {
                Ok(Message::Close(frame)) => client_close = Some(frame.map(|f| u16::from(f.code))),
                Ok(_) => {}
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(Error::ConnectionClosed) => {
                    return Err(End::ClientClosed(client_close.flatten()));
                }
                Err(e) => return Err(refuse(e)),
            }
        }
        match self.ws.flush() {
            Ok(()) => Ok(()),
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending = true;
                Ok(())
            }
            Err(Error::ConnectionClosed) => Err(End::ClientClosed(client_close.flatten())),
            Err(e) => Err(lost(e)),
        }
    }

    /// A ping: proxies see traffic, and the client's pong is read and dropped.
    fn keep_alive(&mut self) -> Result<(), End> {
        self.write(Message::Ping(Bytes::new()))
    }

    /// Completes the close: sends our close frame if we are the one closing, then waits
    /// briefly for the client's. Returns the close code and a detail, for the log.
    fn finish(&mut self, end: End, readable: Option<&Receiver<()>>) -> String {
        let (code, body) = match end {
            End::ClientClosed(code) => {
                return format!("{} (client)", code.map_or("none".into(), |c| c.to_string()));
            }
            End::Lost(why) => return format!("lost ({why})"),
            End::Dropped => return "dropped".into(),
            End::Close(code, body) => (code, body),
        };
        // The reason text, or the whole JSON when it carries more (a reconnect delay).
        let reason = match (body["reason"].as_str(), body.as_object().map(|o| o.len())) {
            (Some(text), Some(1)) => text.to_string(),
            _ => body.to_string(),
        };
        let label = format!("{code} ({reason})");
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        if self.ws.close(Some(frame)).is_err() {
            return label;
        }
        let deadline = Instant::now() + CLOSE_GRACE;
        if readable.is_none() {
            // Still blocking: reads wait for the client's close frame themselves.
            let _ = self
                .ws
                .get_ref()
                .options()
                .set_read_timeout(Some(CLOSE_GRACE));
        }
        loop {
            match self.ws.read() {
                Err(Error::Io(e)) if is_timeout(&e) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if readable.is_none_or(|r| r.recv_timeout(left).is_err()) {
                        return label;
                    }
                }
                Ok(_) => {}
                Err(_) => return label,
            }
        }
    }
}

impl Frames {
    /// Writes a message; a full socket leaves it queued in tungstenite and marks us
    /// pending instead of blocking.
    fn write(&mut self, message: Message) -> Result<(), End> {
        match self.ws.send(message) {
            Ok(()) => Ok(()),
            Err(Error::Io(e)) if is_timeout(&e) => {
                self.pending = true;
                Ok(())
            }
            Err(Error::WriteBufferFull(_)) => {
                self.pending = true;
                Ok(())
            }
            Err(e) => Err(lost(e)),
        }
    }
}

/// Valid UTF-8 by construction (serde_json output); the check costs ~100 ns a frame.
fn utf8(json: Bytes) -> Result<Utf8Bytes, End> {
    Utf8Bytes::try_from(json).map_err(|_| End::close(1011, "internal error"))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn lost(e: Error) -> End {
    End::Lost(e.to_string())
}

/// Maps a protocol violation by the client to the close code that says so.
fn refuse(e: Error) -> End {
    match e {
        Error::Capacity(e) => End::close(
            1009,
            format!("{e}; messages to this server are limited to {MAX_MESSAGE} bytes"),
        ),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            End::Lost("connection reset without a close frame".into())
        }
        Error::Protocol(e) => End::close(1002, e.to_string()),
        Error::Utf8(_) => End::close(1007, "text frame is not valid UTF-8"),
        e => lost(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_16_bytes_of_base64() {
        assert!(is_valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZQ=!"));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25j*Q=="));
    }
}
