//! The traffic model: a pure function from (seed, tick, profile, scenario) to a sample.
//!
//! Nothing is carried from one tick to the next. Smooth variation comes from seeded value
//! noise over time, bursts from hashed time slots, and per-tick randomness from hashing
//! the tick index. So REST, WebSocket, history and resume agree by construction; two
//! instances with the same `SEED` serve the same sample at the same tick; and a test can
//! pin any tick's exact output. The hash is SplitMix64, written out here so that no crate
//! upgrade can change a deployed series.
//!
//! `active_users` is the product of:
//! - the profile's base audience;
//! - a daily cycle (a cosine peaking at the profile's hour in local time, peak/trough
//!   ratio 2–3×);
//! - a weekday/weekend factor, blended over the first two hours of each day;
//! - smooth noise (three octaves: 20 min ±12 %, 3 min ±5 %, 30 s ±2 %);
//! - bursts (a campaign or a front-page link: a 90 s rise, then an exponential decay with
//!   a 15 min time constant, a few per day);
//! - the scenario.
//!
//! `page_views` is drawn from a Poisson-like distribution with mean `active_users ×
//! views_per_user`. `avg_session_duration` drifts slowly and dips during bursts, when
//! newcomers bounce.

use std::f64::consts::PI;
use std::time::Duration;

use crate::sample::{Details, Label, Sample, timestamp};

/// A site's audience: its scale and rhythm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A personal or company blog: the original's magnitudes (about 100 users), evening peak.
    Blog,
    /// An online shop: larger, evening peak, busier at weekends, campaign bursts.
    Shop,
    /// A news site: large, morning peak, quieter at weekends, big front-page bursts.
    News,
}

/// A shape imposed on the traffic, for testing how a dashboard copes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The profile's traffic as modelled.
    Normal,
    /// A 4× spike every 5 minutes (15 s rise, 1 min decay).
    Spike,
    /// Traffic near zero for 3 minutes in every 10, then a 30 s recovery.
    Outage,
    /// Constant values: no cycle, no noise, no bursts.
    Flatline,
    /// Traffic climbing from a tenth to 3× the base over 10 minutes, then again.
    Ramp,
}

