//! Chaos on request: seeded delivery faults, so that a dashboard can be tested against a
//! misbehaving network and server, and a failure seen once can be replayed.
//!
//! `?chaos=drop:30s,gap:0.1` (or the server-wide `CHAOS`) turns faults on for one stream
//! or one request; `options` parses it. Faults change only how that client's samples are
//! delivered: never another client's, the generator's or the shared sample bytes, and a
//! client without chaos takes none of this code's paths.
//!
//! Every decision is a pure function of the seed, the tick and the fault, like the traffic
//! model: two clients with the same `chaos` and `chaos_seed` see the same gaps,
//! duplicates, swaps, stalls and garbage on the same ticks, and two streams opened on the
//! same tick are cut on the same tick. The opening of a stream (the welcome, then the
//! latest sample or the replay) is always delivered intact, so a client that resumes
//! with `since` always gets back what a drop made it miss.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sample::Tick;
use crate::simulator::{hash, unit};

/// What `chaos=` accepts, for error messages, `--help` and the documents.
pub const GRAMMAR: &str = "off, or a comma-separated list of: drop:30s, close:60s, \
     latency:400ms (or latency:200ms..1s), stall:10s/60s (or stall:10s/60s:latest), gap:0.1, \
     dup:0.05, reorder:0.05, error:0.2 (or error:0.2:500), garbage:0.01";

/// The faults asked for. Durations are whole milliseconds; chances are from 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Streams: cut abruptly (no close frame, a TCP reset) after 0.5 to 1.5 times this.
    pub drop: Option<Duration>,
    /// Streams: closed cleanly (1012, `event: close`) after 0.5 to 1.5 times this.
    pub close: Option<Duration>,
    /// Each sample (streams) or response (REST) is held this long: a fixed delay, or one
    /// drawn from the range for each.
    pub latency: Option<(Duration, Duration)>,
    /// Streams: nothing is sent for `pause` out of every `period`.
    pub stall: Option<Stall>,
    /// Streams: this share of samples is never sent.
    pub gap: f64,
    /// Streams: this share of samples is sent twice.
    pub dup: f64,
    /// Streams: this share of samples swaps places with the next.
    pub reorder: f64,
    /// REST: this share of requests is answered with this status.
    pub error: Option<(f64, u16)>,
    /// This share of samples (streams) or bodies (REST) is garbage a strict client must
    /// reject: see [`Garbage`].
    pub garbage: f64,
}

/// `stall:10s/60s`: silence for `pause` out of every `period`, then the held samples
/// (all of them, or only the latest with `:latest`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stall {
    pub pause: Duration,
    pub period: Duration,
    pub latest: bool,
}

impl Faults {
    /// Whether no fault is on (`gap:0` alone, say): the same as no chaos at all.
    pub fn is_off(&self) -> bool {
        *self == Faults::default()
    }
}

/// The canonical form, as the welcome, the `X-Chaos` header and the log show it.
impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let d = |d: Duration| {
            let ms = d.as_millis();
            match ms {
                0 => "0ms".to_string(),
                _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
                _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
                _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
                _ => format!("{ms}ms"),
            }
        };
        if let Some(t) = self.drop {
            parts.push(format!("drop:{}", d(t)));
        }
        if let Some(t) = self.close {
            parts.push(format!("close:{}", d(t)));
        }
        match self.latency {
            Some((lo, hi)) if lo == hi => parts.push(format!("latency:{}", d(lo))),
            Some((lo, hi)) => parts.push(format!("latency:{}..{}", d(lo), d(hi))),
            None => {}
        }
        if let Some(s) = self.stall {
            let latest = if s.latest { ":latest" } else { "" };
            parts.push(format!("stall:{}/{}{latest}", d(s.pause), d(s.period)));
        }
        for (name, p) in [
            ("gap", self.gap),
            ("dup", self.dup),
            ("reorder", self.reorder),
        ] {
            if p > 0.0 {
                parts.push(format!("{name}:{p}"));
            }
        }
        match self.error {
            Some((p, 503)) => parts.push(format!("error:{p}")),
            Some((p, status)) => parts.push(format!("error:{p}:{status}")),
            None => {}
        }
        if self.garbage > 0.0 {
            parts.push(format!("garbage:{}", self.garbage));
        }
        f.write_str(&parts.join(","))
    }
}

