//! History ranges: `from`, `to`, `last` and `step` read into the ticks a history
//! returns, at most [`MAX_POINTS`] of them.

use crate::simulator::Model;

use super::{Invalid, MAX_POINTS, duration_ms, get, invalid, with_unit};

/// `step` at most, in milliseconds: a day.
const MAX_STEP_MS: u64 = 86_400_000;

const TIME_FORMATS: &str = "Use an RFC 3339 time (2025-04-12T12:00:00Z) or Unix milliseconds.";

/// A history request: ticks `first..=last` every `step` ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub first: u64,
    pub last: u64,
    pub step: u64,
}

impl Range {
    /// The ticks of `from_ms..=to_ms` that sit on the grid of `step` ticks, so that charts
    /// from different requests line up.
    fn on_grid(from_ms: u64, to_ms: u64, interval: u64, step: u64) -> Range {
        Range {
            first: from_ms.div_ceil(interval).div_ceil(step) * step,
            last: to_ms / interval / step * step,
            step,
        }
    }

    /// How many ticks the range holds.
    pub fn points(&self) -> u64 {
        if self.last >= self.first {
            (self.last - self.first) / self.step + 1
        } else {
            0
        }
    }

    pub fn ticks(&self) -> impl Iterator<Item = u64> + use<> {
        (self.first..=self.last).step_by(self.step as usize)
    }
}

/// Parses a history range. Any two of `from`, `to` and `last` define it, and all three
/// must agree (so a Postman import that sends every parameter's example works); `to`
/// defaults to the latest sample, `last` to 15 minutes.
pub fn range(pairs: &[(String, String)], model: &Model, latest: u64) -> Result<Range, Invalid> {
    let get = |name| get(pairs, name);
    let interval = model.interval_ms();
    let latest_ms = latest * interval;
    let time = |name: &'static str| {
        get(name)
            .map(|v| time(v).ok_or_else(|| invalid(name, TIME_FORMATS)))
            .transpose()
    };
    let (from, to) = (time("from")?, time("to")?);
    let last = get("last")
        .map(|v| {
            with_unit(v).ok_or_else(|| {
                invalid(
                    "last",
                    "Use a duration with a unit, such as 90s, 15m, 6h or 1d.",
                )
            })
        })
        .transpose()?;
    if let Some(from) = from.filter(|&ms| ms > latest_ms) {
        return Err(invalid(
            "from",
            &format!(
                "from ({}) is in the future; the latest sample is at {}.",
                crate::sample::timestamp(from as i64),
                crate::sample::timestamp(latest_ms as i64)
            ),
        ));
    }
    // Any two of from, to and last define the range; all three must agree.
    let (from_ms, to_ms, end) = match (from, to, last) {
        (Some(from), Some(to), Some(last)) if to.checked_sub(from) != Some(last) => {
            return Err(invalid(
                "last",
                &format!(
                    "from, to and last disagree: to is {} ms after from, last is {last} ms. \
                     Send any two of them.",
                    to as i128 - from as i128
                ),
            ));
        }
        (Some(from), Some(to), _) => (from, to, "to"),
        (Some(from), None, Some(last)) => (from, from.saturating_add(last), "last"),
        (Some(from), None, None) => (from, latest_ms, "to"),
        (None, to, last) => {
            let to = to.unwrap_or(latest_ms);
            (to.saturating_sub(last.unwrap_or(15 * 60 * 1000)), to, "to")
        }
    };
    if to_ms > latest_ms + interval {
        return Err(invalid(
            end,
            &format!(
                "The range ends in the future; the latest sample is at {}.",
                crate::sample::timestamp(latest_ms as i64)
            ),
        ));
    }
    let to_ms = to_ms.min(latest_ms);
    if from_ms > to_ms {
        return Err(invalid("from", "from is after to."));
    }
    // At most a day: a longer step puts the grid's first point beyond the range (in the
    // year 68241, once), and a day covers 27 years in 10 000 points.
    let step = match get("step") {
        Some(v) => duration_ms(v)
            .filter(|ms| *ms > 0 && ms % interval == 0 && *ms <= MAX_STEP_MS)
            .map(|ms| ms / interval)
            .ok_or_else(|| {
                invalid(
                    "step",
                    &format!(
                        "Use a multiple of the interval, {interval} ms, up to 1d (e.g. \
                         step={}ms).",
                        interval * 10
                    ),
                )
            })?,
        None => 1,
    };
    let range = Range::on_grid(from_ms, to_ms, interval, step);
    let points = range.points();
    if points > MAX_POINTS {
        // The smallest step that fits: none below `span / MAX_POINTS` can, and the grid
        // shifts with the step, so the first that fits is found by trying.
        let span = (to_ms / interval).saturating_sub(from_ms.div_ceil(interval));
        let fits = (span / MAX_POINTS).max(step + 1)..;
        let smallest = fits
            .into_iter()
            .find(|&s| Range::on_grid(from_ms, to_ms, interval, s).points() <= MAX_POINTS)
            .unwrap_or(span.max(1));
        let advice = if smallest * interval <= MAX_STEP_MS {
            format!(
                "Narrow it, or raise step to at least {} ms.",
                smallest * interval
            )
        } else {
            "Narrow it: even a step of 1d gives more.".to_string()
        };
        return Err(invalid(
            "step",
            &format!(
                "This range holds {points} points; at most {MAX_POINTS} are returned. {advice}"
            ),
        ));
    }
    Ok(range)
}

/// An RFC 3339 time or Unix milliseconds.
fn time(v: &str) -> Option<u64> {
    if let Ok(ms) = v.parse::<u64>() {
        return Some(ms);
    }
    let t = chrono::DateTime::parse_from_rfc3339(v).ok()?;
    u64::try_from(t.timestamp_millis()).ok()
}
