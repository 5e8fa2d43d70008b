//! Live mode: real page views, counted in memory, one sample per site and tick.
//!
//! Events arrive through `POST /api/event` ([`Live::admit`], [`event::parse`],
//! [`Live::record`]); the generator asks for every tick's samples ([`Live::tick`]) and
//! publishes them as it does the simulator's; history and resumes read the samples kept
//! ([`Live::sample`]). Every function takes the time as `now_ms`: the clock is the
//! caller's, so that tests can move it (a day's key rotation included) without sleeping.
//!
//! **Privacy by construction.** The edge turns an event's sender (client address and
//! User-Agent) into keyed digests before anything else sees the request (`edge`'s
//! `identity`). A visitor here is a keyed hash of (site, that digest) whose 128-bit key
//! is drawn at random for each UTC day and lives only in this process's memory: nothing
//! can tell two days' visitors apart, and neither the address nor the User-Agent reaches
//! this module. The rate limit keys its buckets by the same kind of hash of the address's
//! digest.
//!
//! **The metrics, defined once** (those of Plausible and Umami):
//! - `active_users`: distinct visitors with an event in the last `active_window` (5
//!   minutes), Plausible's and Umami's "current visitors";
//! - `page_views`: page-view events received during the tick's interval;
//! - `avg_session_duration`: minutes, the mean over the sessions active in the last
//!   `active_window` of (last event − first event); a session ends after
//!   `session_timeout` (30 minutes) without an event;
//! - `bounce_rate`: the share of those sessions with exactly one page view;
//! - `new_visitors`: active visitors in their first session of the UTC day;
//! - `devices`: active visitors by screen width, as Plausible buckets it (`mobile` below
//!   576 px, `tablet` below 992, `laptop` below 1440, `desktop` from 1440, `unknown`
//!   when the tracker sent none);
//! - `referrers`: active sessions by the host that referred their first page view
//!   (`direct` when none did);
//! - `top_pages`: the interval's page views by path;
//! - `countries` is absent: without a geolocation database or header, it cannot be known.
//!
//! Breakdowns show the five largest entries and `other`, and sum to their total.
//!
//! **Bounded.** Every operation touches only the visitors it names or those whose window
//! has just closed (an ordered index by last event), so a tick with 100 000 active
//! visitors costs what changed since the last, not a scan. Visitors beyond
//! `max_visitors` evict the longest idle; distinct referrers and pages counted are
//! bounded too, the rest counted as `other`.

pub mod event;
pub mod store;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hasher;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use siphasher::sip::SipHasher13;

use crate::metrics::Metrics;
use crate::sample::{Details, Label, Sample, timestamp};
use crate::sync::lock;
use event::{Event, Kind};
use redis::RedisError;
use store::{Attempt, CALL_TIMEOUT, Call, Store, Unanswered};

/// A UTC day in milliseconds: visitor keys rotate at each day's start.
const DAY_MS: u64 = 86_400_000;
/// Distinct referrers counted per site, and distinct pages per tick; past these, `other`.
const MAX_LABELS: usize = 1000;
/// Entries a breakdown shows before `other`.
const SHOWN: usize = 5;
/// Events one client address may send at once, and per second after that.
const BURST: f64 = 60.0;
const REFILL_PER_SEC: f64 = 10.0;
/// Addresses with a bucket not yet full again, at most.
const MAX_BUCKETS: usize = 100_000;
/// Events one instance holds while Redis is unreachable, at most; past it, dropped.
pub const BUFFER: usize = 10_000;
/// Buffered events recorded per tick once Redis is back (each a round trip).
const FLUSH_PER_TICK: usize = 2_000;

/// How live mode counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The sites' domains, lowercased: `SITES`.
    pub sites: Vec<String>,
    /// A tick's length.
    pub interval: Duration,
    /// A visitor is active this long after its last event.
    pub active_window: Duration,
    /// A session ends this long after its last event.
    pub session_timeout: Duration,
    /// Visitors tracked at most (`MAX_VISITORS`).
    pub max_visitors: usize,
    /// Ticks of samples kept per site (`LIVE_HISTORY` / interval).
    pub history_ticks: usize,
}

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Counted,
    /// A bot's (as the edge judged its User-Agent): accepted, not counted.
    Bot,
    /// An engagement with no session open to extend: accepted, not counted.
    NoSession,
    /// For none of `SITES`.
    UnknownSite,
    /// Redis is unreachable: held to be recorded when it is back.
    Buffered,
    /// Redis is unreachable and the buffer is full: not counted.
    Dropped,
}

/// Live mode's state: the visitors, the counters each tick reads, and the samples kept.
pub struct Live {
    pub settings: Settings,
    state: Mutex<State>,
    /// Per site, the samples of the last `history_ticks` ticks, oldest first.
    kept: Vec<Mutex<VecDeque<Sample>>>,
    metrics: Arc<Metrics>,
    /// With `REDIS_URL`: the fleet's state, where events are recorded and ticks computed.
    shared: Option<Shared>,
}