/// The server-wide default (`CHAOS`, `CHAOS_SEED`), which a client's own `chaos=` and
/// `chaos_seed=` override.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Defaults {
    pub faults: Option<Faults>,
    /// `None`: each stream or request draws its own seed.
    pub seed: Option<u64>,
}

/// The faults of one stream or request, and the seed of its decisions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chaos {
    pub faults: Faults,
    pub seed: u64,
}

// One salt per decision, so that (for example) a gap and a duplicate on the same tick
// are independent draws.
const DROP: u64 = 1;
const CLOSE: u64 = 2;
const LATENCY: u64 = 3;
const STALL: u64 = 4;
const GAP: u64 = 5;
const DUP: u64 = 6;
const REORDER: u64 = 7;
const ERROR: u64 = 8;
const GARBAGE: u64 = 9;
const GARBAGE_KIND: u64 = 10;
const RECONNECT: u64 = 11;

/// At most this many samples are held for one stream, by a stall or by latency: 30 s of
/// latency at the shortest interval (100 ms). A longer stall releases only its last 300,
/// so that a client's chaos costs the server at most ~12 KiB.
pub const MAX_HELD: usize = 300;

/// How a stream with `drop` or `close` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Abruptly: no close frame or event, a TCP reset.
    Drop,
    /// Cleanly, with a close frame (1012) or event and a reconnect hint.
    Close,
}

impl Chaos {
    /// A seed for a client that gave none: small enough for JavaScript's numbers, and
    /// reported in the welcome or the `X-Chaos-Seed` header so the run can be replayed.
    pub fn random_seed() -> u64 {
        rand::random_range(1..=u64::from(u32::MAX))
    }

    fn draw(&self, salt: u64, tick: u64) -> f64 {
        unit(hash(self.seed, salt, tick))
    }

    fn chance(&self, salt: u64, tick: u64, p: f64) -> bool {
        p > 0.0 && self.draw(salt, tick) < p
    }

    /// REST: the status to answer instead (`error`), for a request made during `tick`.
    pub fn error(&self, tick: u64) -> Option<u16> {
        let (p, status) = self.faults.error?;
        self.chance(ERROR, tick, p).then_some(status)
    }

    /// How long the sample or response of `tick` is held (`latency`).
    pub fn latency(&self, tick: u64) -> Duration {
        match self.faults.latency {
            Some((lo, hi)) => lo + (hi - lo).mul_f64(self.draw(LATENCY, tick)),
            None => Duration::ZERO,
        }
    }

    /// The garbage that replaces the sample or body of `tick`, if any (`garbage`).
    pub fn garbage(&self, tick: u64) -> Option<Garbage> {
        self.chance(GARBAGE, tick, self.faults.garbage)
            .then(|| Garbage::ALL[(hash(self.seed, GARBAGE_KIND, tick) % 4) as usize])
    }

    /// The reconnect hint of a `close`: 1 to 5 s.
    pub fn reconnect_after_ms(&self, tick: u64) -> u64 {
        1000 + hash(self.seed, RECONNECT, tick) % 4001
    }

    /// The tick on which a stream opened on `first` is cut, and how: 0.5 to 1.5 times the
    /// fault's duration later, at least one tick.
    fn end(&self, first: u64, interval: Duration) -> Option<(u64, Cut)> {
        let at = |salt, after: Duration| {
            let ms = after.mul_f64(0.5 + self.draw(salt, first)).as_millis() as u64;
            first + ms.div_ceil(interval.as_millis() as u64).max(1)
        };
        let drop = self.faults.drop.map(|d| (at(DROP, d), Cut::Drop));
        let close = self.faults.close.map(|d| (at(CLOSE, d), Cut::Close));
        match (drop, close) {
            (Some(d), Some(c)) => Some(if c.0 < d.0 { c } else { d }),
            (d, c) => d.or(c),
        }
    }

    /// Whether `tick` falls in a stall: `pause` out of every `period`, both rounded down
    /// to whole ticks (a pause shorter than one interval stalls nothing), with a phase
    /// drawn from the seed.
    fn stalled(&self, tick: u64, interval: Duration) -> bool {
        let Some(stall) = self.faults.stall else {
            return false;
        };
        let ticks = |d: Duration| (d.as_millis() / interval.as_millis().max(1)) as u64;
        let pause = ticks(stall.pause);
        let period = ticks(stall.period).max(pause + 1);
        let phase = hash(self.seed, STALL, 0) % period;
        (tick + phase) % period < pause
    }
}

