//! Streams: one dedicated thread per client, fed by the hub, with WebSocket ([`ws`]) and
//! Server-Sent Events ([`sse`]) as two thin encoders over the same loop.
//!
//! This module owns what both share: the client cap, the subscription, the welcome, the
//! replay of missed samples, the cadence (`every`), the slow-consumer policy, the
//! heartbeat and the shutdown. Each client's thread (the connection's own, handed over by
//! the edge) blocks in one `select!` over two channels of its own: its hub subscription
//! (samples) and the watcher's (the client sent something or left, the socket takes bytes
//! again after a write would have blocked, or the server stops). Writes go to the
//! non-blocking socket, so a client that stops reading costs its own thread
//! nothing but a skipped sample; after `WS_MAX_SKIPPED` samples in a row could not be
//! handed to the kernel, the stream is closed. Nothing a client does can delay the
//! generator or another client.
//!
//! A client that asked for chaos (`?chaos=`) has its samples go through its own
//! [`Delivery`], which decides what is sent when, and may cut the stream; the loop then
//! also wakes when a held sample is due.

pub mod sse;
pub mod ws;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, never, select};
use serde_json::{Value, json};

use crate::budget;
use crate::chaos::{Cut, Delivery};
use crate::context::Context;
use crate::error::Refusal;
use crate::feed::Feed;
use crate::hub::Subscription;
use crate::metrics::Stream;
use crate::options::Options;
use crate::paths::Route;
use crate::sample::Tick;
use crate::watcher::{WatchedSocket, Watcher};

/// Kernel send buffer per client (Linux doubles it). A stream of ~100-byte samples needs
/// little; a small buffer bounds the kernel memory a stalled client pins and how long it
/// takes to notice one: about 150 samples (~4 minutes at 1.5 s) before writes would block.
const STREAM_SEND_BUFFER: usize = 8 * 1024;
/// Kernel receive buffer per client (Linux doubles it). A client sends only control
/// frames and small messages, read as they come; what it sends while its thread does not
/// read (its answers cannot be written, or it floods) waits in this buffer, in kernel
/// memory that a container's limit counts too.
const RECEIVE_BUFFER: usize = 4 * 1024;
/// How long one blocking write may take while the stream opens (welcome and replay).
const OPENING_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown each client is told to reconnect after a random delay up to this, so that
/// a deploy does not bring every dashboard back in the same instant.
const RECONNECT_SPREAD_MS: u64 = 5000;

/// What every stream shares: the context, the cap and the stream settings.
pub struct Streams {
    pub ctx: Arc<Context>,
    pub max_skipped: u32,
    /// How long a stream may stay silent before its encoder's keep-alive.
    pub heartbeat: Duration,
    /// Set when the server shuts down; see [`Streams::stop`].
    pub stopping: AtomicBool,
    pub watcher: Watcher,
    /// Open streams, and refused upgrades still closing (slots reserved by
    /// [`Streams::reserve`]).
    pub clients: AtomicUsize,
}

impl Streams {
    /// Open streams (WebSocket and SSE).
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Ends every stream with its close (1001, or `event: close`). Each stream's thread is
    /// woken through its watcher channel, not by a stop channel every stream also waits
    /// on: the threads of a channel's waiting receivers are kept in one list under one
    /// lock, which every stream would take and search on every sample (quadratic in the
    /// client count).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.watcher.wake_all();
    }

    /// Reserves a client slot, or refuses the client: while shutting down, or at
    /// `MAX_WS_CLIENTS` (WebSocket and SSE clients together, and upgrades being refused
    /// with an error frame and a close).
    pub fn reserve(self: &Arc<Self>) -> Result<Slot, Refusal> {
        let metrics = &self.ctx.metrics;
        if !self.ctx.ready.load(Ordering::SeqCst) {
            metrics.stream_rejected();
            return Err(Refusal::ShuttingDown);
        }
        let max = self.ctx.caps.streams;
        let reserved = self
            .clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
        if reserved.is_err() {
            metrics.stream_rejected();
            return Err(Refusal::TooManyClients(max));
        }
        Ok(Slot(Arc::clone(self)))
    }
}