/// Bounds a profile's samples never leave under the `normal` scenario at the default 1.5 s
/// interval: every factor of the model at its extreme at once. The model enforces them
/// (bursts that overlap are capped at the largest single gain, a page-view draw at 4
/// standard deviations), so a dashboard can fix its axes from them. Other scenarios scale
/// `active_users`: `spike` up to 4×, `ramp` up to 3×, `outage` down to near zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub active_users: (u32, u32),
    pub page_views: (u32, u32),
    pub avg_session_duration: (f64, f64),
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Blog, Profile::Shop, Profile::News];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Blog => "blog",
            Profile::Shop => "shop",
            Profile::News => "news",
        }
    }

    /// The bounds this profile's samples never leave (see [`Bounds`]).
    pub fn bounds(self) -> Bounds {
        let s = self.shape();
        let (weekday_lo, weekday_hi) = (s.weekend.min(1.0), s.weekend.max(1.0));
        let users_lo = s.users * (1.0 - s.amplitude()) * weekday_lo * (1.0 - NOISE);
        let users_hi =
            s.users * (1.0 + s.amplitude()) * weekday_hi * (1.0 + NOISE) * (1.0 + s.burst_gain.1);
        let views = |users: f64, z: f64| {
            let mean = users * s.views_per_user;
            (mean + z * mean.sqrt()).round().max(0.0) as u32
        };
        let tenths = |minutes: f64| (minutes * 10.0).round() / 10.0;
        Bounds {
            active_users: (users_lo.round() as u32, users_hi.round() as u32),
            page_views: (views(users_lo, -MAX_Z), views(users_hi, MAX_Z)),
            avg_session_duration: (
                tenths(s.session_min * (1.0 - DRIFT) / (1.0 + BURST_SESSION_DIP * s.burst_gain.1)),
                tenths(s.session_min * (1.0 + DRIFT)),
            ),
        }
    }

    fn shape(self) -> Shape {
        match self {
            Profile::Blog => Shape {
                users: 100.0,
                daily_ratio: 2.5,
                peak_hour: 20.0,
                weekend: 0.85,
                views_per_user: 2.0,
                session_min: 4.5,
                bursts_per_day: 0.5,
                burst_gain: (1.0, 2.5),
                devices: [0.45, 0.50, 0.05],
            },
            Profile::Shop => Shape {
                users: 400.0,
                daily_ratio: 2.8,
                peak_hour: 19.0,
                weekend: 1.3,
                views_per_user: 3.5,
                session_min: 7.5,
                bursts_per_day: 1.0,
                burst_gain: (0.8, 2.0),
                devices: [0.35, 0.58, 0.07],
            },
            Profile::News => Shape {
                users: 2000.0,
                daily_ratio: 3.0,
                peak_hour: 8.0,
                weekend: 0.7,
                views_per_user: 1.6,
                session_min: 2.8,
                bursts_per_day: 2.0,
                burst_gain: (1.5, 4.0),
                devices: [0.30, 0.65, 0.05],
            },
        }
    }
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Normal,
        Scenario::Spike,
        Scenario::Outage,
        Scenario::Flatline,
        Scenario::Ramp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Normal => "normal",
            Scenario::Spike => "spike",
            Scenario::Outage => "outage",
            Scenario::Flatline => "flatline",
            Scenario::Ramp => "ramp",
        }
    }

    /// The traffic multiplier at `secs` since the epoch.
    fn factor(self, secs: f64) -> f64 {
        match self {
            Scenario::Normal | Scenario::Flatline => 1.0,
            Scenario::Spike => 1.0 + 3.0 * pulse(secs.rem_euclid(300.0), 15.0, 60.0),
            Scenario::Outage => {
                let t = secs.rem_euclid(600.0);
                let down = smoothstep(t / 10.0) * (1.0 - smoothstep((t - 180.0) / 30.0));
                1.0 - 0.98 * down
            }
            Scenario::Ramp => 0.1 + 2.9 * secs.rem_euclid(600.0) / 600.0,
        }
    }
}

/// Pearson's correlation of two series: how the model's properties are checked (lag-1
/// autocorrelation is the correlation of a series with itself shifted by one).
pub fn correlation(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// Names for error messages: `blog, shop, news`.
pub fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> String {
    all.iter().map(|&x| name(x)).collect::<Vec<_>>().join(", ")
}

/// Parses a profile or scenario name.
pub fn parse<T: Copy>(all: &[T], name: fn(T) -> &'static str, s: &str) -> Option<T> {
    all.iter()
        .copied()
        .find(|&x| name(x).eq_ignore_ascii_case(s))
}

struct Shape {
    users: f64,
    daily_ratio: f64,
    peak_hour: f64,
    weekend: f64,
    views_per_user: f64,
    session_min: f64,
    bursts_per_day: f64,
    burst_gain: (f64, f64),
    /// Desktop, mobile, tablet shares.
    devices: [f64; 3],
}

impl Shape {
    /// The daily cycle's amplitude around 1: peak/trough = `daily_ratio`.
    fn amplitude(&self) -> f64 {
        (self.daily_ratio - 1.0) / (self.daily_ratio + 1.0)
    }
}

/// The smooth noise's largest excursion: the sum of its octaves' amplitudes.
const NOISE: f64 = 0.12 + 0.05 + 0.02;
/// The session length's slow drift, ± this share.
const DRIFT: f64 = 0.15;
/// How much a burst of gain `g` shortens sessions: divided by `1 + this × g`.
const BURST_SESSION_DIP: f64 = 0.4;
/// A page-view draw stays within this many standard deviations of its mean.
const MAX_Z: f64 = 4.0;

/// Everything that determines the series.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    pub seed: u64,
    pub interval: Duration,
    pub profile: Profile,
    /// The scenario of the shared stream (a client may ask for another).
    pub scenario: Scenario,
    /// Local time = UTC + this many hours: where the daily peak falls.
    pub utc_offset_hours: f64,
}