/// What a garbage payload is. Each is valid UTF-8, so a WebSocket text frame carries it
/// as it would a sample; a strict client must reject every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Garbage {
    /// The first half of the JSON: not valid JSON.
    Truncated,
    /// A field missing: `active_users` (or `page_views`, or `timestamp`, whichever of
    /// them is first selected).
    MissingField,
    /// A count made negative: `active_users` (or `page_views`, or `new_visitors`).
    NegativeCount,
    /// The JSON `null` instead of an object.
    Null,
}

impl Garbage {
    const ALL: [Garbage; 4] = [
        Garbage::Truncated,
        Garbage::MissingField,
        Garbage::NegativeCount,
        Garbage::Null,
    ];

    /// `json` (a sample, or a REST body) turned into this garbage. The field rules apply
    /// to the first occurrence, so in a history body they hit its first sample. A body
    /// without any of the fields a rule names becomes `null`.
    pub fn apply(self, json: &[u8]) -> Bytes {
        let null = || Bytes::from_static(b"null");
        match self {
            Garbage::Truncated => Bytes::copy_from_slice(&json[..json.len() / 2]),
            Garbage::Null => null(),
            Garbage::MissingField => ["active_users", "page_views", "timestamp"]
                .iter()
                .find_map(|name| field(json, name))
                .map_or_else(null, |(key, value)| {
                    // The field and one comma next to it.
                    let mut span = key..value.end;
                    if json.get(span.end) == Some(&b',') {
                        span.end += 1;
                    } else if span.start > 0 && json[span.start - 1] == b',' {
                        span.start -= 1;
                    }
                    Bytes::from([&json[..span.start], &json[span.end..]].concat())
                }),
            Garbage::NegativeCount => ["active_users", "page_views", "new_visitors"]
                .iter()
                .find_map(|name| field(json, name))
                .map_or_else(null, |(_, value)| {
                    let digits = &json[value.clone()];
                    let negative: &[u8] = if digits == b"0" { b"-1" } else { b"-" };
                    let keep = if digits == b"0" {
                        value.end
                    } else {
                        value.start
                    };
                    Bytes::from([&json[..value.start], negative, &json[keep..]].concat())
                }),
        }
    }
}

/// Where `"name":` and its scalar value (a number or a string without escapes) are in
/// `json`: the key's start, and the value's span.
fn field(json: &[u8], name: &str) -> Option<(usize, std::ops::Range<usize>)> {
    let key = format!("\"{name}\":");
    let start = json.windows(key.len()).position(|w| w == key.as_bytes())?;
    let from = start + key.len();
    let len = match json.get(from)? {
        b'"' => json[from + 1..].iter().position(|&b| b == b'"')? + 2,
        _ => json[from..]
            .iter()
            .position(|b| !(b.is_ascii_digit() || b"-.eE+".contains(b)))
            .unwrap_or(json.len() - from),
    };
    Some((start, from..from + len))
}

/// One stream's faults in motion: which published ticks it sends, when, and how often.
/// The stream hands it every tick ([`Delivery::tick`]) and sends what it releases
/// ([`Delivery::due`]).
pub struct Delivery {
    chaos: Chaos,
    interval: Duration,
    /// The tick on which the stream ends, and how.
    end: Option<(u64, Cut)>,
    /// A sample held back to go after the next one (`reorder`).
    held: Option<Tick>,
    /// Whether the latest tick fell in a stall.
    stalling: bool,
    /// Samples held while the stall lasts: the last [`MAX_HELD`].
    stalled: VecDeque<Tick>,
    /// Samples on their way, in order, each with when it is due: at most the latency's
    /// ticks, and never more than [`MAX_HELD`].
    queue: VecDeque<(Instant, Tick)>,
}

impl Delivery {
    /// The faults of a stream whose first sample (or replay) ended at tick `first`.
    pub fn new(chaos: Chaos, first: u64, interval: Duration) -> Delivery {
        Delivery {
            end: chaos.end(first, interval),
            chaos,
            interval,
            held: None,
            stalling: false,
            stalled: VecDeque::new(),
            queue: VecDeque::new(),
        }
    }

    pub fn chaos(&self) -> &Chaos {
        &self.chaos
    }