/// Live mode's state in Redis ([`store`]), and how this instance gets on without it.
struct Shared {
    store: Store,
    /// [`STARTING`], [`UP`] or [`DOWN`]: whether the last call succeeded.
    redis: AtomicU8,
    /// Events received while Redis was down, oldest first, at most [`BUFFER`].
    buffer: Mutex<VecDeque<Pending>>,
    /// Ticks published stale, to be replaced by the fleet's once Redis is back, and
    /// whether the fleet's history has been loaded.
    catch_up: Mutex<(Vec<u64>, bool)>,
}

/// Redis has not answered yet, answers, or failed: `Shared::redis`.
const STARTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// An event waiting for Redis.
struct Pending {
    event: Event,
    delivery: Delivery,
}

/// What Redis is sent with an event, the same at each send.
struct Delivery {
    /// The event's id in Redis.
    id: u64,
    /// The first send, if it was sent: it may yet run.
    first: Option<Call>,
    sites: Vec<u16>,
    visitor: u64,
    now_ms: u64,
}

struct State {
    /// The day the key is for, and the key.
    day: u64,
    key: (u64, u64),
    /// With Redis: the key is the fleet's (Redis holds each day's).
    key_shared: bool,
    visitors: HashMap<u64, Visitor>,
    /// Every visitor by (last event, id): what a window's end and eviction walk.
    by_last: BTreeSet<(u64, u64)>,
    /// Visitors whose last event is before this are no longer active.
    cutoff: u64,
    sites: Vec<SiteCounts>,
    buckets: HashMap<u64, Bucket>,
}

/// A visitor, as little as the metrics need: about 60 bytes.
struct Visitor {
    site: u16,
    device: u8,
    /// In its first session of the day.
    first_session: bool,
    active: bool,
    views: u32,
    session_start: u64,
    last: u64,
    referrer: Option<Arc<str>>,
}

/// A site's counters over its active visitors, kept as visitors come and go.
#[derive(Default)]
struct SiteCounts {
    active: u32,
    /// Σ (last − session start) over active sessions, ms.
    duration_ms: u64,
    bounces: u32,
    new: u32,
    devices: [u32; DEVICES.len()],
    referrers: HashMap<Arc<str>, u32>,
    /// This tick's page views, and by path.
    views: u32,
    pages: HashMap<Arc<str>, u32>,
}

struct Bucket {
    tokens: f64,
    at: u64,
}

const DEVICES: [&str; 5] = ["mobile", "tablet", "laptop", "desktop", "unknown"];

/// Plausible's buckets of screen width.
fn device(width: Option<u32>) -> u8 {
    match width {
        Some(w) if w < 576 => 0,
        Some(w) if w < 992 => 1,
        Some(w) if w < 1440 => 2,
        Some(_) => 3,
        None => 4,
    }
}

impl Live {
    /// Live mode, counting in this process, or in Redis when `store` is given.
    pub fn new(settings: Settings, metrics: Arc<Metrics>, store: Option<Store>) -> Live {
        metrics.go_live();
        let sites = settings.sites.len();
        Live {
            state: Mutex::new(State {
                day: u64::MAX,
                key: (0, 0),
                key_shared: false,
                visitors: HashMap::new(),
                by_last: BTreeSet::new(),
                cutoff: 0,
                sites: (0..sites).map(|_| SiteCounts::default()).collect(),
                buckets: HashMap::new(),
            }),
            kept: (0..sites).map(|_| Mutex::new(VecDeque::new())).collect(),
            metrics,
            settings,
            shared: store.map(|store| Shared {
                store,
                redis: AtomicU8::new(STARTING),
                buffer: Mutex::new(VecDeque::new()),
                catch_up: Mutex::new((Vec::new(), false)),
            }),
        }
    }

    /// Where the state is kept when not in this process: the Redis URL, without password.
    pub fn redis(&self) -> Option<&str> {
        self.shared.as_ref().map(|s| s.store.shown.as_str())
    }

