//! What a client can ask for in the query string, parsed and checked in one place for
//! REST, history and the streams (WebSocket and SSE) alike.
//!
//! | parameter | meaning |
//! |---|---|
//! | `scenario=spike` | this request's or connection's scenario (others are unaffected) |
//! | `profile=news` | this request's or connection's site profile (others are unaffected) |
//! | `fields=active_users,devices` or `fields=all` | which fields each sample carries |
//! | `seq=1` | add the sequence number (`"seq"`) to each sample |
//! | `every=N` or `interval_ms=M` | streams: only every N-th tick (M a multiple of the interval) |
//! | `since=SEQ` | streams: first replay every sample after SEQ (at most 10 000), then go live |
//! | `from`, `to`, `last`, `step` | history: the range and the spacing of the points |
//! | `chaos=drop:30s,gap:0.1` or `chaos=off` | delivery faults for this client (see `chaos`) |
//! | `chaos_seed=N` | the seed of those faults' decisions, to replay a run |
//!
//! Unknown parameters are ignored (cache-busters such as `_=1700000000` are common); a
//! known parameter with a bad value is an error that lists what is allowed.

mod encode;
mod faults;
mod history;
mod query;

use crate::chaos::{self, Chaos};
use crate::http::{self, Reply, printable};
use crate::sample::{FIELDS, Fields};
use crate::simulator::{self, Model, Profile, Scenario};

pub use faults::faults;
pub use history::{Range, range};
pub use query::{pairs, query};

/// At most this many samples are replayed on resume or returned by one history request.
pub const MAX_POINTS: u64 = 10_000;
/// `every` at most: one sample in a thousand ticks.
const MAX_EVERY: u64 = 1000;

/// A query parameter with a value we cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub parameter: &'static str,
    pub message: String,
}

impl Invalid {
    /// The 400 that names the parameter and says what to send instead.
    pub fn reply(&self) -> Reply {
        http::error(
            400,
            "bad_query",
            &self.message,
            &[("parameter", self.parameter)],
        )
    }
}

/// Options for samples, over REST or WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The site, as an index into `SITES` (0 in sim mode).
    pub site: usize,
    pub profile: Profile,
    pub scenario: Scenario,
    pub fields: Fields,
    pub seq: bool,
    pub every: u64,
    pub since: Option<u64>,
    /// Delivery faults, from `chaos=` or the server's `CHAOS`.
    pub chaos: Option<Chaos>,
    /// Parameters no request understands: named back to the client.
    pub ignored: Vec<String>,
    /// Why a `Last-Event-ID` could not be resumed from (see [`Options::resume`]): told
    /// in the welcome.
    pub resume_ignored: Option<String>,
}

impl Options {
    /// Resumes from `id`, an `EventSource`'s `Last-Event-ID`, when the query has no
    /// `since`. EventSource sends it back by itself on every reconnect and gives up for
    /// good on an error, so an id that cannot be resumed from (not a seq, or ahead of
    /// `latest`, as after `INTERVAL_MS` changed) starts the live stream, with the reason
    /// in `resume_ignored`, instead of a 400. A `since` a person typed is checked
    /// strictly ([`parse`]).
    pub fn resume(&mut self, id: &str, latest: u64) {
        const LIVE: &str = "the stream starts live, with the latest sample; \
                            GET /api/analytics/history has the samples before it.";
        let why = match id.parse::<u64>() {
            Ok(since) if since <= latest => {
                self.since = Some(since);
                return;
            }
            Ok(since) => format!(
                "Last-Event-ID {since} is ahead of the latest sample, {latest} (the server's \
                 INTERVAL_MS may have changed): {LIVE}"
            ),
            Err(_) => format!(
                "Last-Event-ID \"{}\" is not a sample's seq: {LIVE}",
                printable(id)
            ),
        };
        self.resume_ignored = Some(why);
    }

    /// The ticks a client resuming with `since` missed, up to `latest`: at most the last
    /// 10 000.
    pub fn replay(&self, latest: u64) -> Option<std::ops::RangeInclusive<u64>> {
        self.since
            .map(|since| (since + 1).max((latest + 1).saturating_sub(MAX_POINTS))..=latest)
    }
}