    /// A tick was published (`wanted`: it is on the client's `every`). Returns how the
    /// stream ends when it ends on this tick.
    pub fn tick(&mut self, tick: &Tick, wanted: bool, now: Instant) -> Result<(), Cut> {
        let seq = tick.seq;
        if let Some((_, cut)) = self.end.filter(|(at, _)| seq >= *at) {
            return Err(cut);
        }
        self.stalling = self.chaos.stalled(seq, self.interval);
        if !self.stalling {
            for held in std::mem::take(&mut self.stalled) {
                self.schedule(held, now);
            }
        }
        if !wanted || self.chaos.chance(GAP, seq, self.chaos.faults.gap) {
            return Ok(());
        }
        let mut copies = 1 + usize::from(self.chaos.chance(DUP, seq, self.chaos.faults.dup));
        let swapped = self.held.take();
        if swapped.is_none() && self.chaos.chance(REORDER, seq, self.chaos.faults.reorder) {
            self.held = Some(tick.clone());
            copies -= 1;
        }
        for _ in 0..copies {
            self.hold_or_schedule(tick.clone(), now);
        }
        if let Some(earlier) = swapped {
            self.hold_or_schedule(earlier, now);
        }
        Ok(())
    }

    fn hold_or_schedule(&mut self, tick: Tick, now: Instant) {
        if !self.stalling {
            self.schedule(tick, now);
        } else {
            if self.chaos.faults.stall.is_some_and(|s| s.latest) || self.stalled.len() == MAX_HELD {
                self.stalled.pop_front();
            }
            self.stalled.push_back(tick);
        }
    }

    /// Queues a sample after its latency, never before one queued earlier (order kept).
    fn schedule(&mut self, tick: Tick, now: Instant) {
        let mut due = now + self.chaos.latency(tick.seq);
        if let Some((last, _)) = self.queue.back() {
            due = due.max(*last);
        }
        if self.queue.len() == MAX_HELD {
            self.queue.pop_front();
        }
        self.queue.push_back((due, tick));
    }

