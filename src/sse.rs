//! Server-Sent Events: the stream on the same path for clients that would rather not
//! speak WebSocket: a browser's `EventSource`, `curl -N`, anything that reads HTTP.
//!
//! `GET /api/analytics` with `Accept: text/event-stream` gets the same samples as the
//! WebSocket stream, each as `id: SEQ`, `event: sample`, `data: JSON`. `EventSource`
//! reconnects by itself and sends the last id it saw as `Last-Event-ID`, which resumes
//! exactly like `?since=`: every missed sample, then live, with no gap or duplicate.
//!
//! A connection is served like a WebSocket: a thread of its own, a hub subscription, the
//! watcher to learn that the client left, the same cap (`MAX_WS_CLIENTS` counts both), the
//! same slow-consumer policy (skip, then close after `WS_MAX_SKIPPED`) and the same
//! graceful shutdown (an `event: close` with `retry:` set to a random delay, then close).
//!
//! The stream runs on the connection's own thread, which owns the socket: the head, the
//! welcome and any replay are written blocking (with a timeout), then the socket is
//! watched and written without blocking. A comment line every 15 s of silence keeps
//! proxies from timing the stream out. The head says `Connection: close` and has no
//! length: the stream ends by closing the connection. A client has nothing to send on an
//! event stream, so anything it sends (a pipelined request, say) ends the stream: no
//! bytes pile up, and no request is answered inside the stream.

use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, select};
use serde_json::json;

use tiny_http::{Header, Method, Request};

use crate::edge::StreamFn;
use crate::http::{self, request_header};
use crate::hub::Subscription;
use crate::metrics::Metrics;
use crate::options::Options;
use crate::paths::Route;
use crate::sample::Tick;
use crate::watcher::Socket;
use crate::ws::{self, SEND_BUFFER, Slot, Streams};

/// How long `EventSource` waits before reconnecting after the stream drops.
const RETRY_MS: u64 = 2000;
/// How long one blocking write may take while sending the head and the missed samples.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a GET asks for an event stream (`Accept: text/event-stream`, as `EventSource`
/// sends). Everything else, `*/*` included, keeps getting JSON.
pub fn is_event_stream(request: &Request) -> bool {
    *request.method() == Method::Get && http::accepts(request, "text/event-stream")
}

/// The `since` of a resuming `EventSource`: its `Last-Event-ID`, if that is a sequence
/// number. (Anything else is ignored, as the spec says ids are opaque to the client.)
pub fn last_event_id(request: &Request) -> Option<String> {
    request_header(request, "Last-Event-ID")
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
}

/// The event stream for a request, run on the connection's own thread. `cors` goes into
/// the head; `leftover` is what the client sent after the request.
pub fn stream(slot: Slot, options: Options, cors: Vec<Header>, peer: SocketAddr) -> StreamFn {
    Box::new(move |socket: TcpStream, leftover: Vec<u8>| {
        let streams = slot.streams();
        let _slot = slot;
        serve(
            &streams,
            peer,
            Socket::new(socket),
            leftover.is_empty(),
            options,
            &cors,
        );
    })
}

/// Why a stream ended.
enum End {
    /// The client closed the connection.
    ClientClosed,
    /// We end it: an `event: close` with this body, then close.
    Close(serde_json::Value),
    /// The socket failed.
    Lost(String),
}

/// Streams to one client until it leaves, is too slow, or the server stops. `quiet`:
/// the client sent nothing after its request.
fn serve(
    streams: &Streams,
    peer: SocketAddr,
    socket: Socket,
    quiet: bool,
    options: Options,
    cors: &[Header],
) {
    let started = Instant::now();
    if let Err(e) = socket.options().set_send_buffer_size(SEND_BUFFER) {
        log::debug!("sse {peer}: cannot shrink the send buffer: {e}");
    }
    let (first, subscription) = streams.hub.subscribe();
    streams.metrics.sse_client(1);
    log::info!("sse connect peer={peer} clients={}", streams.clients());
    let mut stream = EventStream {
        socket,
        options,
        metrics: Arc::clone(&streams.metrics),
        pending: Vec::new(),
        last_write: Instant::now(),
        sent: 0,
        skipped: 0,
    };
    let Err(end) = stream.run(streams, &first, &subscription, quiet, cors);
    let detail = stream.finish(end);
    streams.metrics.sse_client(-1);
    log::info!(
        "sse disconnect peer={peer} lifetime={:.1}s end={detail} samples={}",
        started.elapsed().as_secs_f64(),
        stream.sent
    );
}