    /// Whether to send this instance new clients: not while Redis, if used, fails.
    pub fn ready(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|s| s.redis.load(Ordering::Relaxed) == UP)
    }

    /// Takes a token of the bucket of `client` (the edge's digest of the sender's
    /// address), or says how long until there is one.
    pub fn admit(&self, client: u64, now_ms: u64) -> Result<(), Duration> {
        let mut state = lock(&self.state);
        state.rotate(now_ms);
        let id = state.hash(site_and(u16::MAX, client));
        if state.buckets.len() >= MAX_BUCKETS && !state.buckets.contains_key(&id) {
            // More addresses sending at once than are ever tracked: a flood.
            self.metrics.event_limited();
            return Err(Duration::from_secs(1));
        }
        let bucket = state.buckets.entry(id).or_insert(Bucket {
            tokens: BURST,
            at: now_ms,
        });
        let elapsed = now_ms.saturating_sub(bucket.at) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * REFILL_PER_SEC).min(BURST);
        bucket.at = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            self.metrics.event_limited();
            let wait = (1.0 - bucket.tokens) / REFILL_PER_SEC;
            Err(Duration::from_secs_f64(wait))
        }
    }

    /// Counts `event` from `visitor` (the edge's digest of the sender's address and
    /// User-Agent), unless it came from a `bot`.
    pub fn record(&self, event: &Event, visitor: u64, bot: bool, now_ms: u64) -> Recorded {
        let mut sites: Vec<u16> = event
            .domains
            .iter()
            .filter_map(|d| self.settings.sites.iter().position(|s| s == d))
            .map(|i| i as u16)
            .collect();
        // A site named twice is one site: an event counts once for each.
        sites.sort_unstable();
        sites.dedup();
        if sites.is_empty() {
            return Recorded::UnknownSite;
        }
        if bot {
            self.metrics.bot_event();
            return Recorded::Bot;
        }
        if let Some(shared) = &self.shared {
            let mut delivery = Delivery {
                id: rand::random(),
                first: None,
                sites,
                visitor,
                now_ms,
            };
            // While Redis is down, only the generator's ticks try it.
            if shared.redis.load(Ordering::Relaxed) != DOWN {
                match self.record_shared(shared, event, &delivery, Attempt::First) {
                    Ok(recorded) => return recorded,
                    Err(failed) => {
                        self.failed(shared, &failed.error);
                        delivery.first = failed.call;
                    }
                }
            }
            let event = event.clone();
            return self.hold(shared, Pending { event, delivery });
        }
        let mut state = lock(&self.state);
        state.rotate(now_ms);
        let mut counted = false;
        for site in sites {
            let id = state.hash(site_and(site, visitor));
            counted |= state.touch(id, site, event, now_ms, &self.settings, &self.metrics);
        }
        if !counted {
            return Recorded::NoSession;
        }
        self.metrics.event_counted();
        self.metrics.visitors(state.visitors.len());
        Recorded::Counted
    }

    /// The samples of tick `seq`, one per site, in `SITES` order; each is kept for
    /// history and resumes.
    pub fn tick(&self, seq: u64, now_ms: u64) -> Vec<Sample> {
        let interval_ms = self.settings.interval.as_millis() as u64;
        let started = Instant::now();
        let samples: Vec<Sample> = if let Some(shared) = &self.shared {
            self.tick_shared(shared, seq)
        } else {
            let mut state = lock(&self.state);
            state.rotate(now_ms);
            state.close_window(now_ms, &self.settings);
            self.metrics.visitors(state.visitors.len());
            state
                .sites
                .iter_mut()
                .map(|site| site.take().sample(seq, seq * interval_ms))
                .collect()
        };
        self.metrics.live_tick(started.elapsed());
        for (kept, sample) in self.kept.iter().zip(&samples) {
            let mut kept = lock(kept);
            if kept.len() == self.settings.history_ticks {
                kept.pop_front();
            }
            kept.push_back(sample.clone());
        }
        samples
    }

    /// The oldest tick of `site` whose sample is kept, if any.
    pub fn oldest(&self, site: usize) -> Option<u64> {
        lock(&self.kept[site]).front().map(|s| s.seq)
    }

    /// The sample of `site` at tick `seq`: the one kept, or zeros for a tick with none
    /// (before the server started, or beyond `LIVE_HISTORY`).
    pub fn sample(&self, site: usize, seq: u64) -> Sample {
        let kept = lock(&self.kept[site]);
        let first = kept.front().map_or(u64::MAX, |s| s.seq);
        seq.checked_sub(first)
            .and_then(|i| kept.get(i as usize))
            .filter(|s| s.seq == seq)
            .cloned()
            .unwrap_or_else(|| {
                let interval_ms = self.settings.interval.as_millis() as u64;
                Totals::default().sample(seq, seq * interval_ms)
            })
    }
    /// Records an event in Redis, at the time it was received.
    fn record_shared(
        &self,
        shared: &Shared,
        event: &Event,
        d: &Delivery,
        attempt: Attempt,
    ) -> Result<Recorded, Unanswered> {
        let pairs = {
            let mut state = lock(&self.state);
            state.rotate(d.now_ms);
            if !state.key_shared {
                state.key = shared
                    .store
                    .day_key(state.day, state.key)
                    .map_err(|error| Unanswered { error, call: None })?;
                state.key_shared = true;
            }
            let ids: Vec<(u16, u64)> = d
                .sites
                .iter()
                .map(|&site| (site, state.hash(site_and(site, d.visitor))))
                .collect();
            ids
        };
        let recorded =
            shared
                .store
                .record(event, d.id, attempt, &pairs, d.now_ms, &self.settings)?;
        for _ in 0..recorded.evicted {
            self.metrics.visitor_evicted();
        }
        Ok(if recorded.counted {
            self.metrics.event_counted();
            Recorded::Counted
        } else {
            Recorded::NoSession
        })
    }

    /// Holds an event for Redis's return, or drops it when the buffer is full.
    fn hold(&self, shared: &Shared, pending: Pending) -> Recorded {
        let mut buffer = lock(&shared.buffer);
        if buffer.len() >= BUFFER {
            self.metrics.event_dropped();
            return Recorded::Dropped;
        }
        buffer.push_back(pending);
        self.metrics.events_buffered(buffer.len());
        Recorded::Buffered
    }

    /// A Redis call failed: the first failure of an outage is logged.
    fn failed(&self, shared: &Shared, error: &RedisError) {
        if shared.redis.swap(DOWN, Ordering::Relaxed) != DOWN {
            shared.store.close_idle();
            // A read that timed out says only "Resource temporarily unavailable".
            let why = if error.is_timeout() {
                format!("no answer within {} ms: {error}", CALL_TIMEOUT.as_millis())
            } else {
                error.to_string()
            };
            log::error!(
                "Redis failed ({why}): streams go on with stale samples, /readyz answers \
                 503, and events wait here (at most {BUFFER}) until Redis answers again"
            );
        }
    }

    /// Tick `seq`'s samples from the fleet's totals, after recording the events held;
    /// while Redis fails, stale ones.
    fn tick_shared(&self, shared: &Shared, seq: u64) -> Vec<Sample> {
        let start_ms = seq * self.settings.interval.as_millis() as u64;
        let sites = self.settings.sites.len();
        let totals = self.flush(shared).and_then(|()| {
            let ticked = shared.store.tick(seq, start_ms, &self.settings)?;
            self.metrics.visitors(ticked.visitors);
            Totals::parse(&ticked.totals, sites).ok_or_else(|| {
                RedisError::from((redis::ErrorKind::UnexpectedReturnType, "malformed totals"))
            })
        });
        match totals {
            Ok(totals) => {
                match shared.redis.swap(UP, Ordering::Relaxed) {
                    DOWN => {
                        log::info!("Redis answers again: counting in it, stale ticks replaced");
                        // Redis may have restarted without its data: agree on a key again.
                        lock(&self.state).key_shared = false;
                    }
                    STARTING => log::info!("Redis answers: counting in it"),
                    _ => {}
                }
                self.catch_up(shared, seq);
                totals
                    .into_iter()
                    .map(|t| t.sample(seq, start_ms))
                    .collect()
            }
            Err(e) => {
                self.failed(shared, &e);
                self.metrics.stale_tick();
                let mut catch_up = lock(&shared.catch_up);
                if catch_up.0.len() >= self.settings.history_ticks {
                    catch_up.0.remove(0);
                }
                catch_up.0.push(seq);
                (0..sites).map(|site| self.stale(site, seq)).collect()
            }
        }
    }

    /// Records up to [`FLUSH_PER_TICK`] held events, oldest first.
    fn flush(&self, shared: &Shared) -> Result<(), RedisError> {
        for _ in 0..FLUSH_PER_TICK {
            let Some(p) = lock(&shared.buffer).pop_front() else {
                break;
            };
            // At the time it was received, with the key of the day it is counted in.
            let again = Attempt::Again(p.delivery.first);
            if let Err(failed) = self.record_shared(shared, &p.event, &p.delivery, again) {
                lock(&shared.buffer).push_front(p);
                return Err(failed.error);
            }
            self.metrics.events_buffered(lock(&shared.buffer).len());
        }
        Ok(())
    }

    /// Once Redis answers: loads the fleet's history before tick `seq` (the first time),
    /// and replaces the ticks published stale with the fleet's. Tried again at the next
    /// tick if it fails.
    fn catch_up(&self, shared: &Shared, seq: u64) {
        let mut catch_up = lock(&shared.catch_up);
        let (stale, loaded) = &mut *catch_up;
        let seqs: Vec<u64> = if *loaded {
            stale.clone()
        } else {
            let first = match shared.store.first() {
                Ok(first) => first.unwrap_or(seq),
                Err(_) => return,
            };
            let from = first.max((seq + 1).saturating_sub(self.settings.history_ticks as u64));
            (from..seq).collect()
        };
        if seqs.is_empty() {
            *loaded = true;
            return;
        }
        let Ok(stored) = shared.store.totals(&seqs) else {
            return;
        };
        let interval_ms = self.settings.interval.as_millis() as u64;
        let sites = self.settings.sites.len();
        for (site, kept) in self.kept.iter().enumerate() {
            let mut kept = lock(kept);
            let samples = seqs.iter().zip(&stored).map(|(&seq, totals)| {
                let parsed = totals.as_deref().and_then(|t| Totals::parse(t, sites));
                match parsed {
                    Some(mut totals) => totals.swap_remove(site).sample(seq, seq * interval_ms),
                    // No instance computed it: Redis was down for the whole fleet.
                    None => Sample {
                        stale: true,
                        ..Totals::default().sample(seq, seq * interval_ms)
                    },
                }
            });
            if *loaded {
                for sample in samples {
                    let first = kept.front().map_or(u64::MAX, |s| s.seq);
                    if let Some(slot) = sample
                        .seq
                        .checked_sub(first)
                        .and_then(|i| kept.get_mut(i as usize))
                    {
                        *slot = sample;
                    }
                }
            } else {
                *kept = samples.collect();
            }
        }
        stale.clear();
        *loaded = true;
    }

    /// A stale sample for tick `seq` of `site`: the last one's gauges, with no page views,
    /// marked `stale`.
    fn stale(&self, site: usize, seq: u64) -> Sample {
        let start_ms = seq * self.settings.interval.as_millis() as u64;
        let last = lock(&self.kept[site]).back().cloned();
        let mut sample = last.unwrap_or_else(|| Totals::default().sample(seq, start_ms));
        sample.seq = seq;
        sample.timestamp = timestamp(start_ms as i64);
        sample.page_views = 0;
        if let Some(details) = &mut sample.details {
            details.top_pages.clear();
        }
        sample.stale = true;
        sample
    }
}