    /// When the next sample is due, if one is queued.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(due, _)| *due)
    }

    /// The next sample due by `now`.
    pub fn due(&mut self, now: Instant) -> Option<Tick> {
        if self.next_due()? <= now {
            self.queue.pop_front().map(|(_, tick)| tick)
        } else {
            None
        }
    }

    /// Whether the stream is in a stall: not even a keep-alive is sent.
    pub fn stalling(&self) -> bool {
        self.stalling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);

    fn chaos(faults: Faults) -> Chaos {
        Chaos { faults, seed: 7 }
    }

    fn tick(seq: u64) -> Tick {
        Tick {
            seq,
            json: Bytes::from(format!("{{\"seq\":{seq}}}")),
        }
    }

    /// Feeds ticks `first+1..=last` and returns what is sent, in order, with no latency.
    fn run(faults: Faults, first: u64, last: u64) -> (Vec<u64>, Option<(u64, Cut)>) {
        let mut d = Delivery::new(chaos(faults), first, INTERVAL);
        let now = Instant::now();
        let mut sent = Vec::new();
        for seq in first + 1..=last {
            if let Err(cut) = d.tick(&tick(seq), true, now) {
                return (sent, Some((seq, cut)));
            }
            while let Some(t) = d.due(now) {
                sent.push(t.seq);
            }
        }
        (sent, None)
    }

    #[test]
    fn no_fault_sends_every_tick_once_in_order() {
        let (sent, end) = run(Faults::default(), 0, 50);
        assert_eq!(sent, (1..=50).collect::<Vec<_>>());
        assert_eq!(end, None);
    }

    #[test]
    fn gaps_duplicates_and_swaps_come_at_about_their_rate() {
        let faults = |gap, dup, reorder| Faults {
            gap,
            dup,
            reorder,
            ..Faults::default()
        };
        let (sent, _) = run(faults(0.1, 0.0, 0.0), 0, 10_000);
        assert!((8800..9200).contains(&sent.len()), "{}", sent.len());
        assert!(sent.windows(2).all(|w| w[0] < w[1]));
        let (sent, _) = run(faults(0.0, 0.05, 0.0), 0, 10_000);
        let dups = sent.windows(2).filter(|w| w[0] == w[1]).count();
        assert!((400..600).contains(&dups), "{dups}");
        let (sent, _) = run(faults(0.0, 0.0, 0.05), 0, 10_000);
        let swaps = sent.windows(2).filter(|w| w[0] > w[1]).count();
        assert!((350..600).contains(&swaps), "{swaps}");
        // A swap is with the next sample only, and none is lost.
        assert!(sent.iter().zip(1..).all(|(&s, i)| s.abs_diff(i) <= 1));
        let mut sorted = sent.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=sorted.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn decisions_depend_on_the_seed_and_the_tick_only() {
        let faults = Faults {
            gap: 0.2,
            dup: 0.1,
            reorder: 0.1,
            ..Faults::default()
        };
        // A stream that opened earlier sends the same ticks from where the later one starts.
        let (early, _) = run(faults, 0, 400);
        let (late, _) = run(faults, 100, 400);
        let from = early.iter().position(|&s| s > 110).unwrap();
        let to = late.iter().position(|&s| s > 110).unwrap();
        assert_eq!(early[from..], late[to..]);
        let other = Chaos {
            seed: 8,
            ..chaos(faults)
        };
        let gaps = |c: Chaos| {
            (0..400)
                .filter(|&t| c.chance(GAP, t, 0.2))
                .collect::<Vec<_>>()
        };
        assert_ne!(gaps(chaos(faults)), gaps(other));
    }

    #[test]
    fn cuts_come_after_half_to_one_and_a_half_times_the_duration() {
        for (faults, cut) in [
            (
                Faults {
                    drop: Some(Duration::from_secs(3)),
                    ..Faults::default()
                },
                Cut::Drop,
            ),
            (
                Faults {
                    close: Some(Duration::from_secs(3)),
                    ..Faults::default()
                },
                Cut::Close,
            ),
        ] {
            let mut after = Vec::new();
            for first in 0..200 {
                let (sent, end) = run(faults, first, first + 100);
                let (at, how) = end.expect("cut");
                assert_eq!(how, cut);
                assert_eq!(sent.len() as u64, at - first - 1);
                after.push(at - first);
            }
            assert!(after.iter().all(|t| (15..=45).contains(t)), "{after:?}");
            assert!(after.iter().any(|&t| t < 22) && after.iter().any(|&t| t > 38));
        }
        // Both: the earlier wins.
        let both = Faults {
            drop: Some(Duration::from_secs(60)),
            close: Some(Duration::from_secs(1)),
            ..Faults::default()
        };
        assert_eq!(run(both, 0, 100).1.unwrap().1, Cut::Close);
    }

    #[test]
    fn latency_delays_in_order() {
        let faults = Faults {
            latency: Some((Duration::from_millis(200), Duration::from_secs(1))),
            ..Faults::default()
        };
        let mut d = Delivery::new(chaos(faults), 0, INTERVAL);
        let start = Instant::now();
        for seq in 1..=20 {
            d.tick(&tick(seq), true, start + INTERVAL * seq as u32)
                .unwrap();
        }
        assert!(d.due(start + INTERVAL).is_none());
        let mut dues = Vec::new();
        while let Some(due) = d.next_due() {
            let t = d.due(due).unwrap();
            let sent_at = start + INTERVAL * t.seq as u32;
            dues.push((t.seq, due - sent_at));
        }
        assert_eq!(dues.len(), 20);
        assert!(dues.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(dues.iter().all(|(_, l)| *l >= Duration::from_millis(200)));
        // Drawn from the range (the first is never held by an earlier one).
        assert!(dues[0].1 <= Duration::from_secs(1));
    }

    #[test]
    fn stalls_hold_everything_or_only_the_latest() {
        for latest in [false, true] {
            let faults = Faults {
                stall: Some(Stall {
                    pause: Duration::from_millis(500),
                    period: Duration::from_secs(2),
                    latest,
                }),
                ..Faults::default()
            };
            let mut d = Delivery::new(chaos(faults), 0, INTERVAL);
            let now = Instant::now();
            let mut bursts = Vec::new();
            let mut silent = 0;
            for seq in 1..=100 {
                d.tick(&tick(seq), true, now).unwrap();
                let mut burst = Vec::new();
                while let Some(t) = d.due(now) {
                    burst.push(t.seq);
                }
                if d.stalling() {
                    assert!(burst.is_empty());
                    silent += 1;
                } else if burst.len() > 1 {
                    bursts.push(burst);
                }
            }
            // 5 of every 20 ticks; a stall the stream opened in is not whole.
            assert_eq!(silent, 25, "latest={latest}");
            bursts.retain(|b| b[0] != 1);
            assert!(bursts.len() >= 4, "{bursts:?}");
            for burst in bursts {
                let expected = if latest { 2 } else { 6 };
                assert_eq!(burst.len(), expected, "{burst:?}");
                assert!(burst.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }

    /// A pause shorter than one interval stalls nothing.
    #[test]
    fn a_stall_shorter_than_a_tick_is_none() {
        let c = chaos(Faults {
            stall: Some(Stall {
                pause: Duration::from_millis(50),
                period: Duration::from_millis(150),
                latest: false,
            }),
            ..Faults::default()
        });
        assert!((0..1000).all(|t| !c.stalled(t, INTERVAL)));
    }

    /// A stall of an hour at the shortest interval holds the last `MAX_HELD` samples.
    #[test]
    fn what_a_stream_holds_is_bounded() {
        let faults = Faults {
            stall: Some(Stall {
                pause: Duration::from_secs(3599),
                period: Duration::from_secs(3600),
                latest: false,
            }),
            ..Faults::default()
        };
        let mut d = Delivery::new(chaos(faults), 0, INTERVAL);
        let now = Instant::now();
        let mut released = Vec::new();
        for seq in 1..=36_000 {
            d.tick(&tick(seq), true, now).unwrap();
            assert!(d.stalled.len() <= MAX_HELD && d.queue.len() <= MAX_HELD);
            while let Some(t) = d.due(now) {
                released.push(t.seq);
            }
        }
        let burst = released.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(
            burst >= MAX_HELD - 1,
            "a stall's release is its last {MAX_HELD}"
        );
    }

    #[test]
    fn garbage_is_what_the_docs_say() {
        let json = br#"{"timestamp":"2025-04-12T12:00:00.000Z","active_users":120,"page_views":0,"avg_session_duration":4.2}"#;
        let apply = |g: Garbage| String::from_utf8(g.apply(json).to_vec()).unwrap();
        assert_eq!(apply(Garbage::Null), "null");
        let truncated = apply(Garbage::Truncated);
        assert!(serde_json::from_str::<serde_json::Value>(&truncated).is_err());
        let missing: serde_json::Value =
            serde_json::from_str(&apply(Garbage::MissingField)).unwrap();
        assert!(missing.get("active_users").is_none() && missing["page_views"] == 0);
        let negative: serde_json::Value =
            serde_json::from_str(&apply(Garbage::NegativeCount)).unwrap();
        assert_eq!(negative["active_users"], -120);
        // The last field, and a zero count.
        let last = br#"{"timestamp":"t","page_views":0}"#;
        assert_eq!(
            &Garbage::MissingField.apply(last)[..],
            br#"{"timestamp":"t"}"#
        );
        assert_eq!(
            &Garbage::NegativeCount.apply(last)[..],
            br#"{"timestamp":"t","page_views":-1}"#
        );
        assert_eq!(
            &Garbage::MissingField.apply(br#"{"devices":{}}"#)[..],
            b"null"
        );
        // Every kind comes up.
        let c = chaos(Faults {
            garbage: 1.0,
            ..Faults::default()
        });
        let kinds: Vec<_> = (0..100).filter_map(|t| c.garbage(t)).collect();
        assert_eq!(kinds.len(), 100);
        assert!(Garbage::ALL.iter().all(|g| kinds.contains(g)));
    }

    #[test]
    fn the_canonical_form_names_every_fault() {
        let f = Faults {
            drop: Some(Duration::from_secs(30)),
            close: Some(Duration::from_secs(120)),
            latency: Some((Duration::from_millis(200), Duration::from_millis(1500))),
            stall: Some(Stall {
                pause: Duration::from_secs(10),
                period: Duration::from_secs(60),
                latest: true,
            }),
            gap: 0.1,
            dup: 0.05,
            reorder: 0.5,
            error: Some((0.2, 500)),
            garbage: 0.01,
        };
        assert_eq!(
            f.to_string(),
            "drop:30s,close:2m,latency:200ms..1500ms,stall:10s/1m:latest,gap:0.1,dup:0.05,\
             reorder:0.5,error:0.2:500,garbage:0.01"
        );
        assert!(Faults::default().is_off() && !f.is_off());
    }
}