impl Model {
    pub fn interval_ms(&self) -> u64 {
        (self.interval.as_millis() as u64).max(1)
    }

    /// The tick containing the Unix time `unix_ms`.
    pub fn tick_at(&self, unix_ms: u64) -> u64 {
        unix_ms / self.interval_ms()
    }

    /// The sample of `tick` under `scenario`, with the detail fields if `details`.
    pub fn sample(&self, tick: u64, scenario: Scenario, details: bool) -> Sample {
        let unix_ms = tick.saturating_mul(self.interval_ms());
        let secs = unix_ms as f64 / 1000.0;
        let shape = self.profile.shape();
        let h = |salt: u64| hash(self.seed, salt, tick);
        let flat = scenario == Scenario::Flatline;
        let burst = if flat { 1.0 } else { self.burst(secs, &shape) };
        let level = if flat {
            1.0
        } else {
            self.daily(secs, &shape) * (1.0 + self.noise(secs)) * burst * scenario.factor(secs)
        };
        let users = (shape.users * level).max(0.0);
        let active_users = users.round() as u32;
        let mean_views = users * shape.views_per_user * self.interval.as_secs_f64() / 1.5;
        let page_views = if flat {
            mean_views.round() as u32
        } else {
            poisson(mean_views, h(SALT_VIEWS), h(SALT_VIEWS + 1))
        };
        let drift = if flat {
            0.0
        } else {
            DRIFT * value_noise(self.seed, 7, secs, 3600.0)
        };
        let session = shape.session_min * (1.0 + drift) / (1.0 + BURST_SESSION_DIP * (burst - 1.0));
        Sample {
            seq: tick,
            timestamp: timestamp(i64::try_from(unix_ms).unwrap_or(i64::MAX)),
            active_users,
            page_views,
            avg_session_duration: (session.clamp(0.5, 60.0) * 10.0).round() / 10.0,
            stale: false,
            details: details.then(|| self.details(secs, &shape, burst, active_users, page_views)),
        }
    }

    /// The daily cycle times the weekday/weekend factor.
    fn daily(&self, secs: f64, shape: &Shape) -> f64 {
        let local_hours = secs / 3600.0 + self.utc_offset_hours;
        let hour = local_hours.rem_euclid(24.0);
        let cycle = 1.0 + shape.amplitude() * (2.0 * PI * (hour - shape.peak_hour) / 24.0).cos();
        let day = (local_hours / 24.0).floor() as i64;
        // 1970-01-01 was a Thursday: with Monday as 0, day 0 is weekday 3.
        let weekend = |d: i64| {
            if (d + 3).rem_euclid(7) >= 5 {
                shape.weekend
            } else {
                1.0
            }
        };
        let blend = smoothstep(hour / 2.0);
        cycle * (weekend(day - 1) * (1.0 - blend) + weekend(day) * blend)
    }

    /// Smooth noise around zero, within ±`NOISE`.
    fn noise(&self, secs: f64) -> f64 {
        0.12 * value_noise(self.seed, 1, secs, 1200.0)
            + 0.05 * value_noise(self.seed, 2, secs, 180.0)
            + 0.02 * value_noise(self.seed, 3, secs, 30.0)
    }

