//! WebSocket: the handshake over tiny_http's upgrade, and the encoder that frames the
//! stream as text messages (tungstenite), with pings as its keep-alive and close codes
//! for its ends.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use serde_json::{Value, json};
use tiny_http::Method;
use tungstenite::error::ProtocolError;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error, Message, Utf8Bytes, WebSocket};

use super::{Encoder, End, Slot, Start};
use crate::budget::{INBOUND_BYTES, INBOUND_MESSAGES, Rate};
use crate::error::Refusal;
use crate::http::StreamFn;
use crate::metrics::Stream;
use crate::options::{Invalid, Options};
use crate::paths::Route;
use crate::request::ClientRequest;
use crate::watcher::WatchedSocket;

/// Clients send only control frames and perhaps a small text message; anything larger is
/// refused with 1009 rather than buffered.
const MAX_MESSAGE: usize = 16 * 1024;
/// Bytes of frames we hold for a client that is not reading; past this, samples are
/// skipped and the client is closed.
const MAX_WRITE_BUFFER: usize = 64 * 1024;
/// How long a closing connection waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long the 101 may take to write.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks an upgrade request as RFC 6455 4.2.1 asks. Returns the
/// `Sec-WebSocket-Accept` value, or why the handshake cannot be completed.
pub fn handshake(request: &ClientRequest) -> Result<String, Refusal> {
    if *request.method != Method::Get {
        return Err(Refusal::NotGet);
    }
    if request.hop.minor == 0 {
        return Err(Refusal::NotHttp11);
    }
    if !request.hop.upgrade {
        return Err(Refusal::NoConnectionUpgrade);
    }
    // Each may appear once: two keys or versions leave the handshake ambiguous.
    if let Some(name) = request.repeated {
        return Err(Refusal::Repeated(name));
    }
    if request.websocket_version.map(str::trim) != Some("13") {
        return Err(Refusal::WebSocketVersion);
    }
    let key = request
        .websocket_key
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
pub fn session(
    accept: String,
    slot: Slot,
    route: Route,
    options: Options,
    peer: String,
) -> StreamFn {
    let start = Start::new(&slot.0, route, options.site);
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
        let encoder = Frames::new(ws);
        let (close, sent) = super::run(streams, encoder, route, &options, start);
        metrics.ws_closed(route.path(), close.split(' ').next().unwrap_or(""));
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
fn websocket(socket: TcpStream, leftover: Vec<u8>) -> Box<WebSocket<WatchedSocket>> {
    let socket = WatchedSocket::new(socket);
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
pub fn refusal(accept: String, slot: Slot, invalid: Invalid, peer: String) -> StreamFn {
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
        let mut socket = WatchedSocket::new(socket);
        socket.allow_reads(INBOUND_BYTES.burst as usize);
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
            // The client's close frame, the grace period, or the inbound bounds end it.
            let deadline = Instant::now() + CLOSE_GRACE;
            for _ in 0..INBOUND_MESSAGES.burst {
                if ws.read().is_err() || Instant::now() > deadline {
                    break;
                }
            }
        }
    })
}

/// Writes the 101 that switches the connection to WebSocket. Written out here rather than
/// by tiny_http's `raw_print`, whose `io::copy` puts an 8 KiB buffer on the stream
/// thread's stack: those pages would stay resident for the connection's lifetime.
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
    ws: Box<WebSocket<WatchedSocket>>,
    /// Messages the client may still send ([`INBOUND_MESSAGES`]).
    messages: Bucket,
    /// Bytes the client may still send ([`INBOUND_BYTES`]).
    bytes: Bucket,
}

impl Frames {
    fn new(ws: Box<WebSocket<WatchedSocket>>) -> Frames {
        let now = Instant::now();
        Frames {
            ws,
            messages: Bucket::new(INBOUND_MESSAGES, now),
            bytes: Bucket::new(INBOUND_BYTES, now),
        }
    }
}

impl Encoder for Frames {
    const KIND: Stream = Stream::WebSocket;
    const RESUME: &'static str = "Reconnect with ?since=SEQ (the seq of the last sample you got; \
        add seq=1 to receive it in each sample) to get every sample you missed, then the stream.";

    fn socket(&mut self) -> &mut WatchedSocket {
        self.ws.get_mut()
    }

    /// tungstenite writes each message to the socket at once (`write_buffer_size(0)`):
    /// nothing gathers here.
    fn open(&mut self, welcome: &Value) -> Result<(), End> {
        self.ws
            .write(Message::Text(welcome.to_string().into()))
            .map_err(too_slow)
    }