struct EventStream {
    socket: Socket,
    options: Options,
    metrics: Arc<Metrics>,
    /// Bytes accepted for this client but not yet taken by the kernel.
    pending: Vec<u8>,
    last_write: Instant,
    /// Samples handed to the kernel (or queued behind a partial write).
    sent: u64,
    /// Samples skipped in a row because earlier bytes were still unsent.
    skipped: u32,
}

impl EventStream {
    fn run(
        &mut self,
        streams: &Streams,
        first: &Tick,
        subscription: &Subscription,
        quiet: bool,
        cors: &[Header],
    ) -> Result<Infallible, End> {
        self.open(streams, first, cors)?;
        if !quiet {
            return Err(data_after_request());
        }
        let readable: Receiver<()> = self
            .socket
            .watch(&streams.watcher)
            .map_err(|e| End::Lost(format!("cannot watch the socket: {e}")))?;
        loop {
            let quiet = streams.heartbeat.saturating_sub(self.last_write.elapsed());
            select! {
                recv(subscription.samples) -> tick => match tick {
                    Ok(tick) if tick.seq % self.options.every == 0 => self.deliver(streams, &tick)?,
                    Ok(_) => {}
                    Err(_) => return Err(End::Close(ws::going_away_reason())),
                },
                recv(readable) -> _ => self.read()?,
                recv(streams.stop) -> _ => return Err(End::Close(ws::going_away_reason())),
                default(quiet) => self.heartbeat()?,
            }
        }
    }

