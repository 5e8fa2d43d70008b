//! Prints a simulated day as an ASCII chart (active users, one bar per hour) for each
//! profile, and the day's statistics over every 1.5 s tick. The README's chart and
//! figures are this program's output.
//!
//! ```text
//! cargo run --example day                 # Monday 2025-04-14, UTC, default seed
//! cargo run --example day -- 2025-04-19   # another day (a Saturday)
//! ```

use std::time::Duration;

use realtime_analytics_backend::config::DEFAULT_SEED;
use realtime_analytics_backend::simulator::{Model, Profile, Scenario, correlation};

fn main() {
    let day = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "2025-04-14".into());
    let start = chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d")
        .unwrap_or_else(|e| panic!("{day}: {e} (expected YYYY-MM-DD)"))
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis() as u64)
        .unwrap_or_default();
    for profile in Profile::ALL {
        let model = Model {
            seed: DEFAULT_SEED,
            interval: Duration::from_millis(1500),
            profile,
            scenario: Scenario::Normal,
            utc_offset_hours: 0.0,
        };
        let first = model.tick_at(start);
        // Mean active users over each half hour (1200 ticks).
        let bars: Vec<f64> = (0..48)
            .map(|h| {
                let ticks = first + h * 1200..first + (h + 1) * 1200;
                let sum: u64 = ticks
                    .step_by(10)
                    .map(|t| u64::from(model.sample(t, Scenario::Normal, false).active_users))
                    .sum();
                sum as f64 / 120.0
            })
            .collect();
        let samples: Vec<_> = (first..first + 57_600)
            .map(|t| model.sample(t, Scenario::Normal, false))
            .collect();
        let users: Vec<f64> = samples.iter().map(|s| f64::from(s.active_users)).collect();
        let views: Vec<f64> = samples.iter().map(|s| f64::from(s.page_views)).collect();
        let max = bars.iter().cloned().fold(0.0, f64::max);
        let min = bars.iter().cloned().fold(f64::MAX, f64::min);
        println!(
            "{} profile, {day} (UTC): lag-1 autocorrelation of active_users {:.4}, \
             correlation of page_views with active_users {:.3}, busiest/quietest half hour {:.1}x",
            profile.name(),
            correlation(&users[..users.len() - 1], &users[1..]),
            correlation(&views, &users),
            max / min,
        );
        for (i, users) in bars.iter().enumerate().step_by(2) {
            let users = &((users + bars[i + 1]) / 2.0);
            let width = (users / max * 50.0).round() as usize;
            println!("  {:02}:00 {:>6.0} {}", i / 2, users, "#".repeat(width));
        }
        println!();
    }
}
