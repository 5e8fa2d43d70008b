//! WebSocket: the handshake over tiny_http's upgrade, the welcome, and one dedicated
//! thread per client.
//!
//! Each connection thread blocks in one `select!` over three channels: its hub
//! subscription (samples), the watcher (client sent something) and the server's stop
//! signal. Writes go straight to the non-blocking socket, so a client that stops reading
//! costs its own thread nothing but a skipped sample: after `WS_MAX_SKIPPED` samples in a
//! row could not be handed to the kernel, the connection is closed with 1008. Nothing a
//! client does can delay the generator or another client.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, never, select};
use serde_json::json;
use tiny_http::{HTTPVersion, Method, Request};
use tungstenite::error::ProtocolError;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error, Message, Utf8Bytes, WebSocket};

use crate::edge::StreamFn;
use crate::http::{self, Reply, header, request_header};
use crate::hub::{Hub, Subscription};
use crate::metrics::Metrics;
use crate::options::{Invalid, Options};
use crate::paths::Route;
use crate::sample::Tick;
use crate::simulator::Model;
use crate::watcher::{Socket, Watcher};

/// Clients send only control frames and perhaps a small text message; anything larger is
/// refused with 1009 rather than buffered.
const MAX_MESSAGE: usize = 16 * 1024;
/// Kernel send buffer per client (Linux doubles it). A stream of ~100-byte frames needs
/// little; a small buffer bounds the kernel memory a stalled client pins and how long it
/// takes to notice one: about 150 frames (~4 minutes at 1.5 s) before writes would block.
pub const SEND_BUFFER: usize = 8 * 1024;
/// Bytes of control replies and frames we hold for a client that is not reading (pongs
/// to a ping flood included); past this, samples are skipped and the client is closed.
const MAX_WRITE_BUFFER: usize = 64 * 1024;
/// Messages read per wake-up before the thread looks at its samples and the stop signal.
const READ_BUDGET: usize = 256;
/// How long a closing connection waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long one write may block while replaying missed samples to a resuming client.
const REPLAY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown each client is told to reconnect after a random delay up to this, so that
/// a deploy does not bring every dashboard back in the same instant.
const RECONNECT_SPREAD_MS: u64 = 5000;

/// Shared by all streaming connections (WebSocket and SSE).
pub struct Streams {
    pub hub: Arc<Hub>,
    pub model: Model,
    pub max_clients: usize,
    pub max_skipped: u32,
    /// SSE's keep-alive comment after this long without an event.
    pub heartbeat: Duration,
    /// Disconnected when the server shuts down.
    pub stop: Receiver<()>,
    /// Cleared when shutdown starts: new upgrades get 503.
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub watcher: Watcher,
    /// Open streaming connections (slots reserved by [`Streams::reserve`]).
    pub clients: AtomicUsize,
}

impl Streams {
    /// Open streaming connections (WebSocket and SSE).
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Reserves a client slot, or returns the 503 that refuses the client: while
    /// shutting down, or at `MAX_WS_CLIENTS` (WebSocket and SSE clients together).
    pub fn reserve(self: &Arc<Self>) -> Result<Slot, Reply> {
        if !self.ready.load(Ordering::SeqCst) {
            self.metrics.stream_rejected();
            return Err(http::error(
                503,
                "shutting_down",
                "This instance is shutting down. Reconnect in a few seconds.",
                &[],
            ));
        }
        let reserved = self
            .clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_clients).then_some(n + 1)
            });
        if reserved.is_err() {
            self.metrics.stream_rejected();
            let message = format!(
                "This server is at its limit of {} streaming clients. Retry in a few seconds, \
                 or poll GET /api/analytics.",
                self.max_clients
            );
            return Err(http::error(503, "too_many_clients", &message, &[]));
        }
        Ok(Slot(Arc::clone(self)))
    }
}

/// Whether the request asks to switch to WebSocket.
pub fn is_upgrade(request: &Request) -> bool {
    request_header(request, "Upgrade").is_some_and(|v| {
        v.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
    })
}

/// A client slot, reserved before the response head and released when the connection
/// ends.
pub struct Slot(Arc<Streams>);