/// A site's index (`u16::MAX` for none) and a digest, as one hash input.
fn site_and(site: u16, digest: u64) -> [u8; 10] {
    let mut bytes = [0; 10];
    bytes[..2].copy_from_slice(&site.to_le_bytes());
    bytes[2..].copy_from_slice(&digest.to_le_bytes());
    bytes
}

impl State {
    /// A new random key at each UTC day's start. Yesterday's visitors stay counted until
    /// their windows close; today's events no longer find them (a visitor across
    /// midnight counts as two, as in Plausible), and they are dropped once their session
    /// has ended.
    fn rotate(&mut self, now_ms: u64) {
        let day = now_ms / DAY_MS;
        // Never back: a request may have read the clock before a tick that rotated.
        if self.day == u64::MAX || day > self.day {
            self.day = day;
            self.key = (rand::random(), rand::random());
            self.key_shared = false;
            self.buckets.clear();
        }
    }

    /// Today's keyed hash of `bytes`.
    fn hash(&self, bytes: [u8; 10]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(&bytes);
        h.finish()
    }

    fn touch(
        &mut self,
        id: u64,
        site: u16,
        event: &Event,
        now_ms: u64,
        settings: &Settings,
        metrics: &Metrics,
    ) -> bool {
        // An event is never older than the window's closed part (the clock a request read
        // may trail the generator's): it is counted, and its window closes.
        let now_ms = now_ms.max(self.cutoff);
        let session_timeout = settings.session_timeout.as_millis() as u64;
        let open = |v: &Visitor| now_ms.saturating_sub(v.last) <= session_timeout;
        if event.kind == Kind::Engagement && !self.visitors.get(&id).is_some_and(open) {
            return false;
        }
        if !self.visitors.contains_key(&id) && self.visitors.len() >= settings.max_visitors {
            self.evict_one(metrics);
        }
        let visitor = self.visitors.entry(id).or_insert(Visitor {
            site,
            device: device(event.width),
            first_session: true,
            active: false,
            views: 0,
            session_start: now_ms,
            last: now_ms,
            referrer: None,
        });
        let site_counts = &mut self.sites[usize::from(site)];
        self.by_last.remove(&(visitor.last, id));
        if visitor.active {
            site_counts.leave(visitor);
        }
        if !open(visitor) {
            visitor.first_session = false;
            visitor.views = 0;
            visitor.session_start = now_ms;
            visitor.referrer = None;
        }
        if visitor.views == 0 && visitor.session_start == now_ms {
            visitor.referrer = event
                .referrer
                .as_deref()
                .map(|host| site_counts.intern_referrer(host));
        }
        visitor.last = now_ms.max(visitor.last);
        if event.width.is_some() {
            visitor.device = device(event.width);
        }
        if event.kind == Kind::PageView {
            visitor.views += 1;
            site_counts.count_view(&event.path);
        }
        visitor.active = true;
        site_counts.enter(visitor);
        self.by_last.insert((visitor.last, id));
        true
    }