/// Parses the sample options. `latest` is the newest published tick; `defaults` is the
/// server's `CHAOS` and `CHAOS_SEED`; `sites`, live mode's `SITES` (none in sim mode).
pub fn parse(
    pairs: &[(String, String)],
    model: &Model,
    sites: &[String],
    defaults: &chaos::Defaults,
    latest: u64,
) -> Result<Options, Invalid> {
    let get = |name| get(pairs, name);
    let mut options = Options {
        site: 0,
        profile: model.profile,
        scenario: model.scenario,
        fields: Fields::ORIGINAL,
        seq: false,
        every: 1,
        since: None,
        chaos: None,
        ignored: ignored(pairs),
        resume_ignored: None,
    };
    // One of a fixed set of names, or an error that lists them.
    fn one_of<T: Copy>(
        parameter: &'static str,
        all: &[T],
        name: fn(T) -> &'static str,
        v: &str,
    ) -> Result<T, Invalid> {
        simulator::parse(all, name, v).ok_or_else(|| Invalid {
            parameter,
            message: format!(
                "Unknown {parameter} \"{}\". Use one of: {}.",
                printable(v),
                simulator::names(all, name)
            ),
        })
    }
    if let Some(v) = get("site") {
        if sites.is_empty() {
            return Err(invalid(
                "site",
                "site= picks one of live mode's SITES; this server simulates one site \
                 (MODE=sim). Send the request without it.",
            ));
        }
        options.site = sites
            .iter()
            .position(|s| s.eq_ignore_ascii_case(v))
            .ok_or_else(|| {
                invalid(
                    "site",
                    &format!(
                        "Unknown site \"{}\". Use one of: {}.",
                        printable(v),
                        sites.join(", ")
                    ),
                )
            })?;
    }
    if !sites.is_empty() {
        for parameter in ["profile", "scenario"] {
            if get(parameter).is_some() {
                return Err(invalid(
                    parameter,
                    &format!(
                        "{parameter}= shapes simulated traffic; this server counts real \
                         visitors (MODE=live). Send the request without it."
                    ),
                ));
            }
        }
    }
    if let Some(v) = get("profile") {
        options.profile = one_of("profile", &Profile::ALL, Profile::name, v)?;
    }
    if let Some(v) = get("scenario") {
        options.scenario = one_of("scenario", &Scenario::ALL, Scenario::name, v)?;
    }
    if let Some(v) = get("fields") {
        // Live mode has no geolocation: no countries.
        let known: Vec<&str> = FIELDS
            .into_iter()
            .filter(|&f| sites.is_empty() || f != "countries")
            .collect();
        let known = known.join(", ");
        options.fields = Fields::parse(v).map_err(|name| Invalid {
            parameter: "fields",
            message: match name.trim_matches([',', ' ']) {
                "" => {
                    format!("No field named. Use a comma-separated list of: {known}, or \"all\".")
                }
                "all" => format!(
                    "\"all\" stands alone: send fields=all, or a comma-separated list of: {known}."
                ),
                _ => format!(
                    "Unknown field \"{}\". Use a comma-separated list of: {known}, or \"all\".",
                    printable(&name)
                ),
            },
        })?;
        // `all` stays valid: it takes what there is.
        if !sites.is_empty() && options.fields.names().contains(&"countries") {
            if v.trim() != "all" {
                return Err(invalid(
                    "fields",
                    "countries are not counted in live mode: there is no geolocation. Send \
                     the request without it.",
                ));
            }
            options.fields = options.fields.without("countries");
        }
    }
    if let Some(v) = get("seq") {
        options.seq = match v {
            "1" | "true" | "" => true,
            "0" | "false" => false,
            _ => {
                return Err(invalid(
                    "seq",
                    "Use seq=1 to add sequence numbers, or seq=0.",
                ));
            }
        };
    }
    let interval = model.interval_ms();
    if let Some(v) = get("every") {
        options.every = v
            .parse()
            .ok()
            .filter(|n| (1..=MAX_EVERY).contains(n))
            .ok_or_else(|| {
                invalid(
                    "every",
                    &format!("Use every=N with N from 1 to {MAX_EVERY}."),
                )
            })?;
    }
    if let Some(v) = get("interval_ms") {
        let every = v
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms > 0 && ms % interval == 0 && ms / interval <= MAX_EVERY)
            .map(|ms| ms / interval)
            .ok_or_else(|| {
                invalid(
                    "interval_ms",
                    &format!(
                        "Use a multiple of the server's interval, {interval} ms, up to {} ms.",
                        interval * MAX_EVERY
                    ),
                )
            })?;
        if get("every").is_some() && every != options.every {
            return Err(invalid(
                "interval_ms",
                "every and interval_ms disagree; send one of them.",
            ));
        }
        options.every = every;
    }
    if let Some(v) = get("since") {
        let since = v.parse::<u64>().map_err(|_| {
            invalid(
                "since",
                "Use since=SEQ with the \"seq\" of the last sample you received.",
            )
        })?;
        if since > latest {
            return Err(invalid(
                "since",
                &format!("since={since} is in the future: the latest sample is {latest}."),
            ));
        }
        options.since = Some(since);
    }
    let faults = match get("chaos") {
        Some(v) => faults(v)
            .map_err(|why| invalid("chaos", &format!("{why}. Use chaos={}.", chaos::GRAMMAR)))?,
        None => defaults.faults,
    };
    let seed = match get("chaos_seed") {
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            invalid(
                "chaos_seed",
                "Use chaos_seed=N with N from 0 to 18446744073709551615 (the seed a \
                 welcome or an X-Chaos-Seed header reported, to replay that run).",
            )
        })?),
        None => defaults.seed,
    };
    options.chaos = faults.map(|faults| Chaos {
        faults,
        seed: seed.unwrap_or_else(Chaos::random_seed),
    });
    Ok(options)
}