/// Where a stream starts: the latest sample and, on paths that stream samples, the
/// subscription to the next ones, taken together (nothing missed or repeated between).
pub struct Start {
    latest: Tick,
    subscription: Option<Subscription>,
}

impl Start {
    /// Taken on the worker's thread, which has stack to spare: crossbeam builds a new
    /// channel on the stack (1.8 KiB with `Hub::subscribe`), which on the stream's
    /// thread would have touched one more page of its stack for the stream's lifetime.
    pub fn new(streams: &Streams, route: Route, site: usize) -> Start {
        let hub = streams.ctx.hub(site);
        match route.sends_samples().then(|| hub.subscribe()) {
            Some((latest, subscription)) => Start {
                latest,
                subscription: Some(subscription),
            },
            None => Start {
                latest: hub.latest(),
                subscription: None,
            },
        }
    }
}

/// A client slot, reserved before the response head and released when the stream ends.
pub struct Slot(Arc<Streams>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a stream ended.
pub enum End {
    /// The client left (over WebSocket, with this close code if it sent one).
    ClientClosed(Option<u16>),
    /// We end it: a WebSocket close code, and a JSON body with at least `"reason"`.
    Close(u16, Value),
    /// The socket failed (reset, timeout): nothing more can be sent.
    Lost(String),
    /// Chaos `drop`: cut without a word (a TCP reset where the OS allows).
    Dropped,
}

impl End {
    /// We end the stream, with this code and reason.
    fn close(code: u16, reason: impl Into<String>) -> End {
        End::Close(code, json!({ "reason": reason.into() }))
    }
}

/// Close 1013 (try again later) when no turn to encode a replay freed up in time, with a
/// random delay for coming back, as [`going_away`].
fn busy() -> End {
    let delay = rand::random_range(RECONNECT_SPREAD_MS / 5..=RECONNECT_SPREAD_MS);
    End::Close(
        1013,
        json!({
            "reason": "server busy with other histories and replays; reconnect with the same since",
            "reconnect_after_ms": delay,
        }),
    )
}

/// Close 1001 with a body that tells the client when to come back: a random delay up to
/// 5 s, so that a deploy does not bring every dashboard back in the same instant.
fn going_away() -> End {
    let delay = rand::random_range(RECONNECT_SPREAD_MS / 5..=RECONNECT_SPREAD_MS);
    End::Close(
        1001,
        json!({ "reason": "server shutting down", "reconnect_after_ms": delay }),
    )
}

/// One encoding of the stream. The loop in [`run`] decides what to send and when; an
/// encoder only frames it and moves bytes.
trait Encoder {
    /// For the metrics.
    const KIND: Stream;
    /// The welcome's `resume` hint.
    const RESUME: &'static str;

    fn socket(&mut self) -> &mut WatchedSocket;
    /// Begins the opening with the welcome (SSE: after the response head). The socket is
    /// blocking, with a timeout: none of the opening may be skipped. Bytes may gather in
    /// the encoder, up to a batch (`budget::BATCH`), until [`Encoder::opened`].
    fn open(&mut self, welcome: &Value) -> Result<(), End>;
    /// Adds one opening sample (the latest, or one of a replay), writing blocking.
    fn open_sample(&mut self, seq: u64, json: Bytes) -> Result<(), End>;
    /// Writes what the opening gathered, and frees its buffer.
    fn opened(&mut self) -> Result<(), End>;
    /// Hands earlier bytes to the kernel without blocking: `Ok(false)` while some are
    /// left (the client is not reading).
    fn flush(&mut self) -> Result<bool, End>;
    /// Queues one sample and flushes what it can.
    fn send(&mut self, seq: u64, json: Bytes) -> Result<(), End>;
    /// The client sent something (or left): read it.
    fn read(&mut self) -> Result<(), End>;
    /// Nothing was sent for the heartbeat: a keep-alive.
    fn keep_alive(&mut self) -> Result<(), End>;
    /// Ends the stream (a close frame or event, when we end it). `readable`: the
    /// watcher's channel, once streaming. Returns a detail for the log.
    fn finish(&mut self, end: End, readable: Option<&Receiver<()>>) -> String;
}

/// One client's stream, from the welcome to its end.
struct Client<'a, E> {
    streams: &'a Streams,
    encoder: E,
    options: &'a Options,
    route: Route,
    /// Samples handed to the encoder.
    sent: u64,
    /// Samples skipped in a row because earlier bytes were still unsent.
    skipped: u32,
    last_write: Instant,
    /// The last tick the opening covered: published ticks up to it were sent already.
    opened_to: u64,
    /// This client's faults, when it asked for chaos (boxed: a client without chaos
    /// keeps a one-word field on its thread's stack).
    chaos: Option<Box<Delivery>>,
}

