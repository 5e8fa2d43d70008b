//! The generator: the one thread that ticks.
//!
//! It sleeps until the next tick boundary of the wall clock (`tick * INTERVAL_MS`), asks
//! the feed for that tick's samples (one per site in live mode), encodes each once and
//! publishes it on its site's hub. Aligning to
//! the clock rather than to "1.5 s after the last one" keeps ticks from drifting and makes
//! the sequence number a pure function of time, shared by every instance.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::feed::Feed;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Starts the generator thread. It publishes the tick after `first` and every one after
/// that on `hubs` (one per site), until `stop` is disconnected.
pub fn spawn(
    feed: Feed,
    first: u64,
    hubs: Vec<Arc<Hub>>,
    metrics: Arc<Metrics>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("generator".into())
        .spawn(move || run(&feed, first, &hubs, &metrics, &stop))
}

fn run(feed: &Feed, mut last: u64, hubs: &[Arc<Hub>], metrics: &Metrics, stop: &Receiver<()>) {
    let model = &feed.model;
    let interval_ms = model.interval_ms();
    loop {
        let due_ms = (last + 1) * interval_ms;
        let wait = Duration::from_millis(due_ms.saturating_sub(now_ms()));
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        // After a suspend or a clock jump, publish the tick we are in, not every missed one.
        let now = now_ms();
        let next = model.tick_at(now).max(last + 1);
        for (hub, tick) in hubs.iter().zip(feed.ticks(next, now)) {
            metrics.sample_generated(hub.publish(tick));
        }
        log::trace!("published tick {next}");
        last = next;
    }
}

/// Unix milliseconds now: the clock every tick index is read from.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