/// Every parameter some request understands. Others are ignored, and named back to the
/// client (`X-Ignored-Parameters`, or the welcome's `ignored`): harmless for cache-busters,
/// a hint for a typo such as `scenaro`.
const KNOWN: [&str; 14] = [
    "site",
    "profile",
    "scenario",
    "fields",
    "seq",
    "every",
    "interval_ms",
    "since",
    "from",
    "to",
    "last",
    "step",
    "chaos",
    "chaos_seed",
];

/// The names of the parameters in `pairs` that no request understands.
pub fn ignored(pairs: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in pairs {
        if !name.is_empty() && !KNOWN.contains(&name.as_str()) && !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// The value of the last `name=` parameter.
fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn invalid(parameter: &'static str, message: &str) -> Invalid {
    Invalid {
        parameter,
        message: message.to_string(),
    }
}

/// `90s`, `15m`, `6h`, `1d`, `500ms`, or plain milliseconds.
fn duration_ms(v: &str) -> Option<u64> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// A duration that names its unit, in milliseconds: `last=30` or `drop:30` read as 30 ms
/// would be a silent mistake.
pub fn with_unit(v: &str) -> Option<u64> {
    duration_ms(v).filter(|_| v.ends_with(|c: char| c.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::Profile;
    use std::time::Duration;

    fn model() -> Model {
        Model {
            seed: 1,
            interval: Duration::from_millis(1500),
            profile: Profile::Blog,
            scenario: Scenario::Normal,
            utc_offset_hours: 0.0,
        }
    }

    fn feed() -> crate::feed::Feed {
        crate::feed::Feed {
            model: model(),
            live: None,
        }
    }

    fn opts(q: &str) -> Result<Options, Invalid> {
        parse(
            &pairs(Some(q)),
            &model(),
            &[],
            &chaos::Defaults::default(),
            1_000_000,
        )
    }

    #[test]
    fn sites_are_live_modes_and_profiles_the_simulators() {
        let live = |q: &str| {
            let sites = ["a.example".to_string(), "b.example".to_string()];
            parse(&pairs(Some(q)), &model(), &sites, &Default::default(), 10)
        };
        assert_eq!(live("").unwrap().site, 0);
        assert_eq!(live("site=B.example").unwrap().site, 1);
        let e = live("site=c.example").unwrap_err();
        assert!(e.message.contains("a.example, b.example"), "{}", e.message);
        for q in ["profile=shop", "scenario=spike"] {
            let e = live(q).unwrap_err();
            assert!(e.message.contains("MODE=live"), "{q}: {}", e.message);
        }
        let e = live("fields=active_users,countries").unwrap_err();
        assert!(e.message.contains("geolocation"), "{}", e.message);
        let e = live("fields=visits").unwrap_err();
        assert!(!e.message.contains("countries"), "{}", e.message);
        let all = live("fields=all").unwrap().fields.names();
        assert!(
            !all.contains(&"countries"),
            "all takes what there is: {all:?}"
        );
        assert!(all.contains(&"referrers"), "{all:?}");
        assert!(
            opts("fields=countries").is_ok(),
            "the simulator has countries"
        );
        let e = opts("site=a.example").unwrap_err();
        assert_eq!(e.parameter, "site");
        assert!(e.message.contains("MODE=sim"));
    }

    fn hist(q: &str) -> Result<Range, Invalid> {
        range(&pairs(Some(q)), &model(), 1_000_000)
    }

    #[test]
    fn defaults_are_the_shared_stream() {
        let o = opts("").unwrap();
        assert!(o.is_shared(&model()));
        assert_eq!((o.every, o.since), (1, None));
        assert!(opts("_=123&utm_source=x").unwrap().is_shared(&model()));
    }

    #[test]
    fn options_are_read_and_decoded() {
        let o = opts("scenario=SPIKE&fields=active_users%2Cdevices&seq=1&every=4&since=999990")
            .unwrap();
        assert_eq!(o.scenario, Scenario::Spike);
        assert_eq!(o.fields, Fields::parse("active_users,devices").unwrap());
        assert!(o.seq && !o.is_shared(&model()));
        assert_eq!((o.every, o.since), (4, Some(999_990)));
        assert_eq!(opts("interval_ms=6000").unwrap().every, 4);
        assert_eq!(opts("interval_ms=6000&every=4").unwrap().every, 4);
        // Another profile is this client's own series, not the shared bytes.
        let news = opts("profile=News").unwrap();
        assert!(news.profile == Profile::News && !news.is_shared(&model()));
        assert_ne!(
            news.sample(&feed(), 5),
            opts("").unwrap().sample(&feed(), 5)
        );
    }

    /// A `Last-Event-ID` is resumed from when it can be, and otherwise starts the live
    /// stream saying why; `since` in the query keeps its 400.
    #[test]
    fn a_last_event_id_that_cannot_be_resumed_from_is_ignored_with_a_reason() {
        let resumed = |id: &str| {
            let mut o = opts("").unwrap();
            o.resume(id, 1_000_000);
            (o.since, o.resume_ignored.unwrap_or_default())
        };
        assert_eq!(resumed("999990"), (Some(999_990), String::new()));
        assert_eq!(resumed("1000000"), (Some(1_000_000), String::new()));
        let (since, why) = resumed("1000001");
        assert!(
            since.is_none() && why.contains("ahead of the latest sample"),
            "{why}"
        );
        for id in ["99999999999999999999999", "abc", &"9x".repeat(1000)] {
            let (since, why) = resumed(id);
            assert!(
                since.is_none() && why.contains("is not a sample's seq"),
                "{why}"
            );
            assert!(why.len() < 300, "{why}");
        }
        assert_eq!(opts("since=1000001").unwrap_err().parameter, "since");
        assert_eq!(
            opts("since=99999999999999999999999").unwrap_err().parameter,
            "since"
        );
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        for (q, parameter, hint) in [
            (
                "scenario=boom",
                "scenario",
                "normal, spike, outage, flatline, ramp",
            ),
            ("profile=wiki", "profile", "blog, shop, news"),
            ("fields=visits", "fields", "active_users"),
            ("fields=all,devices", "fields", "\"all\" stands alone"),
            ("fields=,", "fields", "No field named"),
            ("every=0", "every", "1 to 1000"),
            ("every=x", "every", "1 to 1000"),
            ("interval_ms=1000", "interval_ms", "1500 ms"),
            ("interval_ms=3000&every=3", "interval_ms", "disagree"),
            ("since=abc", "since", "seq"),
            ("since=1000001", "since", "future"),
            ("seq=maybe", "seq", "seq=1"),
        ] {
            let e = opts(q).unwrap_err();
            assert_eq!(e.parameter, parameter, "{q}");
            assert!(e.message.contains(hint), "{q}: {}", e.message);
        }
    }

    #[test]
    fn chaos_is_read_in_its_canonical_form_or_explained() {
        for (q, canonical) in [
            ("chaos=drop:30s", "drop:30s"),
            ("chaos=gap:0.1,drop:30000ms", "drop:30s,gap:0.1"),
            (
                "chaos=latency:200ms..1s,stall:10s/60s:latest",
                "latency:200ms..1s,stall:10s/1m:latest",
            ),
            (
                "chaos=error:0.2:500,garbage:0.01,dup:0.05,reorder:1",
                "dup:0.05,reorder:1,error:0.2:500,garbage:0.01",
            ),
            ("chaos=error:1,close:1m", "close:1m,error:1"),
        ] {
            let c = opts(q).unwrap().chaos.expect(q);
            assert_eq!(c.faults.to_string(), canonical, "{q}");
        }
        // Off: absent, `off`, or nothing but zeros; a seed alone turns nothing on.
        for q in ["", "chaos=off", "chaos=gap:0", "chaos_seed=5"] {
            assert_eq!(opts(q).unwrap().chaos, None, "{q}");
        }
        assert_eq!(
            opts("chaos=gap:0.5&chaos_seed=42")
                .unwrap()
                .chaos
                .unwrap()
                .seed,
            42
        );
        // Without a seed, one is drawn, small enough for JavaScript.
        let seed = opts("chaos=gap:0.5").unwrap().chaos.unwrap().seed;
        assert!(seed > 0 && seed <= u64::from(u32::MAX));
        for (q, hint) in [
            ("chaos=", "no value"),
            ("chaos=on", "no value"),
            ("chaos=boom:1", "Unknown fault"),
            ("chaos=drop:30", "duration"),
            ("chaos=drop:10ms", "100ms to 24h"),
            ("chaos=drop:2d", "100ms to 24h"),
            ("chaos=gap:0.1,gap:0.2", "twice"),
            ("chaos=gap:1.5", "from 0 to 1"),
            ("chaos=gap:NaN", "from 0 to 1"),
            ("chaos=latency:31s", "up to 30s"),
            ("chaos=latency:1s..200ms", "range"),
            ("chaos=stall:60s/10s", "shorter"),
            ("chaos=stall:10s", "PAUSE/PERIOD"),
            ("chaos=stall:10s/60s:oldest", "latest"),
            ("chaos=error:0.2:404", "500, 502, 503, 504"),
            ("chaos=drop:30s&chaos_seed=x", "chaos_seed=N"),
        ] {
            let e = opts(q).unwrap_err();
            assert!(e.parameter.starts_with("chaos"), "{q}");
            assert!(e.message.contains(hint), "{q}: {}", e.message);
            if e.parameter == "chaos" {
                assert!(
                    e.message.contains("drop:30s, close:60s"),
                    "{q}: the grammar"
                );
            }
        }
    }

    #[test]
    fn the_server_default_applies_unless_the_client_says_otherwise() {
        let defaults = chaos::Defaults {
            faults: faults("gap:0.5").unwrap(),
            seed: Some(9),
        };
        let with = |q| {
            parse(&pairs(Some(q)), &model(), &[], &defaults, 100)
                .unwrap()
                .chaos
        };
        assert_eq!(with("").unwrap().faults.to_string(), "gap:0.5");
        assert_eq!(with("").unwrap().seed, 9);
        assert_eq!(with("chaos=drop:5s").unwrap().faults.to_string(), "drop:5s");
        assert_eq!(with("chaos_seed=3").unwrap().seed, 3);
        assert_eq!(with("chaos=off"), None);
    }

    #[test]
    fn history_ranges() {
        // Default: the last 15 minutes, one point per tick.
        let r = hist("").unwrap();
        assert_eq!((r.last, r.step), (1_000_000, 1));
        assert_eq!(r.ticks().count(), 601);
        let r = hist("last=1m&step=15s").unwrap();
        assert_eq!(r.step, 10);
        assert!(r.ticks().all(|t| t % 10 == 0));
        assert_eq!(r.ticks().count(), 5);
        let from = (999_000 * 1500).to_string();
        let r = hist(&format!("from={from}&to=1970-01-18T08:40:00Z")).unwrap();
        assert_eq!((r.first, r.last), (999_000, 1_000_000));
        assert_eq!(hist("last=1d").unwrap_err().parameter, "step");
        assert!(hist("last=1d").unwrap_err().message.contains("at least"));
        assert!(hist("last=1d&step=9s").is_ok());
        assert_eq!(hist("to=2999-01-01T00:00:00Z").unwrap_err().parameter, "to");
        assert_eq!(
            hist("from=1500000000&to=1400000000").unwrap_err().parameter,
            "from"
        );
        assert_eq!(hist("step=1s").unwrap_err().parameter, "step");
        // 47 years: no step of a day or less fits.
        let e = range(&pairs(Some("from=0")), &model(), 1_000_000_000_000).unwrap_err();
        assert!(
            e.parameter == "step" && e.message.contains("Narrow it:"),
            "{e:?}"
        );
        // A step longer than a day is refused, rather than a grid starting in year 68241.
        assert_eq!(hist("step=580924371h").unwrap_err().parameter, "step");
        assert!(hist("step=1d").is_ok() && hist("step=25h").is_err());
        assert_eq!(hist("last=soon").unwrap_err().parameter, "last");
        let e = hist("last=30").unwrap_err();
        assert!(e.parameter == "last" && e.message.contains("unit"), "{e:?}");
        assert!(hist("last=30s").is_ok() && hist("last=500ms").is_ok());
        let e = hist("from=2999-01-01T00:00:00Z").unwrap_err();
        assert!(
            e.parameter == "from" && e.message.contains("future"),
            "{e:?}"
        );
        assert_eq!(hist("from=yesterday").unwrap_err().parameter, "from");
        // Any two of from, to and last; all three when they agree.
        let to = "1970-01-18T08:40:00Z";
        let both = hist(&format!("from={from}&to={to}")).unwrap();
        assert_eq!(hist(&format!("from={from}&last=1500s")).unwrap(), both);
        assert_eq!(hist(&format!("to={to}&last=1500s")).unwrap(), both);
        assert_eq!(
            hist(&format!("from={from}&to={to}&last=25m")).unwrap(),
            both
        );
        let e = hist(&format!("from={from}&to={to}&last=15m")).unwrap_err();
        assert!(
            e.parameter == "last" && e.message.contains("any two"),
            "{e:?}"
        );
        let e = hist(&format!("from={from}&last=1d")).unwrap_err();
        assert!(
            e.parameter == "last" && e.message.contains("future"),
            "{e:?}"
        );
    }

    /// The step the "too many points" error suggests works, and no smaller one does
    /// (`last=1d&step=3s` needs 9000 ms, not twice that).
    #[test]
    fn the_suggested_step_is_the_smallest_that_fits() {
        let suggested = |q: &str| -> u64 {
            let e = hist(q).unwrap_err();
            assert_eq!(e.parameter, "step", "{q}");
            let ms = e.message.split("at least ").nth(1).unwrap();
            ms.trim_end_matches(" ms.").parse().unwrap()
        };
        assert_eq!(suggested("last=1d&step=3s"), 9000);
        let from = (795_000 * 1500).to_string();
        assert_eq!(suggested(&format!("from={from}&step=30s")), 31_500);
        for q in [
            "last=1d",
            "last=2d&step=6s",
            "last=7d&step=60s",
            "last=30d&step=45s",
            "last=1d&step=7500ms",
        ] {
            let ms = suggested(q);
            let with = |step: u64| {
                let mut parts: Vec<String> = q
                    .split('&')
                    .filter(|p| !p.starts_with("step="))
                    .map(str::to_string)
                    .collect();
                parts.push(format!("step={step}ms"));
                parts.join("&")
            };
            assert!(hist(&with(ms)).is_ok(), "{q}: {ms} ms does not fit");
            assert!(
                hist(&with(ms - 1500)).is_err(),
                "{q}: {} ms fits too",
                ms - 1500
            );
        }
    }

    #[test]
    fn unknown_parameters_are_named() {
        let p = pairs(Some("scenaro=spike&_=123&fields=all&_=9&scenaro=x"));
        assert_eq!(ignored(&p), ["scenaro", "_"]);
        assert!(ignored(&pairs(Some("last=5m&step=3s"))).is_empty());
    }

    #[test]
    fn queries_are_split_and_decoded() {
        assert_eq!(query("/api?a=1&b=2#f"), Some("a=1&b=2"));
        assert_eq!(query("/api"), None);
        assert_eq!(
            pairs(Some("a=x%20y&b&c=1+2&d=%zz")),
            vec![
                ("a".into(), "x y".into()),
                ("b".into(), "".into()),
                ("c".into(), "1 2".into()),
                ("d".into(), "%zz".into())
            ]
        );
    }
}