/// Streams to one client until it leaves, is too slow, breaks the protocol, or the
/// server stops. Returns how it ended (for the log) and how many samples were sent.
fn run<E: Encoder>(
    streams: &Streams,
    mut encoder: E,
    route: Route,
    options: &Options,
    start: Start,
) -> (String, u64) {
    let socket = encoder.socket().options();
    if let Err(e) = socket
        .set_send_buffer_size(STREAM_SEND_BUFFER)
        .and_then(|()| socket.set_recv_buffer_size(RECEIVE_BUFFER))
    {
        log::debug!("cannot shrink a stream's socket buffers: {e}");
    }
    let mut client = Client {
        streams,
        encoder,
        options,
        route,
        sent: 0,
        skipped: 0,
        last_write: Instant::now(),
        opened_to: 0,
        chaos: None,
    };
    let mut readable = None;
    let end = client.run(start, &mut readable);
    let detail = match end {
        End::Dropped => {
            // A zero linger makes the close a reset: what a dead peer or a NAT timeout
            // looks like to the client.
            let _ = client
                .encoder
                .socket()
                .options()
                .set_linger(Some(Duration::ZERO));
            "dropped (chaos)".to_string()
        }
        end => client.encoder.finish(end, readable.as_ref()),
    };
    (detail, client.sent)
}