    /// 1 plus the bursts under way. Each 6-hour slot holds at most one burst, at a hashed
    /// time and gain; a burst's tail can reach into the next slot.
    fn burst(&self, secs: f64, shape: &Shape) -> f64 {
        const SLOT: f64 = 6.0 * 3600.0;
        let slot = (secs / SLOT).floor() as i64;
        let mut gain = 1.0;
        for s in [slot - 1, slot] {
            let s = s as u64;
            if unit(hash(self.seed, SALT_BURST, s)) < shape.bursts_per_day / 4.0 {
                let start = s as f64 * SLOT + unit(hash(self.seed, SALT_BURST + 1, s)) * SLOT;
                let (lo, hi) = shape.burst_gain;
                let g = lo + (hi - lo) * unit(hash(self.seed, SALT_BURST + 2, s));
                gain += g * pulse(secs - start, 90.0, 900.0);
            }
        }
        // Two overlapping bursts never add up to more than the largest single one.
        gain.min(1.0 + shape.burst_gain.1)
    }

    fn details(&self, secs: f64, shape: &Shape, burst: f64, users: u32, views: u32) -> Details {
        let excess = (burst - 1.0).min(3.0) / 3.0;
        let wobble = |salt: u64, period: f64| value_noise(self.seed, salt, secs, period);
        let bounce = 0.42 + 0.06 * wobble(20, 2400.0) + 0.2 * excess;
        let new_share = 0.3 + 0.08 * wobble(21, 1800.0) + 0.35 * excess;
        let shares = |salt: u64, base: &[f64]| -> Vec<f64> {
            base.iter()
                .enumerate()
                .map(|(i, w)| w * (1.0 + 0.2 * wobble(salt + i as u64, 900.0)))
                .collect()
        };
        let referrer_base = [0.35, 0.30, 0.15 + 0.6 * excess, 0.15 + 0.3 * excess, 0.05];
        Details {
            bounce_rate: (bounce.clamp(0.05, 0.95) * 1000.0).round() / 1000.0,
            new_visitors: (f64::from(users) * new_share.clamp(0.0, 1.0)).round() as u32,
            devices: split(users, &shares(30, &shape.devices), &DEVICES),
            countries: Some(split(users, &shares(40, &COUNTRY_SHARES), &COUNTRIES)),
            referrers: split(users, &shares(50, &referrer_base), &REFERRERS),
            top_pages: split(views, &shares(60, &PAGE_SHARES), &PAGES),
        }
    }
}

const SALT_VIEWS: u64 = 100;
const SALT_BURST: u64 = 200;
const DEVICES: [&str; 3] = ["desktop", "mobile", "tablet"];
const COUNTRIES: [&str; 6] = ["US", "IN", "GB", "DE", "BR", "other"];
const COUNTRY_SHARES: [f64; 6] = [0.32, 0.14, 0.09, 0.07, 0.06, 0.32];
const REFERRERS: [&str; 5] = ["direct", "search", "social", "referral", "email"];
const PAGES: [&str; 6] = ["/", "/pricing", "/blog", "/docs", "/about", "other"];
const PAGE_SHARES: [f64; 6] = [0.30, 0.12, 0.20, 0.15, 0.05, 0.18];

/// Splits `total` by `weights` into whole parts that sum to exactly `total` (largest
/// remainder), labelled by `names`.
fn split(total: u32, weights: &[f64], names: &[&'static str]) -> Vec<(Label, u32)> {
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| f64::from(total) * w / sum).collect();
    let mut parts: Vec<u32> = exact.iter().map(|x| x.floor() as u32).collect();
    let mut left = total - parts.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    names
        .iter()
        .map(|&name| Label::from(name))
        .zip(parts)
        .collect()
}

/// A pulse: rises over `rise` seconds (smoothly), then decays with time constant `decay`.
fn pulse(dt: f64, rise: f64, decay: f64) -> f64 {
    if dt < 0.0 {
        0.0
    } else if dt < rise {
        smoothstep(dt / rise)
    } else {
        (-(dt - rise) / decay).exp()
    }
}