    /// Ends the activity of visitors whose window closed, and forgets those of earlier
    /// days whose session has ended.
    fn close_window(&mut self, now_ms: u64, settings: &Settings) {
        let window = settings.active_window.as_millis() as u64;
        let cutoff = now_ms.saturating_sub(window);
        if cutoff > self.cutoff {
            let closed: Vec<(u64, u64)> = self
                .by_last
                .range((self.cutoff, 0)..(cutoff, 0))
                .copied()
                .collect();
            for (_, id) in closed {
                if let Some(v) = self.visitors.get_mut(&id).filter(|v| v.active) {
                    self.sites[usize::from(v.site)].leave(v);
                    v.active = false;
                }
            }
            self.cutoff = cutoff;
        }
        let today = self.day * DAY_MS;
        let ended = now_ms.saturating_sub(settings.session_timeout.as_millis() as u64);
        while let Some(&(last, id)) = self.by_last.first() {
            if last >= today.min(ended) {
                break;
            }
            self.by_last.pop_first();
            if let Some(v) = self.visitors.remove(&id)
                && v.active
            {
                self.sites[usize::from(v.site)].leave(&v);
            }
        }
        let full = |b: &Bucket| {
            b.tokens + now_ms.saturating_sub(b.at) as f64 / 1000.0 * REFILL_PER_SEC >= BURST
        };
        self.buckets.retain(|_, b| !full(b));
    }

    fn evict_one(&mut self, metrics: &Metrics) {
        if let Some((_, id)) = self.by_last.pop_first()
            && let Some(v) = self.visitors.remove(&id)
        {
            if v.active {
                self.sites[usize::from(v.site)].leave(&v);
            }
            metrics.visitor_evicted();
        }
    }
}

impl SiteCounts {
    /// An active visitor's share of the counters, added.
    fn enter(&mut self, v: &Visitor) {
        self.active += 1;
        self.duration_ms += v.last - v.session_start;
        self.bounces += u32::from(v.views == 1);
        self.new += u32::from(v.first_session);
        self.devices[usize::from(v.device)] += 1;
        if let Some(r) = &v.referrer {
            *self.referrers.entry(Arc::clone(r)).or_default() += 1;
        }
    }