impl<E: Encoder> Client<'_, E> {
    /// Returns only when the stream ends, with why. Its steps are out of line, each
    /// called from here: a thread's stack holds the deepest of them, not their sum (a
    /// stream thread touches two pages of stack, not three; see `edge::STACK`).
    fn run(&mut self, start: Start, readable: &mut Option<Receiver<()>>) -> End {
        let Start {
            latest,
            subscription,
        } = start;
        let samples = subscription.as_ref().map(|s| &s.samples);
        if let Err(end) = self.open(&latest, samples) {
            return end;
        }
        let events = match self.watch() {
            Ok(r) => readable.insert(r).clone(),
            Err(end) => return end,
        };
        self.last_write = Instant::now();
        if subscription.is_some() {
            self.chaos = self.delivery(latest.seq);
        }
        let none = never();
        let samples = subscription.as_ref().map_or(&none, |s| &s.samples);
        self.follow(samples, &events)
    }

    /// Writes the welcome and the opening samples, blocking with a timeout: none of it
    /// may be skipped. The opening samples are the latest, or the replay the client asked
    /// for with `since` ([`Client::replay`]); `samples` is the subscription of a path
    /// that streams them.
    #[inline(never)]
    fn open(&mut self, latest: &Tick, samples: Option<&Receiver<Tick>>) -> Result<(), End> {
        let feed = &self.streams.ctx.feed;
        // In live mode, from the oldest sample kept at most: the welcome says it was cut.
        let replay = self
            .options
            .replay(latest.seq)
            .filter(|_| samples.is_some())
            .map(|ticks| {
                let oldest = feed.oldest(self.options.site).unwrap_or(0);
                (*ticks.start()).max(oldest)..=*ticks.end()
            });
        let welcome = welcome(
            self.route,
            self.options,
            feed,
            &self.streams.ctx.instance,
            latest.seq,
            replay.clone(),
            E::RESUME,
        );
        self.encoder
            .socket()
            .options()
            .set_write_timeout(Some(OPENING_WRITE_TIMEOUT))
            .map_err(|e| End::Lost(e.to_string()))?;
        self.encoder.open(&welcome)?;
        drop(welcome);
        let Some(samples) = samples else {
            return self.encoder.opened();
        };
        match replay {
            Some(ticks) => self.opened_to = ticks.start() - 1,
            None => {
                let json = self.options.encode(feed, latest.seq, Some(latest));
                self.encoder.open_sample(latest.seq, json)?;
                self.counted_sent();
                self.opened_to = latest.seq;
            }
        }
        self.replay(latest.seq, samples)
    }

    /// Sends the samples after `opened_to` up to `last`, then those published meanwhile,
    /// until all are written and none is newer: the live samples that follow start after
    /// the last one sent, with no gap. The samples queued for the stream meanwhile are
    /// stale, and are dropped before each look at the latest, so that the queue has room
    /// for the samples published after it. Samples are encoded a batch at a time
    /// (`budget::BATCH`) under one of the server's turns, given back before the batch is
    /// written; the client must keep up with `budget::MIN_RATE` after
    /// `OPENING_WRITE_TIMEOUT`. Closes 1013 if no turn frees up in time.
    #[inline(never)]
    fn replay(&mut self, mut last: u64, samples: &Receiver<Tick>) -> Result<(), End> {
        let ctx = &self.streams.ctx;
        let started = Instant::now();
        let mut bytes = 0;
        let mut batch = Vec::new();
        loop {
            let mut seqs = (self.opened_to + 1..=last)
                .filter(|seq| seq % self.options.every == 0)
                .peekable();
            while seqs.peek().is_some() {
                let turn = ctx.turns.take(budget::TURN_WAIT).ok_or_else(busy)?;
                let mut batched = 0;
                for seq in seqs.by_ref() {
                    let json = self.options.encode(&ctx.feed, seq, None);
                    batched += json.len();
                    batch.push((seq, json));
                    if batched >= budget::BATCH {
                        break;
                    }
                }
                drop(turn);
                for (seq, json) in batch.drain(..) {
                    self.encoder.open_sample(seq, json)?;
                    self.counted_sent();
                }
                bytes += batched;
                let allowed =
                    OPENING_WRITE_TIMEOUT + Duration::from_secs((bytes / budget::MIN_RATE) as u64);
                if started.elapsed() > allowed {
                    return Err(End::close(1008, "client too slow to take the replay"));
                }
            }
            self.opened_to = last;
            self.encoder.opened()?;
            while samples.try_recv().is_ok() {}
            let latest = ctx.hub(self.options.site).latest().seq;
            if latest <= last {
                return Ok(());
            }
            last = latest;
        }
    }

    /// The client's chaos, if it asked for any, from the tick it opened on.
    #[inline(never)]
    fn delivery(&self, opened: u64) -> Option<Box<Delivery>> {
        let interval = self.streams.ctx.feed.model.interval;
        let chaos = self.options.chaos?;
        Some(Box::new(Delivery::new(chaos, opened, interval)))
    }

    /// Makes the socket non-blocking and watched; returns the watcher's channel for it.
    #[inline(never)]
    fn watch(&mut self) -> Result<Receiver<()>, End> {
        let socket = self.encoder.socket();
        socket
            .watch(&self.streams.watcher)
            .and_then(|r| {
                socket.options().set_write_timeout(None)?;
                Ok(r)
            })
            .map_err(|e| End::Lost(format!("cannot watch the socket: {e}")))
    }

    /// Streams until the end: samples as they are published, the client's frames as
    /// they arrive, keep-alives and held samples when due.
    #[inline(never)]
    fn follow(&mut self, samples: &Receiver<Tick>, events: &Receiver<()>) -> End {
        // What came with the request (frames after a handshake) is already buffered,
        // where the watcher cannot see it: read once before waiting.
        if let Err(end) = self.encoder.read() {
            return end;
        }
        loop {
            // Checked after the socket is watched: a stream watched after `stop` woke
            // every watched one sees the flag here.
            if self.streams.stopping.load(Ordering::SeqCst) {
                return going_away();
            }
            let mut wake = self.last_write + self.streams.heartbeat;
            if let Some(due) = self.chaos.as_ref().and_then(|c| c.next_due()) {
                wake = wake.min(due);
            }
            let step = select! {
                recv(samples) -> tick => match tick {
                    Ok(tick) => self.published(&tick),
                    Err(_) => Err(going_away()),
                },
                recv(events) -> _ => self.encoder.read(),
                default(wake.saturating_duration_since(Instant::now())) => self.woken(),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// A tick was published: send it (if it is on the client's `every`), or hand it to the
    /// client's chaos.
    #[inline(never)]
    fn published(&mut self, tick: &Tick) -> Result<(), End> {
        if tick.seq <= self.opened_to {
            // Sent by the opening already.
            return Ok(());
        }
        let wanted = tick.seq.is_multiple_of(self.options.every);
        let Some(chaos) = &mut self.chaos else {
            return if wanted { self.deliver(tick) } else { Ok(()) };
        };
        if let Err(cut) = chaos.tick(tick, wanted, Instant::now()) {
            return Err(match cut {
                Cut::Drop => End::Dropped,
                Cut::Close => End::Close(
                    1012,
                    json!({
                        "reason": "chaos close",
                        "reconnect_after_ms": chaos.chaos().reconnect_after_ms(tick.seq),
                    }),
                ),
            });
        }
        self.deliver_due()
    }

    /// Sends the samples the client's chaos has released.
    fn deliver_due(&mut self) -> Result<(), End> {
        while let Some(tick) = self.chaos.as_mut().and_then(|c| c.due(Instant::now())) {
            self.deliver(&tick)?;
        }
        Ok(())
    }

    /// The loop's timer: a held sample is due, or the heartbeat (never during a stall,
    /// whose point is silence).
    #[inline(never)]
    fn woken(&mut self) -> Result<(), End> {
        self.deliver_due()?;
        if self.last_write.elapsed() < self.streams.heartbeat {
            return Ok(());
        }
        if self.chaos.as_ref().is_some_and(|c| c.stalling()) {
            self.last_write = Instant::now();
            return Ok(());
        }
        self.keep_alive()
    }

    /// Sends one sample, or skips it while the client has not taken the previous ones;
    /// too many skips in a row close the stream (1008).
    /// The sample is encoded only once it can be sent: a skipped client costs no
    /// encoding (its own, when its options differ from the shared stream's).
    fn deliver(&mut self, tick: &Tick) -> Result<(), End> {
        if !self.encoder.flush()? {
            self.skipped += 1;
            self.streams.ctx.metrics.stream_skipped(E::KIND);
            if self.skipped >= self.streams.max_skipped {
                let reason = format!("client is not reading: {} samples skipped", self.skipped);
                return Err(End::close(1008, reason));
            }
            return Ok(());
        }
        self.skipped = 0;
        let mut json = self
            .options
            .encode(&self.streams.ctx.feed, tick.seq, Some(tick));
        if let Some(garbage) = self
            .chaos
            .as_ref()
            .and_then(|c| c.chaos().garbage(tick.seq))
        {
            json = garbage.apply(&json);
        }
        self.encoder.send(tick.seq, json)?;
        self.counted_sent();
        self.last_write = Instant::now();
        Ok(())
    }

    fn keep_alive(&mut self) -> Result<(), End> {
        if self.encoder.flush()? {
            self.encoder.keep_alive()?;
        }
        self.last_write = Instant::now();
        Ok(())
    }

    fn counted_sent(&mut self) {
        self.sent += 1;
        self.streams.ctx.metrics.stream_sent(E::KIND);
    }
}

/// For the connect log line: the client's chaos, on a path that streams samples
/// (`" chaos=gap:0.1 chaos_seed=7"`).
pub fn chaos_note(options: &Options, route: Route) -> String {
    let chaos = options.chaos.filter(|_| route.sends_samples());
    chaos.map_or(String::new(), |c| {
        format!(" chaos={} chaos_seed={}", c.faults, c.seed)
    })
}

/// The first message every client gets: what this path offers, what samples look like,
/// and how to resume (`resume`, on paths that stream).
fn welcome(
    route: Route,
    options: &Options,
    feed: &Feed,
    instance: &str,
    latest: u64,
    replay: Option<RangeInclusive<u64>>,
    resume: &str,
) -> Value {
    let streaming = route.sends_samples();
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
        "mode": feed.mode().name(),
        "instance": instance,
        "interval_ms": feed.model.interval_ms() * options.every,
        "fields": options.fields.names(),
        "seq": latest,
    });
    match feed.sites().get(options.site) {
        Some(site) => welcome["site"] = json!(site),
        None => {
            welcome["profile"] = json!(options.profile.name());
            welcome["scenario"] = json!(options.scenario.name());
        }
    }
    if streaming {
        welcome["resume"] = json!(resume);
    }
    // A resume that missed nothing replays nothing, and says nothing of it.
    if let Some(ticks) = replay.filter(|t| !t.is_empty()) {
        // `cut`: the client missed more than the replay holds; the samples between its
        // `since` and `from` are not sent (history can still fetch them).
        let cut = options
            .since
            .is_some_and(|since| since + 1 < *ticks.start());
        welcome["replay"] = json!({ "from": ticks.start(), "to": ticks.end(), "cut": cut });
    }
    if let Some(chaos) = options.chaos.filter(|_| streaming) {
        welcome["chaos"] = json!({
            "faults": chaos.faults.to_string(),
            "seed": chaos.seed,
            "note": "Faults are injected on purpose: this stream may be cut, stall, skip, \
                     repeat, reorder, delay or garble samples. The same chaos and \
                     chaos_seed give the same faults on the same ticks; chaos=off stops \
                     them.",
        });
    }
    if let Some(why) = options.resume_ignored.as_ref().filter(|_| streaming) {
        welcome["resume_ignored"] = json!(why);
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
    fn welcome_says_whether_the_path_streams() {
        let model = crate::simulator::Model {
            seed: 1,
            interval: Duration::from_millis(1500),
            profile: crate::simulator::Profile::Blog,
            scenario: crate::simulator::Scenario::Normal,
            utc_offset_hours: 0.0,
        };
        let options = crate::options::parse(&[], &model, &[], &Default::default(), 10).unwrap();
        let model = &Feed { model, live: None };
        let v = welcome(Route::Analytics, &options, model, "a", 10, None, "hint");
        assert_eq!(v["mode"], "sim");
        assert_eq!(v["instance"], "a");
        assert_eq!(v["profile"], "blog");
        assert_eq!(v["type"], "welcome");
        assert_eq!(v["streaming"], true);
        assert_eq!(v["interval_ms"], 1500);
        assert_eq!(v["seq"], 10);
        assert_eq!(v["resume"], "hint");
        assert_eq!(v["fields"].as_array().unwrap().len(), 4);
        let v = welcome(Route::Api, &options, model, "a", 10, Some(5..=10), "hint");
        assert_eq!(v["streaming"], false);
        assert_eq!(v["path"], "/api");
        assert!(
            v.get("resume").is_none(),
            "a path that never streams offers no resume"
        );
        assert_eq!(v["replay"]["from"], 5);
        let resumed = Options {
            resume_ignored: Some("why".into()),
            ..options.clone()
        };
        let v = welcome(Route::Analytics, &resumed, model, "a", 10, None, "");
        assert_eq!(v["resume_ignored"], "why");
        let at_latest = Options {
            since: Some(10),
            ..options.clone()
        };
        let v = welcome(
            Route::Analytics,
            &at_latest,
            model,
            "a",
            10,
            at_latest.replay(10),
            "",
        );
        assert!(v.get("replay").is_none(), "nothing missed: {v}");
        // A replay that starts after the client's `since` says it was cut.
        for (since, cut) in [(4, false), (3, true)] {
            let options = Options {
                since: Some(since),
                ..options.clone()
            };
            let v = welcome(Route::Analytics, &options, model, "a", 10, Some(5..=10), "");
            assert_eq!(v["replay"]["cut"], cut, "since={since}");
        }
    }
}