    fn open_sample(&mut self, _seq: u64, json: Bytes) -> Result<(), End> {
        self.ws.write(Message::Text(utf8(json)?)).map_err(too_slow)
    }

    fn opened(&mut self) -> Result<(), End> {
        self.ws.flush().map_err(too_slow)
    }

    fn flush(&mut self) -> Result<bool, End> {
        match self.ws.flush() {
            Ok(()) => Ok(true),
            Err(Error::Io(e)) if is_timeout(&e) => Ok(false),
            Err(e) => Err(lost(e)),
        }
    }

    fn send(&mut self, _seq: u64, json: Bytes) -> Result<(), End> {
        let text = utf8(json)?;
        self.write(Message::Text(text))
    }

    /// Reads what the client sent, within [`INBOUND_MESSAGES`] and [`INBOUND_BYTES`]
    /// (past them, close 1008). tungstenite queues the answer to a ping or a close.
    /// Before each frame, what is queued for the client (samples, that answer) is handed
    /// to the kernel; while it cannot be (the client is not reading), nothing more is
    /// read, and the watcher reports when the socket takes bytes again. A client that
    /// sends without reading costs no more than the answers that fill its buffers.
    fn read(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let allowed = self.bytes.left(now);
        self.socket().allow_reads(allowed as usize);
        let read = self.read_messages(now);
        let unread = self.socket().read_allowance() as u32;
        self.bytes.take(allowed - unread, now);
        read
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
        let allowed = self.bytes.left(Instant::now());
        self.socket().allow_reads(allowed as usize);
        if readable.is_none() {
            // Still blocking: reads wait for the client's close frame themselves.
            let _ = self
                .ws
                .get_ref()
                .options()
                .set_read_timeout(Some(CLOSE_GRACE));
        }
        // Until the client's close frame, within the inbound bounds.
        loop {
            match self.ws.read() {
                Err(Error::Io(e)) if is_timeout(&e) => {
                    if self.socket().read_allowance() == 0 {
                        break;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if readable.is_none_or(|r| r.recv_timeout(left).is_err()) {
                        return label;
                    }
                }
                Ok(Message::Close(_)) => {}
                Ok(_) if self.messages.take(1, Instant::now()) => {}
                Ok(_) => break,
                Err(_) => return label,
            }
        }
        // Past the bounds, the client's close frame (if it sends one) is behind frames that
        // are not read, and closing with unread bytes resets the connection, which drops
        // what is still unsent. So our side is shut (our close frame and a FIN go out
        // now) and the connection is held, unread, for the rest of the grace period.
        let _ = self.socket().options().shutdown(Shutdown::Write);
        if let Some(readable) = readable {
            while readable.recv_deadline(deadline).is_ok() {}
        }
        label
    }
}

impl Frames {
    /// Writes a message without blocking: a full socket leaves it queued in tungstenite
    /// (or drops it, past `MAX_WRITE_BUFFER`), and the next flush says so.
    fn write(&mut self, message: Message) -> Result<(), End> {
        match self.ws.send(message) {
            Ok(()) | Err(Error::WriteBufferFull(_)) => Ok(()),
            Err(Error::Io(e)) if is_timeout(&e) => Ok(()),
            Err(e) => Err(lost(e)),
        }
    }

    /// Reads messages until the socket has no more, an answer cannot be written, the
    /// client closes, or it passes a bound. `now`: when this wake-up began.
    fn read_messages(&mut self, now: Instant) -> Result<(), End> {
        while self.flush()? {
            match self.ws.read() {
                Ok(Message::Close(frame)) => {
                    // tungstenite queued the echo of the close frame: send it.
                    let _ = self.ws.flush();
                    return Err(End::ClientClosed(frame.map(|f| u16::from(f.code))));
                }
                Ok(_) if !self.messages.take(1, now) => {
                    return Err(exceeded(INBOUND_MESSAGES, "messages"));
                }
                Ok(_) => {}
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return match self.socket().read_allowance() {
                        0 => Err(exceeded(INBOUND_BYTES, "bytes")),
                        _ => Ok(()),
                    };
                }
                Err(Error::ConnectionClosed) => return Err(End::ClientClosed(None)),
                Err(e) => return Err(refuse(e)),
            }
        }
        Ok(())
    }
}