    /// An active visitor's share of the counters, taken back.
    fn leave(&mut self, v: &Visitor) {
        self.active -= 1;
        self.duration_ms -= v.last - v.session_start;
        self.bounces -= u32::from(v.views == 1);
        self.new -= u32::from(v.first_session);
        self.devices[usize::from(v.device)] -= 1;
        if let Some(r) = &v.referrer
            && let Some(n) = self.referrers.get_mut(r)
        {
            *n -= 1;
            if *n == 0 {
                self.referrers.remove(r);
            }
        }
    }

    /// The referrer's shared name, or `other` past [`MAX_LABELS`] distinct ones.
    fn intern_referrer(&mut self, host: &str) -> Arc<str> {
        match self.referrers.get_key_value(host) {
            Some((name, _)) => Arc::clone(name),
            None if self.referrers.len() >= MAX_LABELS => Arc::from("other"),
            None => Arc::from(host),
        }
    }

    fn count_view(&mut self, path: &str) {
        self.views += 1;
        let path: Arc<str> = match self.pages.len() >= MAX_LABELS && !self.pages.contains_key(path)
        {
            true => Arc::from("other"),
            false => Arc::from(path),
        };
        *self.pages.entry(path).or_default() += 1;
    }

    /// This tick's totals; the interval's page views start again from zero.
    fn take(&mut self) -> Totals {
        Totals {
            active: self.active,
            duration_ms: self.duration_ms,
            bounces: self.bounces,
            new: self.new,
            devices: self.devices,
            referrers: self
                .referrers
                .iter()
                .map(|(name, &n)| (Label::Shared(Arc::clone(name)), n))
                .collect(),
            views: std::mem::take(&mut self.views),
            pages: std::mem::take(&mut self.pages)
                .into_iter()
                .map(|(name, n)| (Label::Shared(name), n))
                .collect(),
        }
    }
}

/// A site's counters at a tick: what its sample is made of.
#[derive(Default)]
struct Totals {
    active: u32,
    duration_ms: u64,
    bounces: u32,
    new: u32,
    devices: [u32; DEVICES.len()],
    referrers: Vec<(Label, u32)>,
    views: u32,
    pages: Vec<(Label, u32)>,
}

impl Totals {
    /// The sample of tick `seq`, which starts at `unix_ms`.
    fn sample(self, seq: u64, unix_ms: u64) -> Sample {
        let active = self.active;
        let per_session = |total: f64| match active {
            0 => 0.0,
            n => total / f64::from(n),
        };
        let minutes = per_session(self.duration_ms as f64) / 60_000.0;
        let devices = DEVICES
            .iter()
            .zip(self.devices)
            .filter(|(_, n)| *n > 0)
            .map(|(&name, n)| (Label::from(name), n))
            .collect();
        let mut referrers = self.referrers;
        let referred: u32 = referrers.iter().map(|r| r.1).sum();
        if active > referred {
            referrers.push((Label::from("direct"), active - referred));
        }
        Sample {
            seq,
            timestamp: timestamp(unix_ms as i64),
            active_users: active,
            page_views: self.views,
            avg_session_duration: (minutes * 10.0).round() / 10.0,
            stale: false,
            details: Some(Details {
                bounce_rate: (per_session(f64::from(self.bounces)) * 1000.0).round() / 1000.0,
                new_visitors: self.new,
                devices,
                countries: None,
                referrers: top(referrers),
                top_pages: top(self.pages),
            }),
        }
    }

    /// Every site's totals as `tick.lua` stores them, in `SITES` order.
    fn parse(json: &str, sites: usize) -> Option<Vec<Totals>> {
        let stored: Vec<Vec<serde_json::Value>> = serde_json::from_str(json).ok()?;
        let pairs = |flat: &serde_json::Value| -> Option<Vec<(Label, u32)>> {
            let flat = flat.as_array()?;
            flat.chunks(2)
                .map(|pair| {
                    let name = pair.first()?.as_str()?;
                    let n = pair.get(1)?.as_str()?.parse().ok()?;
                    Some((Label::Shared(Arc::from(name)), n))
                })
                .collect()
        };
        let totals: Option<Vec<Totals>> = stored
            .iter()
            .map(|site| {
                let n = |i: usize| site.get(i)?.as_u64();
                let small = |i: usize| u32::try_from(n(i)?).ok();
                let [d0, d1, d2, d3, d4] = [4, 5, 6, 7, 8].map(small);
                Some(Totals {
                    active: small(0)?,
                    duration_ms: n(1)?,
                    bounces: small(2)?,
                    new: small(3)?,
                    devices: [d0?, d1?, d2?, d3?, d4?],
                    views: small(9)?,
                    referrers: pairs(site.get(10)?)?,
                    pages: pairs(site.get(11)?)?,
                })
            })
            .collect();
        totals.filter(|t| t.len() == sites)
    }
}

