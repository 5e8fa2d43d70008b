//! The chaos grammar: `chaos=drop:30s,gap:0.1` read into [`Faults`] (see `chaos` for
//! what each fault does).

use std::time::Duration;

use crate::chaos::{Faults, Stall};
use crate::http::printable;

use super::with_unit;

/// Parses a `chaos=` value (or `CHAOS`): `None` for `off` or faults that are all zero.
/// The error says what is wrong with it; the caller adds the grammar.
pub fn faults(spec: &str) -> Result<Option<Faults>, String> {
    if spec == "off" {
        return Ok(None);
    }
    let mut f = Faults::default();
    let mut seen: Vec<&str> = Vec::new();
    for part in spec.split(',') {
        let (name, args) = part
            .split_once(':')
            .ok_or_else(|| format!("Fault \"{}\" has no value", printable(part)))?;
        if seen.contains(&name) {
            return Err(format!("{} is given twice", printable(name)));
        }
        seen.push(name);
        let bad = |allowed: &str| format!("\"{}\": {allowed}", printable(part));
        let between = |v: &str, lo: Duration, hi: Duration| {
            with_unit(v)
                .map(Duration::from_millis)
                .filter(|d| (lo..=hi).contains(d))
        };
        let chance = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| bad("use a chance from 0 to 1, such as 0.1"))
        };
        match name {
            "drop" | "close" => {
                let d = between(
                    args,
                    Duration::from_millis(100),
                    Duration::from_secs(86_400),
                )
                .ok_or_else(|| bad("use a duration from 100ms to 24h, such as 30s"))?;
                *(if name == "drop" {
                    &mut f.drop
                } else {
                    &mut f.close
                }) = Some(d);
            }
            "latency" => {
                let (lo, hi) = args.split_once("..").unwrap_or((args, args));
                let max = Duration::from_secs(30);
                let range = between(lo, Duration::ZERO, max)
                    .zip(between(hi, Duration::ZERO, max))
                    .filter(|(lo, hi)| lo <= hi);
                f.latency = Some(range.ok_or_else(|| {
                    bad("use a delay up to 30s, such as 400ms, or a range such as 200ms..1s")
                })?);
            }
            "stall" => {
                let (pause, rest) = args.split_once('/').unwrap_or((args, ""));
                let (period, mode) = rest.split_once(':').unwrap_or((rest, ""));
                let hour = Duration::from_secs(3600);
                let stall = between(pause, Duration::from_millis(1), hour)
                    .zip(between(period, Duration::from_millis(1), hour))
                    .filter(|(pause, period)| pause < period)
                    .zip(match mode {
                        "" => Some(false),
                        "latest" => Some(true),
                        _ => None,
                    })
                    .map(|((pause, period), latest)| Stall {
                        pause,
                        period,
                        latest,
                    });
                f.stall = Some(stall.ok_or_else(|| {
                    bad(
                        "use PAUSE/PERIOD with the pause shorter, up to 1h, such as 10s/60s, \
                         or 10s/60s:latest",
                    )
                })?);
            }
            "gap" => f.gap = chance(args)?,
            "dup" => f.dup = chance(args)?,
            "reorder" => f.reorder = chance(args)?,
            "garbage" => f.garbage = chance(args)?,
            "error" => {
                let (p, status) = args.split_once(':').unwrap_or((args, "503"));
                let status = status
                    .parse()
                    .ok()
                    .filter(|s| [500, 502, 503, 504].contains(s))
                    .ok_or_else(|| bad("the status is one of 500, 502, 503, 504"))?;
                f.error = Some((chance(p)?, status));
            }
            _ => return Err(format!("Unknown fault \"{}\"", printable(name))),
        }
    }
    Ok((!f.is_off()).then_some(f))
}
