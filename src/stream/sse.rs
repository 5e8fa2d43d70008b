//! Server-Sent Events: the stream on the same path for clients that would rather not
//! speak WebSocket: a browser's `EventSource`, `curl -N`, anything that reads HTTP.
//!
//! `GET /api/analytics` with `Accept: text/event-stream` gets the same samples as the
//! WebSocket stream, each as `id: SEQ`, `event: sample`, `data: JSON`. `EventSource`
//! reconnects by itself and sends the last id it saw as `Last-Event-ID`, which resumes
//! exactly like `?since=`: every missed sample, then live, with no gap or duplicate.
//!
//! The loop is the WebSocket's (see the parent module): the same cap, subscription,
//! replay, slow-consumer policy and shutdown; this encoder writes the head, frames each
//! sample as an event, keeps a silent stream alive with a comment line, and ends with an
//! `event: close` whose `retry:` is the random reconnect delay. The head says `Connection: close` and has no
//! length: the stream ends by closing the connection. A client has nothing to send on an
//! event stream, so anything it sends (a pipelined request, say) ends the stream: no
//! bytes pile up, and no request is answered inside the stream.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use serde_json::Value;
use tiny_http::Header;

use super::{Encoder, End, Slot, Start};
use crate::budget;
use crate::http::StreamFn;
use crate::metrics::Stream;
use crate::options::Options;
use crate::paths::Route;
use crate::watcher::WatchedSocket;

/// How long `EventSource` waits before reconnecting after the stream drops.
const RETRY_MS: u64 = 2000;

/// The event stream for a request, run on the connection's own thread. `cors` goes into
/// the head; `leftover` is what the client sent after the request.
pub fn session(slot: Slot, options: Options, cors: Vec<Header>, peer: String) -> StreamFn {
    let start = Start::new(&slot.0, Route::Analytics, options.site);
    Box::new(move |socket: TcpStream, leftover: Vec<u8>| {
        let streams = &slot.0;
        let metrics = &streams.ctx.metrics;
        let started = Instant::now();
        metrics.sse_client(1);
        log::info!(
            "sse connect peer={peer} clients={}{}",
            streams.clients(),
            super::chaos_note(&options, Route::Analytics)
        );
        let encoder = Events {
            socket: WatchedSocket::new(socket),
            pending: Vec::new(),
            cors,
            quiet: leftover.is_empty(),
        };
        let (end, sent) = super::run(streams, encoder, Route::Analytics, &options, start);
        metrics.sse_client(-1);
        log::info!(
            "sse disconnect peer={peer} lifetime={:.1}s end={end} samples={sent}",
            started.elapsed().as_secs_f64(),
        );
    })
}

/// The SSE encoder: each sample an event.
struct Events {
    socket: WatchedSocket,
    /// Bytes accepted for this client but not yet taken by the kernel.
    pending: Vec<u8>,
    /// CORS headers for the head.
    cors: Vec<Header>,
    /// The client sent nothing after its request.
    quiet: bool,
}

impl Encoder for Events {
    const KIND: Stream = Stream::Sse;
    const RESUME: &'static str = "EventSource resumes by itself: it sends the id of the last \
        sample it got as Last-Event-ID, and receives every sample it missed, then the stream. \
        Other clients can send that header, or ?since=SEQ.";

    fn socket(&mut self) -> &mut WatchedSocket {
        &mut self.socket
    }

    /// The head, `retry:` and the welcome event, gathered with the first samples.
    fn open(&mut self, welcome: &Value) -> Result<(), End> {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nDate: {}\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
             Cache-Control: no-cache, no-transform\r\nX-Accel-Buffering: no\r\nVary: Accept\r\n\
             Connection: close\r\n",
            chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT")
        );
        for header in &self.cors {
            out.push_str(&format!("{header}\r\n"));
        }
        out.push_str(&format!(
            "\r\nretry: {RETRY_MS}\nevent: welcome\ndata: {welcome}\n\n"
        ));
        self.pending = out.into_bytes();
        Ok(())
    }

    /// Gathers events, written a replay's batch at a time.
    fn open_sample(&mut self, seq: u64, json: Bytes) -> Result<(), End> {
        self.push(seq, &json);
        if self.pending.len() >= budget::BATCH {
            self.write_opening()?;
        }
        Ok(())
    }

    fn opened(&mut self) -> Result<(), End> {
        self.write_opening()?;
        // An opening can gather a piece; do not keep its buffer.
        self.pending = Vec::new();
        if self.quiet {
            Ok(())
        } else {
            Err(data_after_request())
        }
    }

    /// Hands pending bytes to the kernel without blocking. `Ok(true)` when none are left.
    fn flush(&mut self) -> Result<bool, End> {
        while !self.pending.is_empty() {
            match self.socket.write(&self.pending) {
                Ok(0) => return Err(End::Lost("the connection accepts no more data".into())),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Lost(e.to_string())),
            }
        }
        Ok(true)
    }

    fn send(&mut self, seq: u64, json: Bytes) -> Result<(), End> {
        self.push(seq, &json);
        self.flush().map(drop)
    }

    /// Reads what the client sent: end of stream means it left; anything else ends the
    /// stream (see the module docs).
    fn read(&mut self) -> Result<(), End> {
        let mut buf = [0u8; 64];
        loop {
            match self.socket.read(&mut buf) {
                Ok(0) => return Err(End::ClientClosed(None)),
                Ok(_) => return Err(data_after_request()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Lost(e.to_string())),
            }
        }
    }

    /// A comment line: proxies see traffic, `EventSource` ignores it.
    fn keep_alive(&mut self) -> Result<(), End> {
        self.pending.extend_from_slice(b": keep-alive\n\n");
        self.flush().map(drop)
    }

    /// Ends the stream: a last `event: close` when we end it (best effort; its `retry:`
    /// tells `EventSource` when to reconnect), then our half of the connection is shut,
    /// so the client sees the end of the response. Returns a detail for the log.
    fn finish(&mut self, end: End, _readable: Option<&Receiver<()>>) -> String {
        let detail = match end {
            End::ClientClosed(_) => "client".into(),
            End::Lost(why) => format!("lost ({why})"),
            End::Dropped => "dropped".into(),
            End::Close(_, body) => {
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

impl Events {
    /// Writes the gathered opening, blocking with the socket's timeout.
    fn write_opening(&mut self) -> Result<(), End> {
        let written = self.socket.write_all(&self.pending);
        self.pending.clear();
        written.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                End::close(1008, "client too slow to take the stream's first samples")
            }
            _ => End::Lost(e.to_string()),
        })
    }

    /// Queues one sample's event. The id is written digit by digit, not with `format!`,
    /// whose machinery is the deepest call a stream makes: it alone took every SSE
    /// thread's stack into a third page (see `edge::STACK`).
    fn push(&mut self, seq: u64, json: &[u8]) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut n = seq;
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.pending.extend_from_slice(b"id: ");
        self.pending.extend_from_slice(&digits[start..]);
        self.pending.extend_from_slice(b"\nevent: sample\ndata: ");
        self.pending.extend_from_slice(json);
        self.pending.extend_from_slice(b"\n\n");
    }
}

fn data_after_request() -> End {
    End::close(
        1008,
        "the client sent data after its event-stream request; an event stream only sends",
    )
}