fn smoothstep(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

/// Value noise in [-1, 1] over time: hashed values at multiples of `period` seconds,
/// joined smoothly.
fn value_noise(seed: u64, octave: u64, secs: f64, period: f64) -> f64 {
    let x = secs / period;
    let k = x.floor();
    let at = |k: f64| 2.0 * unit(hash(seed, 1000 + octave, k as i64 as u64)) - 1.0;
    let (a, b) = (at(k), at(k + 1.0));
    a + (b - a) * smoothstep(x - k)
}

/// A Poisson-like count with mean `mean` from two uniform hashes: exact (by inversion)
/// for small means, normal above 30, within `MAX_Z` standard deviations.
fn poisson(mean: f64, h1: u64, h2: u64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    if mean < 30.0 {
        let (u, mut p, mut k) = (unit(h1), (-mean).exp(), 0u32);
        let mut cdf = p;
        while u > cdf && k < 1000 {
            k += 1;
            p *= mean / f64::from(k);
            cdf += p;
        }
        return k;
    }
    // Box–Muller.
    let (u1, u2) = (unit(h1).max(1e-12), unit(h2));
    let z = ((-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()).clamp(-MAX_Z, MAX_Z);
    (mean + mean.sqrt() * z).round().max(0.0) as u32
}

/// A uniform number in [0, 1) from a hash.
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

pub(crate) fn hash(seed: u64, salt: u64, x: u64) -> u64 {
    splitmix64(splitmix64(seed ^ salt.wrapping_mul(0xA24B_AED4_963E_E407)) ^ x)
}

/// SplitMix64's output function (Steele, Lea, Flood 2014): a fast, well-mixed 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(profile: Profile) -> Model {
        Model {
            seed: crate::config::DEFAULT_SEED,
            interval: Duration::from_millis(1500),
            profile,
            scenario: Scenario::Normal,
            utc_offset_hours: 0.0,
        }
    }

    /// One day of ticks from 2025-04-14 00:00 UTC (a Monday).
    fn day(m: &Model, scenario: Scenario) -> Vec<Sample> {
        let start = m.tick_at(1_744_588_800_000);
        (start..start + 57_600)
            .map(|t| m.sample(t, scenario, false))
            .collect()
    }

    /// Fixed seed and tick, exact JSON. If this changes, every deployed series changes:
    /// change it deliberately, and say so in the release notes.
    #[test]
    fn golden_values_are_stable_across_builds() {
        let tick = 1_162_972_840; // 2025-04-12T12:01:00Z, a Saturday
        for (profile, golden) in GOLDEN {
            let s = model(profile).sample(tick, Scenario::Normal, true);
            let json = crate::sample::encode(&s, crate::sample::Fields::ALL, true);
            assert_eq!(
                std::str::from_utf8(&json).unwrap(),
                golden,
                "{}",
                profile.name()
            );
        }
    }

    const GOLDEN: [(Profile, &str); 3] = [
        (
            Profile::Blog,
            r#"{"timestamp":"2025-04-12T12:01:00.000Z","active_users":67,"page_views":141,"avg_session_duration":5.1,"bounce_rate":0.44,"new_visitors":24,"devices":{"desktop":35,"mobile":28,"tablet":4},"countries":{"US":22,"IN":8,"GB":6,"DE":5,"BR":4,"other":22},"referrers":{"direct":22,"search":20,"social":13,"referral":9,"email":3},"top_pages":{"/":47,"/pricing":18,"/blog":28,"/docs":17,"/about":6,"other":25},"seq":1162972840}"#,
        ),
        (
            Profile::Shop,
            r#"{"timestamp":"2025-04-12T12:01:00.000Z","active_users":459,"page_views":1631,"avg_session_duration":8.4,"bounce_rate":0.44,"new_visitors":165,"devices":{"desktop":193,"mobile":227,"tablet":39},"countries":{"US":152,"IN":57,"GB":40,"DE":32,"BR":25,"other":153},"referrers":{"direct":149,"search":137,"social":87,"referral":65,"email":21},"top_pages":{"/":541,"/pricing":209,"/blog":325,"/docs":192,"/about":68,"other":296},"seq":1162972840}"#,
        ),
        (
            Profile::News,
            r#"{"timestamp":"2025-04-12T12:01:00.000Z","active_users":1756,"page_views":2840,"avg_session_duration":3.2,"bounce_rate":0.44,"new_visitors":632,"devices":{"desktop":650,"mobile":997,"tablet":109},"countries":{"US":582,"IN":217,"GB":153,"DE":124,"BR":95,"other":585},"referrers":{"direct":570,"search":524,"social":333,"referral":249,"email":80},"top_pages":{"/":943,"/pricing":364,"/blog":565,"/docs":334,"/about":118,"other":516},"seq":1162972840}"#,
        ),
    ];

    #[test]
    fn four_weeks_stay_within_each_profile_bounds() {
        for profile in Profile::ALL {
            let (m, b) = (model(profile), profile.bounds());
            let start = m.tick_at(1_744_588_800_000);
            for tick in (start..start + 28 * 57_600).step_by(5) {
                let s = m.sample(tick, Scenario::Normal, false);
                let within = (b.active_users.0..=b.active_users.1).contains(&s.active_users)
                    && (b.page_views.0..=b.page_views.1).contains(&s.page_views)
                    && (b.avg_session_duration.0..=b.avg_session_duration.1)
                        .contains(&s.avg_session_duration);
                assert!(within, "{}: {s:?} outside {b:?}", profile.name());
            }
        }
    }

    #[test]
    fn same_seed_and_tick_give_the_same_sample() {
        let m = model(Profile::Blog);
        assert_eq!(
            m.sample(1000, Scenario::Normal, true),
            m.sample(1000, Scenario::Normal, true)
        );
        let other = Model { seed: 8, ..m };
        assert_ne!(
            m.sample(1000, Scenario::Normal, false),
            other.sample(1000, Scenario::Normal, false)
        );
    }

    #[test]
    fn a_day_of_traffic_behaves_like_traffic() {
        for profile in Profile::ALL {
            let m = model(profile);
            let samples = day(&m, Scenario::Normal);
            let users: Vec<f64> = samples.iter().map(|s| f64::from(s.active_users)).collect();
            let views: Vec<f64> = samples.iter().map(|s| f64::from(s.page_views)).collect();
            let lag1 = correlation(&users[..users.len() - 1], &users[1..]);
            assert!(
                lag1 >= 0.9,
                "{}: lag-1 autocorrelation {lag1}",
                profile.name()
            );
            let r = correlation(&views, &users);
            assert!(r >= 0.7, "{}: views~users correlation {r}", profile.name());
            for s in &samples {
                assert!(s.avg_session_duration.is_finite() && s.avg_session_duration > 0.0);
            }
            // The daily cycle: the busiest hour has 2-3x (and a bit) the quietest.
            let hourly: Vec<f64> = users
                .chunks(2400)
                .map(|h| h.iter().sum::<f64>() / h.len() as f64)
                .collect();
            let max = hourly.iter().cloned().fold(f64::MIN, f64::max);
            let min = hourly.iter().cloned().fold(f64::MAX, f64::min);
            assert!(
                (1.8..=4.5).contains(&(max / min)),
                "{}: peak/trough {}",
                profile.name(),
                max / min
            );
        }
    }

    #[test]
    fn the_blog_profile_keeps_the_seeds_magnitudes() {
        let samples = day(&model(Profile::Blog), Scenario::Normal);
        let mean =
            |f: fn(&Sample) -> f64| samples.iter().map(f).sum::<f64>() / samples.len() as f64;
        let users = mean(|s| f64::from(s.active_users));
        let views = mean(|s| f64::from(s.page_views));
        let session = mean(|s| s.avg_session_duration);
        assert!((60.0..=150.0).contains(&users), "{users}");
        assert!((120.0..=300.0).contains(&views), "{views}");
        assert!((1.0..=10.0).contains(&session), "{session}");
    }

    #[test]
    fn weekends_differ_from_weekdays() {
        let m = model(Profile::Shop);
        let mean_on = |day_start_ms: u64| {
            let start = m.tick_at(day_start_ms);
            (start..start + 57_600)
                .step_by(40)
                .map(|t| f64::from(m.sample(t, Scenario::Normal, false).active_users))
                .sum::<f64>()
        };
        let wednesday = mean_on(1_744_761_600_000);
        let saturday = mean_on(1_745_020_800_000);
        assert!(
            saturday > wednesday * 1.15,
            "shop: {saturday} vs {wednesday}"
        );
    }

    #[test]
    fn bursts_rise_and_decay_and_shorten_sessions() {
        // Find the largest burst in a week of the news profile and look around it.
        let m = model(Profile::News);
        let start = m.tick_at(1_744_588_800_000);
        let shape = Profile::News.shape();
        let (peak, gain) = (start..start + 7 * 57_600)
            .step_by(20)
            .map(|t| (t, m.burst(t as f64 * 1.5, &shape)))
            .fold((0, 1.0), |best, x| if x.1 > best.1 { x } else { best });
        assert!(gain > 1.5, "a week of news has a burst ({gain})");
        let at = |t: u64| m.sample(t, Scenario::Normal, false);
        let before = at(peak - 400);
        let after = at(peak + 2400);
        assert!(at(peak).active_users > before.active_users);
        assert!(
            at(peak).active_users > after.active_users,
            "it decays within the hour"
        );
        assert!(at(peak).avg_session_duration < before.avg_session_duration);
    }

    #[test]
    fn scenarios_shape_the_traffic() {
        let m = model(Profile::Blog);
        let tick = |secs: u64| m.tick_at(1_744_588_800_000 + secs * 1000);
        let users = |t: u64, s: Scenario| m.sample(t, s, false).active_users;
        // Outage: minutes 0-3 of every 10 are near zero.
        assert!(users(tick(90), Scenario::Outage) <= 5);
        assert!(users(tick(400), Scenario::Outage) > 30);
        // Spike: 15 s into every 5 minutes, about 4x.
        assert!(users(tick(15), Scenario::Spike) > 2 * users(tick(200), Scenario::Spike));
        // Flatline: the same values every tick.
        let a = m.sample(tick(10), Scenario::Flatline, false);
        let b = m.sample(tick(5000), Scenario::Flatline, false);
        assert_eq!(
            (a.active_users, a.page_views, a.avg_session_duration),
            (b.active_users, b.page_views, b.avg_session_duration)
        );
        // Ramp: climbs through each 10 minutes.
        assert!(users(tick(590), Scenario::Ramp) > 10 * users(tick(5), Scenario::Ramp));
    }

    #[test]
    fn breakdowns_sum_to_their_totals() {
        let m = model(Profile::News);
        for t in (0..200_000u64).step_by(997) {
            let s = m.sample(1_162_972_840 + t, Scenario::Normal, true);
            let d = s.details.unwrap();
            let sum = |parts: &[(Label, u32)]| parts.iter().map(|p| p.1).sum::<u32>();
            assert_eq!(sum(&d.devices), s.active_users);
            assert_eq!(sum(d.countries.as_deref().unwrap()), s.active_users);
            assert_eq!(sum(&d.referrers), s.active_users);
            assert_eq!(sum(&d.top_pages), s.page_views);
            assert!(d.new_visitors <= s.active_users);
            assert!((0.0..=1.0).contains(&d.bounce_rate));
        }
    }

    #[test]
    fn poisson_counts_have_the_right_mean() {
        for mean in [0.5, 4.0, 25.0, 200.0] {
            let n = 20_000;
            let total: u64 = (0..n)
                .map(|i| u64::from(poisson(mean, hash(1, 2, i), hash(1, 3, i))))
                .sum();
            let got = total as f64 / n as f64;
            assert!(
                (got - mean).abs() < mean.sqrt() * 0.05 + 0.02,
                "mean {mean}: {got}"
            );
        }
    }
}