/// The close for a client past `rate`, saying what the rate is.
fn exceeded(rate: Rate, what: &str) -> End {
    End::close(
        1008,
        format!(
            "sent more than {} {what} at once or {} a second",
            rate.burst, rate.per_second
        ),
    )
}

/// A token bucket for a [`Rate`], kept as the instant it is full again (the generic cell
/// rate algorithm): nothing to refill, one comparison a take.
struct Bucket {
    rate: Rate,
    full_at: Instant,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket { rate, full_at: now }
    }

    /// How long one token takes to come back.
    fn token(&self) -> Duration {
        Duration::from_secs(1) / self.rate.per_second
    }

    /// Tokens left at `now`.
    fn left(&self, now: Instant) -> u32 {
        let owed = self.full_at.saturating_duration_since(now).as_nanos();
        let owed = owed.div_ceil(self.token().as_nanos());
        self.rate
            .burst
            .saturating_sub(owed.try_into().unwrap_or(u32::MAX))
    }

    /// Takes `n` tokens; takes none and returns false when fewer are left.
    fn take(&mut self, n: u32, now: Instant) -> bool {
        if n > self.left(now) {
            return false;
        }
        self.full_at = self.full_at.max(now) + self.token() * n;
        true
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

/// A blocking write of the opening that timed out: the client does not take it.
fn too_slow(e: Error) -> End {
    match e {
        Error::Io(e) if is_timeout(&e) => {
            End::close(1008, "client too slow to take the opening samples")
        }
        e => lost(e),
    }
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

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut bucket = Bucket::new(
            Rate {
                burst: 3,
                per_second: 10,
            },
            t,
        );
        assert!(bucket.take(3, t));
        assert!(!bucket.take(1, t), "the burst is spent");
        assert_eq!(bucket.left(t + ms(99)), 0);
        assert_eq!(bucket.left(t + ms(100)), 1, "a token every 100 ms");
        assert!(bucket.take(1, t + ms(100)));
        assert!(!bucket.take(1, t + ms(150)));
        assert!(!bucket.take(4, t + ms(10_000)), "never more than the burst");
        assert!(bucket.take(3, t + ms(10_000)));
    }

    /// While the client does not take what was sent to it, its frames stay unread in the
    /// kernel (no pong piles up behind the samples); once it reads, the watcher says so,
    /// and each ping is read and answered in turn.
    #[test]
    fn frames_are_not_read_while_answers_cannot_be_written() {
        use std::net::TcpListener;

        let watcher = crate::watcher::Watcher::start().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        client
            .connect(&listener.local_addr().unwrap().into())
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        let mut frames = Frames::new(websocket(server, Vec::new()));
        let events = frames.socket().watch(&watcher).unwrap();
        let sample = Bytes::from(format!("\"{}\"", "x".repeat(1000)));
        for _ in 0..10_000 {
            if !matches!(frames.flush(), Ok(true)) {
                break;
            }
            assert!(frames.send(0, sample.clone()).is_ok());
        }
        // And more queued behind: whatever the kernel takes meanwhile, some stay unsent.
        for _ in 0..30 {
            assert!(frames.send(0, sample.clone()).is_ok());
        }
        assert!(matches!(frames.flush(), Ok(false)), "the socket is full");

        let mut client = WebSocket::from_raw_socket(TcpStream::from(client), Role::Client, None);
        for ping in ["1", "2", "3"] {
            client.send(Message::Ping(ping.into())).unwrap();
        }
        let unread = |frames: &mut Frames| {
            let mut buf = [std::mem::MaybeUninit::new(0u8); 64];
            frames.socket().options().peek(&mut buf).unwrap_or(0)
        };
        while unread(&mut frames) < 3 * 7 {
            events.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert!(frames.read().is_ok());
        assert_eq!(unread(&mut frames), 3 * 7, "the pings stay in the kernel");

        let (tx, pongs) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let mut pongs = Vec::new();
            while pongs.len() < 3 {
                if let Message::Pong(payload) = client.read().unwrap() {
                    pongs.push(String::from_utf8(payload.to_vec()).unwrap());
                }
            }
            tx.send(pongs).unwrap();
        });
        let pongs = loop {
            crossbeam_channel::select! {
                recv(events) -> _ => assert!(frames.read().is_ok()),
                recv(pongs) -> pongs => break pongs.unwrap(),
                default(Duration::from_secs(10)) => panic!("the client read, and no wake-up came"),
            }
        };
        assert_eq!(pongs, ["1", "2", "3"]);
    }
}