impl Slot {
    pub fn streams(&self) -> Arc<Streams> {
        Arc::clone(&self.0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Checks an upgrade request; `connection_upgrade`: its `Connection` header named
/// `upgrade` (the edge read it). Returns the `Sec-WebSocket-Accept` value, or the response
/// that refuses a handshake that cannot be completed.
pub fn handshake(request: &Request, connection_upgrade: bool) -> Result<String, Reply> {
    if *request.method() != Method::Get {
        return Err(http::error(
            400,
            "bad_handshake",
            "WebSocket upgrades must use GET.",
            &[],
        ));
    }
    if !connection_upgrade {
        return Err(http::error(
            400,
            "bad_handshake",
            "A WebSocket upgrade needs `Connection: Upgrade`.",
            &[],
        ));
    }
    if request_header(request, "Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Err(http::error(
            426,
            "unsupported_websocket_version",
            "Only WebSocket version 13 (RFC 6455) is supported: send `Sec-WebSocket-Version: 13`.",
            &[],
        )
        .with_header(header("Sec-WebSocket-Version", "13")));
    }
    let key = request_header(request, "Sec-WebSocket-Key")
        .map(str::trim)
        .filter(|k| is_valid_key(k))
        .ok_or_else(|| {
            http::error(
                400,
                "bad_handshake",
                "Missing or malformed Sec-WebSocket-Key: it must be 16 random bytes in base64.",
                &[],
            )
        })?;
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
    Box::new(move |socket: TcpStream, leftover: Vec<u8>| {
        let streams = slot.streams();
        let _slot = slot;
        match switch(&socket, &accept) {
            Ok(()) => serve(
                &streams,
                route,
                peer,
                Socket::new(socket),
                leftover,
                options,
            ),
            Err(e) => log::info!("ws {peer}: the 101 was not delivered: {e}"),
        }
    })
}

/// A handshake that could be completed, with options that cannot be used: run on the
/// connection's thread, it accepts, sends one frame with the same JSON a REST client would
/// get (`"type": "error"`), and closes with 1008 and a short reason. Browsers and Flutter's
/// `web_socket_channel` show nothing of a refused handshake but its status; they do show
/// a message and a close reason.
pub fn refusal(accept: String, invalid: Invalid, peer: SocketAddr) -> StreamFn {
    Box::new(move |socket: TcpStream, leftover: Vec<u8>| {
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

/// Writes the 101 that switches the connection to WebSocket.
fn switch(socket: &TcpStream, accept: &str) -> io::Result<()> {
    let response = http::empty(101).with_header(header("Sec-WebSocket-Accept", accept));
    let mut head = Vec::with_capacity(256);
    response.raw_print(&mut head, HTTPVersion(1, 1), &[], false, Some("websocket"))?;
    socket.set_write_timeout(Some(REPLAY_WRITE_TIMEOUT))?;
    (&*socket).write_all(&head)
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

/// Why a connection ended, for the disconnect log line.
enum End {
    /// The client closed (with this code, if it sent one).
    ClientClosed(Option<CloseCode>),
    /// We close with this code and reason.
    Close(CloseCode, String),
    /// The socket failed (reset, timeout): no close handshake possible.
    Lost(String),
}

fn serve(
    streams: &Streams,
    route: Route,
    peer: SocketAddr,
    socket: Socket,
    leftover: Vec<u8>,
    options: Options,
) {
    let started = Instant::now();
    if let Err(e) = socket.options().set_send_buffer_size(SEND_BUFFER) {
        log::debug!("ws {peer}: cannot shrink the send buffer: {e}");
    }
    let ws = WebSocket::from_partially_read(socket, leftover, Role::Server, Some(config()));
    let subscription = route.streams().then(|| streams.hub.subscribe());
    streams.metrics.ws_opened(route.path());
    log::info!(
        "ws connect path={} peer={peer} clients={}",
        route.path(),
        streams.clients()
    );
    let mut conn = Connection {
        readable: None,
        ws,
        metrics: Arc::clone(&streams.metrics),
        model: streams.model,
        options,
        sent: 0,
        skipped: 0,
        pending: false,
    };
    let end = conn.run(streams, route, subscription);
    let (code, detail) = conn.finish(end);
    streams.metrics.ws_closed(route.path(), code.clone());
    log::info!(
        "ws disconnect path={} peer={peer} lifetime={:.1}s close={code}{detail} samples={}",
        route.path(),
        started.elapsed().as_secs_f64(),
        conn.sent
    );
}

struct Connection {
    /// Receives a message when the client sent something: once the opening burst is out.
    readable: Option<Receiver<()>>,
    ws: WebSocket<Socket>,
    metrics: Arc<Metrics>,
    model: Model,
    options: Options,
    /// Samples handed to the kernel.
    sent: u64,
    /// Samples skipped in a row because the previous one was still unsent.
    skipped: u32,
    /// The last frame is still in our buffer: the client is not reading.
    pending: bool,
}

impl Connection {
    fn run(
        &mut self,
        streams: &Streams,
        route: Route,
        subscription: Option<(Tick, Subscription)>,
    ) -> End {
        let latest = subscription
            .as_ref()
            .map_or_else(|| streams.hub.latest().seq, |(first, _)| first.seq);
        let replay = self.options.replay(latest).filter(|_| route.streams());
        let welcome = welcome(route, &self.model, &self.options, latest, replay.clone());
        if let Err(end) = self.send(Message::Text(welcome.to_string().into())) {
            return end;
        }
        let never = never();
        let samples = match &subscription {
            Some((first, sub)) => {
                let sent = match replay {
                    Some(ticks) => self.replay(ticks),
                    None => self.deliver(first, streams.max_skipped),
                };
                if let Err(end) = sent {
                    return end;
                }
                &sub.samples
            }
            None => &never,
        };
        let readable = match self.ws.get_mut().watch(&streams.watcher) {
            Ok(readable) => readable,
            Err(e) => return End::Lost(format!("cannot watch the socket: {e}")),
        };
        if let Err(e) = self.ws.get_ref().options().set_write_timeout(None) {
            return End::Lost(format!("cannot stream: {e}"));
        }
        self.readable = Some(readable.clone());
        // Frames that came with the handshake are in tungstenite's buffer, where the
        // watcher cannot see them: read once before waiting.
        if let Err(end) = self.read() {
            return end;
        }
        loop {
            select! {
                recv(samples) -> tick => match tick {
                    Ok(tick) if tick.seq % self.options.every == 0 => {
                        if let Err(end) = self.deliver(&tick, streams.max_skipped) {
                            return end;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return going_away(),
                },
                recv(readable) -> _ => {
                    if let Err(end) = self.read() {
                        return end;
                    }
                },
                recv(streams.stop) -> _ => return going_away(),
            }
        }
    }

    /// Sends the samples a resuming client missed, in order. The socket is still blocking
    /// (with a timeout) while the stream opens: these frames must not be skipped.
    fn replay(&mut self, ticks: std::ops::RangeInclusive<u64>) -> Result<(), End> {
        for seq in ticks.filter(|seq| seq % self.options.every == 0) {
            let text = utf8(self.options.encode(&self.model, seq, None))?;
            match self.ws.write(Message::Text(text)) {
                Ok(()) => {
                    self.sent += 1;
                    self.metrics.ws_frame_sent();
                }
                Err(Error::Io(e)) if is_timeout(&e) => {
                    let reason = "client too slow to take the missed samples".to_string();
                    return Err(End::Close(CloseCode::Policy, reason));
                }
                Err(e) => return Err(lost(e)),
            }
        }
        self.ws.flush().map_err(lost)
    }

    /// Delivers one sample, or skips it if the client has not taken the previous one.
    fn deliver(&mut self, tick: &Tick, max_skipped: u32) -> Result<(), End> {
        if self.pending {
            match self.ws.flush() {
                Ok(()) => self.pending = false,
                Err(Error::Io(e)) if is_timeout(&e) => {}
                Err(e) => return Err(lost(e)),
            }
        }
        if self.pending {
            self.skipped += 1;
            self.metrics.ws_frame_skipped();
            if self.skipped >= max_skipped {
                let reason = format!("client is not reading: {} samples skipped", self.skipped);
                return Err(End::Close(CloseCode::Policy, reason));
            }
            return Ok(());
        }
        self.skipped = 0;
        let text = utf8(self.options.encode(&self.model, tick.seq, Some(tick)))?;
        self.send(Message::Text(text))?;
        self.sent += 1;
        self.metrics.ws_frame_sent();
        Ok(())
    }

    /// Writes a message; a full socket leaves it queued in tungstenite and marks us
    /// pending instead of blocking.
    fn send(&mut self, message: Message) -> Result<(), End> {
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

    /// Reads everything the client sent. tungstenite queues the replies to pings and to a
    /// close frame; the flush at the end sends them.
    fn read(&mut self) -> Result<(), End> {
        let mut client_close = None;
        for budget in (0..=READ_BUDGET).rev() {
            if budget == 0 {
                // More to read: come back after the samples and the stop signal had a look.
                self.ws.get_ref().wake_again();
                break;
            }
            match self.ws.read() {
                Ok(Message::Close(frame)) => client_close = Some(frame.map(|f| f.code)),
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

    /// Completes the close: sends our close frame if we are the one closing, then waits
    /// briefly for the client's. Returns the close code and a detail for the log.
    fn finish(&mut self, end: End) -> (String, String) {
        match end {
            End::ClientClosed(code) => (
                code.map_or("none".into(), |c| u16::from(c).to_string()),
                " (client)".into(),
            ),
            End::Lost(why) => ("lost".into(), format!(" ({why})")),
            End::Close(code, reason) => {
                let label = (u16::from(code).to_string(), format!(" ({reason})"));
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                if self.ws.close(Some(frame)).is_err() {
                    return label;
                }
                let deadline = Instant::now() + CLOSE_GRACE;
                if self.readable.is_none() {
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
                            let woken = self
                                .readable
                                .as_ref()
                                .is_some_and(|r| r.recv_timeout(left).is_ok());
                            if !woken {
                                return label;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return label,
                    }
                }
            }
        }
    }
}

/// Close 1001 with a JSON reason that tells the client when to come back.
/// Valid UTF-8 by construction (serde_json output); the check costs ~100 ns a frame.
fn utf8(json: bytes::Bytes) -> Result<Utf8Bytes, End> {
    Utf8Bytes::try_from(json).map_err(|_| End::Close(CloseCode::Error, "internal error".into()))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn going_away() -> End {
    End::Close(CloseCode::Away, going_away_reason().to_string())
}

/// Why a stream ends on shutdown, and when to come back: a random delay up to 5 s, so
/// that a deploy does not bring every dashboard back in the same instant.
pub fn going_away_reason() -> serde_json::Value {
    let delay = rand::random_range(RECONNECT_SPREAD_MS / 5..=RECONNECT_SPREAD_MS);
    json!({ "reason": "server shutting down", "reconnect_after_ms": delay })
}

fn lost(e: Error) -> End {
    End::Lost(e.to_string())
}

/// Maps a protocol violation by the client to the close code that says so.
fn refuse(e: Error) -> End {
    match e {
        Error::Capacity(e) => End::Close(
            CloseCode::Size,
            format!("{e}; messages to this server are limited to {MAX_MESSAGE} bytes"),
        ),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            End::Lost("connection reset without a close frame".into())
        }
        Error::Protocol(e) => End::Close(CloseCode::Protocol, e.to_string()),
        Error::Utf8(_) => End::Close(CloseCode::Invalid, "text frame is not valid UTF-8".into()),
        e => lost(e),
    }
}

/// The first frame every client gets: what this path offers, what samples look like, and
/// how to resume.
pub fn welcome(
    route: Route,
    model: &Model,
    options: &Options,
    latest: u64,
    replay: Option<std::ops::RangeInclusive<u64>>,
) -> serde_json::Value {
    let streaming = route.streams();
    let message = if streaming {
        "Connected to the Real-Time Analytics Backend: the latest sample follows, then one \
         per interval."
    } else {
        "Connected to the Real-Time Analytics Backend. This path only says hello; connect to \
         /api/analytics for the stream."
    };
    let mut welcome = json!({
        "type": "welcome",
        "message": message,
        "path": route.path(),
        "streaming": streaming,
        "interval_ms": model.interval_ms() * options.every,
        "fields": options.fields.names(),
        "profile": options.profile.name(),
        "scenario": options.scenario.name(),
        "seq": latest,
    });
    if streaming {
        welcome["resume"] = json!(
            "Reconnect with ?since=SEQ (the seq of the last sample you got; add seq=1 to \
             receive it in each sample) to get every sample you missed, then the stream."
        );
    }
    if let Some(ticks) = replay {
        // `cut`: the client missed more than the replay holds; the samples between its
        // `since` and `from` are not sent (history can still fetch them).
        let cut = options
            .since
            .is_some_and(|since| since + 1 < *ticks.start());
        welcome["replay"] = json!({ "from": ticks.start(), "to": ticks.end(), "cut": cut });
    }
    if !options.ignored.is_empty() {
        welcome["ignored"] = json!(options.ignored);
    }
    welcome
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
    fn welcome_says_whether_the_path_streams() {
        let model = Model {
            seed: 1,
            interval: Duration::from_millis(1500),
            profile: crate::simulator::Profile::Blog,
            scenario: crate::simulator::Scenario::Normal,
            utc_offset_hours: 0.0,
        };
        let options = crate::options::parse(&[], &model, 10).unwrap();
        let v = welcome(Route::Analytics, &model, &options, 10, None);
        assert_eq!(v["type"], "welcome");
        assert_eq!(v["streaming"], true);
        assert_eq!(v["interval_ms"], 1500);
        assert_eq!(v["seq"], 10);
        assert_eq!(v["fields"].as_array().unwrap().len(), 4);
        let v = welcome(Route::Api, &model, &options, 10, Some(5..=10));
        assert_eq!(v["streaming"], false);
        assert_eq!(v["path"], "/api");
        assert!(
            v.get("resume").is_none(),
            "a path that never streams offers no resume"
        );
        assert_eq!(v["replay"]["from"], 5);
        // A replay that starts after the client's `since` says it was cut.
        for (since, cut) in [(4, false), (3, true)] {
            let options = crate::options::Options {
                since: Some(since),
                ..options.clone()
            };
            let v = welcome(Route::Analytics, &model, &options, 10, Some(5..=10));
            assert_eq!(v["replay"]["cut"], cut, "since={since}");
        }
    }
}