    /// Writes the head, the welcome and the first sample, or every sample missed since
    /// `since` / `Last-Event-ID`. Blocking (with a timeout): none of it may be skipped.
    fn open(&mut self, streams: &Streams, first: &Tick, cors: &[Header]) -> Result<(), End> {
        let model = &streams.model;
        let replay = self.options.replay(first.seq);
        let mut welcome = ws::welcome(
            Route::Analytics,
            model,
            &self.options,
            first.seq,
            replay.clone(),
        );
        welcome["resume"] = json!(
            "EventSource resumes by itself: it sends the id of the last sample it got as \
             Last-Event-ID, and receives every sample it missed, then the stream. Other \
             clients can send that header, or ?since=SEQ."
        );
        let mut out = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
             Cache-Control: no-cache, no-transform\r\nX-Accel-Buffering: no\r\n\
             Connection: close\r\n",
        );
        for header in cors {
            out.push_str(&format!("{header}\r\n"));
        }
        out.push_str(&format!(
            "\r\nretry: {RETRY_MS}\nevent: welcome\ndata: {welcome}\n\n"
        ));
        self.pending = out.into_bytes();
        match replay {
            Some(ticks) => {
                let every = self.options.every;
                for seq in ticks.filter(|seq| seq % every == 0) {
                    self.push_sample(seq, self.options.encode(model, seq, None));
                }
            }
            None => {
                let json = self.options.encode(model, first.seq, Some(first));
                self.push_sample(first.seq, json);
            }
        }
        let written = self
            .socket
            .options()
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .and_then(|()| self.socket.write_all(&self.pending))
            .and_then(|()| self.socket.options().set_write_timeout(None));
        // The opening burst can be large (a replay); do not keep its buffer.
        self.pending = Vec::new();
        written.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => End::Close(json!({
                "reason": "client too slow to take the stream's first samples"
            })),
            _ => End::Lost(e.to_string()),
        })
    }

    fn push_sample(&mut self, seq: u64, json: Bytes) {
        self.pending
            .extend_from_slice(format!("id: {seq}\nevent: sample\ndata: ").as_bytes());
        self.pending.extend_from_slice(&json);
        self.pending.extend_from_slice(b"\n\n");
        self.sent += 1;
        self.metrics.sse_event_sent();
    }

    /// Sends one sample, or skips it while earlier bytes are still unsent.
    fn deliver(&mut self, streams: &Streams, tick: &Tick) -> Result<(), End> {
        if !self.flush()? {
            self.skipped += 1;
            streams.metrics.sse_event_skipped();
            if self.skipped >= streams.max_skipped {
                let reason = format!("client is not reading: {} samples skipped", self.skipped);
                return Err(End::Close(json!({ "reason": reason })));
            }
            return Ok(());
        }
        self.skipped = 0;
        let json = self.options.encode(&streams.model, tick.seq, Some(tick));
        self.push_sample(tick.seq, json);
        self.flush().map(drop)
    }

    /// A comment line, unless the client still has bytes to take.
    fn heartbeat(&mut self) -> Result<(), End> {
        if self.flush()? {
            self.pending.extend_from_slice(b": keep-alive\n\n");
            self.flush()?;
        }
        self.last_write = Instant::now();
        Ok(())
    }

    /// Hands pending bytes to the kernel without blocking. `Ok(true)` when none are left.
    fn flush(&mut self) -> Result<bool, End> {
        while !self.pending.is_empty() {
            match self.socket.write(&self.pending) {
                Ok(0) => return Err(End::Lost("the connection accepts no more data".into())),
                Ok(n) => {
                    self.pending.drain(..n);
                    self.last_write = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Lost(e.to_string())),
            }
        }
        Ok(true)
    }

    /// Reads what the client sent: end of stream means it left; anything else ends the
    /// stream (see the module docs).
    fn read(&mut self) -> Result<(), End> {
        let mut buf = [0u8; 64];
        loop {
            match self.socket.read(&mut buf) {
                Ok(0) => return Err(End::ClientClosed),
                Ok(_) => return Err(data_after_request()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Lost(e.to_string())),
            }
        }
    }

    /// Ends the stream: a last `event: close` (best effort; its `retry:` tells
    /// `EventSource` when to reconnect), then our half of the connection is shut, so the
    /// client sees the end of the response. Returns a detail for the log.
    fn finish(&mut self, end: End) -> String {
        let detail = match end {
            End::ClientClosed => "client".into(),
            End::Lost(why) => format!("lost ({why})"),
            End::Close(body) => {
                let retry = body["reconnect_after_ms"].as_u64().unwrap_or(RETRY_MS);
                self.pending.extend_from_slice(
                    format!("retry: {retry}\nevent: close\ndata: {body}\n\n").as_bytes(),
                );
                let _ = self.flush();
                format!("closed ({})", body["reason"].as_str().unwrap_or(""))
            }
        };
        let _ = self.socket.options().shutdown(Shutdown::Both);
        detail
    }
}

fn data_after_request() -> End {
    End::Close(json!({
        "reason": "the client sent data after its event-stream request; an event stream only \
                   sends"
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiny_http::TestRequest;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request {
        headers
            .iter()
            .fold(TestRequest::new().with_method(method), |r, (k, v)| {
                r.with_header(Header::from_bytes(*k, *v).unwrap())
            })
            .into()
    }

    #[test]
    fn only_gets_that_accept_event_streams_are_streams() {
        let get = |accept| is_event_stream(&request(Method::Get, &[("Accept", accept)]));
        assert!(get("text/event-stream"));
        assert!(get("TEXT/Event-Stream; q=0.9"));
        assert!(get("application/json, text/event-stream"));
        assert!(!get("*/*"));
        assert!(!get("application/json"));
        assert!(!get("text/event-streams"));
        assert!(!is_event_stream(&request(Method::Get, &[])));
        let head = request(Method::Head, &[("Accept", "text/event-stream")]);
        assert!(!is_event_stream(&head));
    }

    #[test]
    fn last_event_id_is_used_only_when_it_is_a_sequence_number() {
        let id = |value| last_event_id(&request(Method::Get, &[("Last-Event-ID", value)]));
        assert_eq!(id("42").as_deref(), Some("42"));
        assert_eq!(id(" 7 ").as_deref(), Some("7"));
        assert_eq!(id(""), None);
        assert_eq!(id("abc"), None);
        assert_eq!(id("-1"), None);
        assert_eq!(last_event_id(&request(Method::Get, &[])), None);
    }
}
