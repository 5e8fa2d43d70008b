//! Live mode's state in Redis (`REDIS_URL`), shared by every instance of a fleet.
//!
//! Two Lua scripts hold the counting, each atomic in Redis: `record.lua` counts an event
//! (what [`super::State`] does in memory), and `tick.lua` returns a tick's totals. The
//! first instance to ask for a tick closes the windows, takes the counters and stores the
//! totals under the tick's key; every other instance gets the stored totals. So each
//! tick is computed once for the fleet, and every instance builds the same sample from
//! the same totals, byte for byte. The totals stay for `LIVE_HISTORY`: an instance that
//! starts late, or restarts, loads them and serves the same history.
//!
//! The day's key of the visitors' hash is in Redis too (`rab:key:DAY`, gone two days
//! later), so that a visitor is one visitor whichever instance its events reach.
//!
//! Every call has a deadline ([`CALL_TIMEOUT`]), and at most [`POOL`] connections are
//! open; a call that cannot get one in time fails like one that timed out.
//!
//! A call that timed out may still run: a Redis that hung runs the commands waiting in
//! its sockets when it resumes. So an event held after a failed call is counted once
//! however often it is sent, and whichever send runs first. `record.lua` marks each call
//! it runs (`rab:call:CONNECTION` = the call's number on that connection, whose calls
//! are sent one at a time: one key per connection), and each event sent again
//! (`rab:event:ID`, kept [`EVENT_MARK_TTL_MS`]). An event sent again is not counted if
//! its first send ran or another send counted it; a first send that runs late is not
//! counted if a send again did.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use redis::{Client, Connection, RedisError, Script};

use super::Settings;
use super::event::{Event, Kind};

/// How long one call (connecting included) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Connections open at most: the generator's, and a few workers' at once.
const POOL: usize = 8;
/// Ticks read by one `MGET` when history is loaded.
const LOAD_BATCH: usize = 1000;
/// Two days: a day's key outlives the day's last session, and a call's mark the
/// events held while Redis fails.
const KEY_TTL_MS: u64 = 2 * 86_400_000;
/// An event sent again is marked this long: a first send that was late runs within it.
const EVENT_MARK_TTL_MS: u64 = 600_000;

const COMMON: &str = include_str!("common.lua");

/// The connection to Redis, and the scripts.
pub struct Store {
    /// The URL, without its password: for the log.
    pub shown: String,
    client: Client,
    /// The pool: a slot per connection, `None` until it is opened (again).
    idle: (Sender<Option<Pooled>>, Receiver<Option<Pooled>>),
    record: Script,
    tick: Script,
}

/// An open connection, with its calls so far.
struct Pooled {
    connection: Connection,
    id: u64,
    calls: u64,
}

/// One call on one connection: the connection's id, and the call's number on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    connection: u64,
    number: u64,
}

/// A call that failed; `call` if it was sent, so that it may have run.
pub struct Unanswered {
    pub error: RedisError,
    pub call: Option<Call>,
}

/// Which send of an event a [`Store::record`] is.
#[derive(Debug, Clone, Copy)]
pub enum Attempt {
    /// For the first time.
    First,
    /// Again, held since its first send failed: that call, if it was sent.
    Again(Option<Call>),
}

/// What [`Store::record`] did.
pub struct Touched {
    pub counted: bool,
    pub evicted: u64,
}

/// A tick's totals as stored, with the visitors Redis tracks.
pub struct Ticked {
    pub totals: String,
    pub visitors: usize,
}

impl Store {
    /// Checks `url` and prepares the pool; connects on first use.
    pub fn new(url: &str) -> Result<Store, RedisError> {
        let (tx, rx) = bounded(POOL);
        for _ in 0..POOL {
            let _ = tx.send(None);
        }
        Ok(Store {
            shown: crate::config::without_password(url),
            client: Client::open(url)?,
            idle: (tx, rx),
            record: Script::new(&format!("{COMMON}\n{}", include_str!("record.lua"))),
            tick: Script::new(&format!("{COMMON}\n{}", include_str!("tick.lua"))),
        })
    }