/// The [`SHOWN`] largest entries (ties by name), and the rest, with what was already
/// counted as `other` (past [`MAX_LABELS`]), summed as one `other` (six entries show as
/// they are).
fn top(entries: Vec<(Label, u32)>) -> Vec<(Label, u32)> {
    let (other, mut named): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|e| e.0.as_str() == "other");
    let mut rest: u32 = other.iter().map(|e| e.1).sum();
    named.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
    let shown = if rest > 0 { SHOWN } else { SHOWN + 1 };
    if named.len() > shown {
        rest += named.drain(SHOWN..).map(|e| e.1).sum::<u32>();
    }
    if rest > 0 {
        named.push((Label::from("other"), rest));
    }
    named
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_765_000_000_000 - 1_765_000_000_000 % DAY_MS + 12 * 3_600_000;

    fn live() -> Live {
        Live::new(
            Settings {
                sites: vec!["a.example".into(), "b.example".into()],
                interval: Duration::from_millis(1500),
                active_window: Duration::from_secs(300),
                session_timeout: Duration::from_secs(1800),
                max_visitors: 1000,
                history_ticks: 100,
            },
            Arc::default(),
            None,
        )
    }

    fn view(path: &str, referrer: Option<&str>, width: Option<u32>) -> Event {
        Event {
            domains: vec!["a.example".into()],
            kind: Kind::PageView,
            path: path.into(),
            referrer: referrer.map(str::to_string),
            width,
        }
    }

    fn tick(live: &Live, now: u64) -> Sample {
        live.tick(now / 1500, now).swap_remove(0)
    }

    /// A visitor's digest, as the edge would make it.
    fn v(ip: &str) -> u64 {
        let mut h = SipHasher13::new();
        h.write(ip.as_bytes());
        h.finish()
    }

    #[test]
    fn n_visitors_are_n_active_users_until_their_window_closes() {
        let live = live();
        for i in 0..50 {
            let ip = format!("10.0.0.{i}");
            live.record(&view("/", None, Some(1280)), v(&ip), false, T0);
            live.record(&view("/b", None, Some(1280)), v(&ip), false, T0 + 1000);
        }
        let s = tick(&live, T0 + 1500);
        assert_eq!((s.active_users, s.page_views), (50, 100));
        let d = s.details.unwrap();
        assert_eq!(d.new_visitors, 50);
        assert_eq!(d.bounce_rate, 0.0);
        assert_eq!(d.devices, [(Label::from("laptop"), 50)]);
        assert_eq!(s.avg_session_duration, 0.0, "one second, in minutes");
        assert_eq!(
            tick(&live, T0 + 3000).page_views,
            0,
            "views are per interval"
        );
        assert_eq!(tick(&live, T0 + 1000 + 299_999).active_users, 50);
        assert_eq!(tick(&live, T0 + 1000 + 300_001).active_users, 0);
        assert_eq!(tick(&live, T0 + 1000 + 300_001).avg_session_duration, 0.0);
    }

    #[test]
    fn an_event_read_before_the_last_tick_still_expires() {
        let live = live();
        tick(&live, T0 + 600_000);
        // Its request read the clock before that tick closed the window past it.
        live.record(&view("/", None, None), v("1.1.1.1"), false, T0);
        assert_eq!(tick(&live, T0 + 600_000).active_users, 1);
        assert_eq!(tick(&live, T0 + 900_001).active_users, 0);
    }

    #[test]
    fn session_duration_is_the_mean_of_last_minus_first() {
        let live = live();
        live.record(&view("/", None, None), v("1.1.1.1"), false, T0);
        live.record(&view("/", None, None), v("1.1.1.1"), false, T0 + 120_000);
        live.record(&view("/", None, None), v("2.2.2.2"), false, T0 + 60_000);
        let s = tick(&live, T0 + 120_000);
        assert_eq!(s.avg_session_duration, 1.0, "(2 min + 0) / 2");
        assert_eq!(s.details.unwrap().bounce_rate, 0.5);
        // Back after the session timeout: a new session, no longer the first of the day.
        live.record(
            &view("/", None, None),
            v("1.1.1.1"),
            false,
            T0 + 120_000 + 1_800_001,
        );
        let s = tick(&live, T0 + 120_000 + 1_800_001);
        assert_eq!((s.active_users, s.avg_session_duration), (1, 0.0));
        assert_eq!(s.details.unwrap().new_visitors, 0);
    }

    #[test]
    fn engagement_extends_an_open_session_and_never_starts_one() {
        let live = live();
        let engagement = Event {
            kind: Kind::Engagement,
            ..view("/", None, None)
        };
        assert_eq!(
            live.record(&engagement, v("1.1.1.1"), false, T0),
            Recorded::NoSession
        );
        let s = tick(&live, T0);
        assert_eq!(
            (s.active_users, s.page_views),
            (0, 0),
            "no session to engage with"
        );
        live.record(&view("/", None, None), v("1.1.1.1"), false, T0 + 1500);
        live.record(&engagement, v("1.1.1.1"), false, T0 + 61_500);
        let s = tick(&live, T0 + 61_500);
        assert_eq!((s.active_users, s.page_views), (1, 1));
        assert_eq!(s.avg_session_duration, 1.0, "one minute on the page");
        // Once the session has ended, an engagement does not open a new one.
        let later = T0 + 61_500 + 1_800_001;
        live.record(&engagement, v("1.1.1.1"), false, later);
        assert_eq!(tick(&live, later).active_users, 0);
    }

    #[test]
    fn a_visitor_is_a_hash_that_changes_with_the_day() {
        let live = live();
        let before = T0 - T0 % DAY_MS + DAY_MS - 1000;
        live.record(&view("/", None, None), v("1.1.1.1"), false, before);
        let key = lock(&live.state).key;
        live.record(&view("/", None, None), v("1.1.1.1"), false, before + 2000);
        assert_ne!(lock(&live.state).key, key, "a new key at 00:00 UTC");
        let s = tick(&live, before + 2000);
        assert_eq!(
            s.active_users, 2,
            "across midnight, two visitors, as in Plausible"
        );
        // Yesterday's visitor is forgotten once its session has ended.
        tick(&live, before + 1_800_000 + 2000);
        assert_eq!(lock(&live.state).visitors.len(), 1);
    }

    #[test]
    fn breakdowns_sum_to_their_totals_and_stay_bounded() {
        let live = live();
        for i in 0..2000u32 {
            let ip = format!("10.1.{}.{}", i / 256, i % 256);
            let referrer = format!("site{}.example", i % 7);
            let referrer = (i % 3 != 0).then_some(referrer.as_str());
            let e = view(&format!("/p{}", i % 1500), referrer, Some(i));
            live.record(&e, v(&ip), false, T0 + u64::from(i));
        }
        let s = tick(&live, T0 + 3000);
        assert_eq!(s.active_users, 1000, "max_visitors");
        let metrics = live.metrics.render();
        assert!(
            metrics.contains("analytics_live_visitors_evicted_total 1000"),
            "{metrics}"
        );
        let d = s.details.unwrap();
        let sum = |b: &[(Label, u32)]| b.iter().map(|e| e.1).sum::<u32>();
        assert_eq!(sum(&d.devices), s.active_users);
        assert_eq!(sum(&d.referrers), s.active_users);
        assert_eq!(sum(&d.top_pages), s.page_views);
        assert_eq!(d.top_pages.len(), SHOWN + 1);
        assert_eq!(d.countries, None);
        assert!(d.referrers.iter().any(|r| r.0.as_str() == "direct"));
        let st = lock(&live.state);
        assert!(st.sites[0].referrers.len() <= MAX_LABELS);
    }

    #[test]
    fn a_site_named_twice_counts_once_and_other_is_one_entry() {
        let live = live();
        let twice = Event {
            domains: vec!["a.example".into(), "a.example".into()],
            ..view("/", None, None)
        };
        live.record(&twice, v("1.1.1.1"), false, T0);
        assert_eq!(tick(&live, T0).page_views, 1);
        let past_the_cap = (0..MAX_LABELS + 10).map(|i| {
            let name = if i < 3 {
                "other".to_string()
            } else {
                format!("/p{i}")
            };
            (Label::Shared(Arc::from(name)), 1)
        });
        let shown = top(past_the_cap.collect());
        let others: Vec<_> = shown.iter().filter(|e| e.0.as_str() == "other").collect();
        assert_eq!(others.len(), 1, "{shown:?}");
        assert_eq!(
            shown.iter().map(|e| e.1).sum::<u32>(),
            MAX_LABELS as u32 + 10
        );
        assert_eq!(shown.len(), SHOWN + 1);
    }

    #[test]
    fn bots_and_other_sites_are_not_counted_and_floods_wait_per_address() {
        let live = live();
        let e = view("/", None, None);
        assert_eq!(live.record(&e, v("1.1.1.1"), true, T0), Recorded::Bot);
        let other = Event {
            domains: vec!["c.example".into()],
            ..e.clone()
        };
        assert_eq!(
            live.record(&other, v("1.1.1.1"), false, T0),
            Recorded::UnknownSite
        );
        assert_eq!(tick(&live, T0).active_users, 0);
        let admitted = (0..100)
            .filter(|_| live.admit(v("9.9.9.9"), T0).is_ok())
            .count();
        assert_eq!(admitted, BURST as usize);
        assert!(live.admit(v("9.9.9.9"), T0).unwrap_err() <= Duration::from_millis(100));
        assert!(
            live.admit(v("9.9.9.9"), T0 + 100).is_ok(),
            "a token a tenth of a second"
        );
        assert!(live.admit(v("8.8.8.8"), T0).is_ok(), "per address");
    }

    #[test]
    fn samples_are_kept_and_ticks_without_one_are_zeros() {
        let live = live();
        live.record(&view("/", None, None), v("1.1.1.1"), false, T0);
        let seq = T0 / 1500;
        live.tick(seq, T0);
        assert_eq!(live.sample(0, seq).active_users, 1);
        assert_eq!(live.sample(1, seq).active_users, 0);
        assert_eq!(live.sample(0, seq - 1).active_users, 0);
        assert_eq!(live.sample(0, seq - 1).seq, seq - 1);
        for i in 1..=150 {
            live.tick(seq + i, T0 + i * 1500);
        }
        assert_eq!(lock(&live.kept[0]).len(), 100);
        assert_eq!(live.sample(0, seq + 150).seq, seq + 150);
    }
}