    /// Runs `call` on a pooled connection. A connection that failed is closed, and the
    /// next call opens a new one.
    fn with<T>(
        &self,
        call: impl FnOnce(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        self.with_call(|connection, _| call(connection))
            .map_err(|failed| failed.error)
    }

    /// As [`Store::with`], giving `call` the [`Call`] it is.
    fn with_call<T>(
        &self,
        call: impl FnOnce(&mut Connection, Call) -> Result<T, RedisError>,
    ) -> Result<T, Unanswered> {
        let unsent = |error| Unanswered { error, call: None };
        let slot = self.idle.1.recv_timeout(CALL_TIMEOUT).map_err(|_| {
            unsent(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "every Redis connection is busy",
            )))
        })?;
        let mut pooled = match slot {
            Some(pooled) => pooled,
            None => self.connect().map_err(|e| {
                let _ = self.idle.0.send(None);
                unsent(e)
            })?,
        };
        pooled.calls += 1;
        let this = Call {
            connection: pooled.id,
            number: pooled.calls,
        };
        match call(&mut pooled.connection, this) {
            Ok(t) => {
                let _ = self.idle.0.send(Some(pooled));
                Ok(t)
            }
            Err(error) => {
                let _ = self.idle.0.send(None);
                Err(Unanswered {
                    error,
                    call: Some(this),
                })
            }
        }
    }

    /// Closes the idle connections: after a failure, those opened before it may be
    /// broken too (Redis restarted), and each would fail once more when Redis is back.
    pub fn close_idle(&self) {
        let idle = self.idle.1.try_iter().count();
        for _ in 0..idle {
            let _ = self.idle.0.send(None);
        }
    }

    fn connect(&self) -> Result<Pooled, RedisError> {
        let connection = self.client.get_connection_with_timeout(CALL_TIMEOUT)?;
        connection.set_read_timeout(Some(CALL_TIMEOUT))?;
        connection.set_write_timeout(Some(CALL_TIMEOUT))?;
        Ok(Pooled {
            connection,
            id: rand::random(),
            calls: 0,
        })
    }

    /// The key of `day`'s visitor hash: the one stored, or `fresh`, stored now.
    pub fn day_key(&self, day: u64, fresh: (u64, u64)) -> Result<(u64, u64), RedisError> {
        let ours = format!("{:016x}{:016x}", fresh.0, fresh.1);
        let stored: Option<String> = self.with(|c| {
            redis::cmd("SET")
                .arg(format!("rab:key:{day}"))
                .arg(&ours)
                .arg("NX")
                .arg("PX")
                .arg(KEY_TTL_MS)
                .arg("GET")
                .query(c)
        })?;
        let key = stored.unwrap_or(ours);
        let half =
            |r: std::ops::Range<usize>| key.get(r).and_then(|h| u64::from_str_radix(h, 16).ok());
        half(0..16).zip(half(16..32)).ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "a malformed day key",
            ))
        })
    }

    /// Counts `event` (`id`: random, the same at each send) for each site and visitor id
    /// in `pairs`, unless an earlier send of it ran.
    pub fn record(
        &self,
        event: &Event,
        id: u64,
        attempt: Attempt,
        pairs: &[(u16, u64)],
        now_ms: u64,
        settings: &Settings,
    ) -> Result<Touched, Unanswered> {
        let kind = match event.kind {
            Kind::PageView => "p",
            Kind::Engagement => "e",
            Kind::Custom => "c",
        };
        let device = event
            .width
            .map_or(-1, |w| i32::from(super::device(Some(w))));
        let mut invocation = self.record.prepare_invoke();
        invocation
            .arg(now_ms)
            .arg(settings.session_timeout.as_millis() as u64)
            .arg(settings.max_visitors)
            .arg(kind)
            .arg(device)
            .arg(&*event.path)
            .arg(event.referrer.as_deref().unwrap_or(""))
            .arg(KEY_TTL_MS)
            .arg(EVENT_MARK_TTL_MS)
            .arg(format!("{id:016x}"));
        match attempt {
            Attempt::First => invocation.arg("first").arg("").arg(0),
            Attempt::Again(None) => invocation.arg("again").arg("").arg(0),
            Attempt::Again(Some(call)) => invocation
                .arg("again")
                .arg(format!("{:016x}", call.connection))
                .arg(call.number),
        };
        for (site, id) in pairs {
            invocation.arg(site).arg(format!("{id:016x}"));
        }
        let (counted, evicted): (u8, u64) = self.with_call(|c, this| {
            invocation
                .arg(format!("{:016x}", this.connection))
                .arg(this.number)
                .invoke(c)
        })?;
        Ok(Touched {
            counted: counted == 1,
            evicted,
        })
    }

    /// Tick `seq`'s totals (the tick starts at `start_ms`): computed now by this instance
    /// if it is the first to ask, else the ones stored.
    pub fn tick(&self, seq: u64, start_ms: u64, settings: &Settings) -> Result<Ticked, RedisError> {
        let ms = |d: Duration| d.as_millis() as u64;
        let history_ms = settings.history_ticks as u64 * ms(settings.interval);
        let (totals, visitors): (String, usize) = self.with(|c| {
            self.tick
                .arg(seq)
                .arg(start_ms)
                .arg(ms(settings.active_window))
                .arg(ms(settings.session_timeout))
                .arg(start_ms - start_ms % super::DAY_MS)
                .arg(settings.sites.len())
                .arg(history_ms)
                .invoke(c)
        })?;
        Ok(Ticked { totals, visitors })
    }

    /// The first tick with totals in Redis, if any.
    pub fn first(&self) -> Result<Option<u64>, RedisError> {
        self.with(|c| redis::cmd("GET").arg("rab:first").query(c))
    }

    /// The stored totals of the ticks `seqs`, in order (`None` for a tick without).
    pub fn totals(&self, seqs: &[u64]) -> Result<Vec<Option<String>>, RedisError> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(LOAD_BATCH) {
            let keys: Vec<String> = chunk.iter().map(|seq| format!("rab:tick:{seq}")).collect();
            let got: Vec<Option<String>> = self.with(|c| redis::cmd("MGET").arg(&keys).query(c))?;
            out.extend(got);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::{DAY_MS, Live, Recorded, Settings, Totals};
    use super::*;

    /// Debian's redis-server on a free port, without persistence; killed on drop.
    struct Server(Child, u16);

    impl Server {
        fn start() -> Server {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                ])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server: apt-get install redis-server, as scripts/test.sh does");
            let server = Server(child, port);
            server.wait_until_it_answers();
            server
        }

        fn wait_until_it_answers(&self) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let mut pong = [0; 7];
                let answered = TcpStream::connect(("127.0.0.1", self.1)).is_ok_and(|mut s| {
                    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut pong).is_ok()
                });
                if answered {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("redis-server did not answer on port {}", self.1);
        }

        /// Sends `signal` (`-STOP`, `-CONT`) to the server.
        fn signal(&self, signal: &str) {
            let sent = Command::new("kill")
                .args([signal, &self.0.id().to_string()])
                .status();
            assert!(sent.is_ok_and(|s| s.success()), "kill {signal}");
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Live mode counting one site, `a.example`.
    fn one_site() -> Settings {
        Settings {
            sites: vec!["a.example".into()],
            interval: Duration::from_millis(1500),
            active_window: Duration::from_secs(300),
            session_timeout: Duration::from_secs(1800),
            max_visitors: 1000,
            history_ticks: 100,
        }
    }

    /// A page view of `a.example/`.
    fn page_view() -> Event {
        Event {
            domains: vec!["a.example".into()],
            kind: Kind::PageView,
            path: "/".into(),
            referrer: None,
            width: None,
        }
    }

    /// An event whose call timed out while Redis hung is held; Redis runs the call when
    /// it resumes, and the held event is replayed at the next tick: counted once.
    #[test]
    #[ignore = "slow tier: needs redis-server (scripts/test.sh installs it)"]
    fn an_event_redis_ran_after_its_call_timed_out_is_counted_once() {
        let server = Server::start();
        let settings = one_site();
        let store = Store::new(&format!("redis://127.0.0.1:{}", server.1)).unwrap();
        let live = Live::new(settings, Arc::default(), Some(store));
        let now = DAY_MS * 20_000;
        let view = page_view();
        // Every pooled connection open, so that the next call is sent at once.
        for visitor in 0..2 * POOL as u64 {
            assert_eq!(live.record(&view, visitor, false, now), Recorded::Counted);
        }
        server.signal("-STOP");
        let held = live.record(&view, 99, false, now + 1);
        server.signal("-CONT");
        assert_eq!(held, Recorded::Buffered);
        server.wait_until_it_answers();
        let seq = now / 1500 + 1;
        let sample = &live.tick(seq, seq * 1500)[0];
        assert!(!sample.stale);
        assert_eq!(
            (sample.page_views, sample.active_users),
            (2 * POOL as u32 + 1, 2 * POOL as u32 + 1)
        );
    }

    /// Whichever send of an event runs first counts it: a first send that ran late, after
    /// a send again counted the event, counts nothing.
    #[test]
    #[ignore = "slow tier: needs redis-server (scripts/test.sh installs it)"]
    fn a_first_send_that_runs_after_a_send_again_counts_nothing() {
        let server = Server::start();
        let store = Store::new(&format!("redis://127.0.0.1:{}", server.1)).unwrap();
        let now = DAY_MS * 20_000;
        let view = page_view();
        let settings = one_site();
        let record = |id, attempt| {
            let touched = store.record(&view, id, attempt, &[(0, id)], now, &settings);
            touched.map(|t| t.counted).map_err(|f| f.error).unwrap()
        };
        assert!(record(1, Attempt::Again(None)));
        assert!(record(1, Attempt::First), "said counted");
        assert!(record(2, Attempt::First));
        let seq = now / 1500 + 1;
        let totals = store.tick(seq, seq * 1500, &settings).unwrap().totals;
        let sample = Totals::parse(&totals, 1)
            .unwrap()
            .remove(0)
            .sample(seq, seq * 1500);
        assert_eq!((sample.page_views, sample.active_users), (2, 2));
    }

    /// The same events, at the same times, counted in this process and in Redis, give
    /// the same samples at every tick: `record.lua` and `tick.lua` count as `State` does.
    /// Four hours across midnight: 300 visitors over two sites (at most 120 tracked),
    /// page views, engagements and custom events, with and without a screen width or a
    /// referrer, visitors back after their session ended.
    #[test]
    #[ignore = "slow tier: needs redis-server (scripts/test.sh installs it)"]
    fn redis_counts_as_this_process_does() {
        let server = Server::start();
        let settings = Settings {
            sites: vec!["a.example".into(), "b.example".into()],
            interval: Duration::from_millis(1500),
            active_window: Duration::from_secs(300),
            session_timeout: Duration::from_secs(1800),
            max_visitors: 120,
            history_ticks: 100,
        };
        let store = Store::new(&format!("redis://127.0.0.1:{}", server.1)).unwrap();
        let local = Live::new(settings.clone(), Arc::default(), None);
        let shared = Live::new(settings, Arc::default(), Some(store));
        let start = DAY_MS * 20_000 - 3_600_000;
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut now = start;
        let mut seq = start / 1500;
        let (mut ticks, mut counted, mut most_active) = (0, 0, 0);
        while now < start + 4 * 3_600_000 {
            // A few events per tick, each at its own millisecond (eviction takes the
            // longest idle: no ties, whose order depends on the keys).
            for _ in 0..next(6) {
                now += 1 + next(300);
                let kind = match next(10) {
                    0..=6 => Kind::PageView,
                    7 | 8 => Kind::Engagement,
                    _ => Kind::Custom,
                };
                let event = Event {
                    domains: vec![["a.example", "b.example"][next(2) as usize].into()],
                    kind,
                    path: format!("/p{}", next(8)),
                    referrer: (next(3) == 0).then(|| format!("r{}.example", next(4))),
                    width: [None, Some(400), Some(800), Some(1200), Some(2000)][next(5) as usize],
                };
                let visitor = next(300);
                let a = local.record(&event, visitor, false, now);
                let b = shared.record(&event, visitor, false, now);
                assert_eq!(a, b, "{event:?} from {visitor} at {now}");
                counted += u32::from(a == Recorded::Counted);
            }
            seq += 1;
            now = now.max(seq * 1500);
            let samples = local.tick(seq, seq * 1500);
            assert_eq!(samples, shared.tick(seq, seq * 1500), "tick {seq}");
            assert!(samples.iter().all(|s| !s.stale));
            most_active = samples
                .iter()
                .map(|s| s.active_users)
                .fold(most_active, u32::max);
            ticks += 1;
            // Quiet stretches, for sessions to end.
            if next(400) == 0 {
                seq += 1200 + next(400);
                now = seq * 1500;
            }
        }
        eprintln!("{ticks} ticks, {counted} events counted, at most {most_active} active");
        assert!(ticks > 1500 && counted > 3000 && most_active > 50);
    }
}
