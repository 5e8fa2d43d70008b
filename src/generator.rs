//! The generator: the one thread that ticks.
//!
//! It sleeps until the next tick boundary of the wall clock (`tick * INTERVAL_MS`), asks
//! the simulator for that tick's sample, encodes it once and publishes it. Aligning to
//! the clock rather than to "1.5 s after the last one" keeps ticks from drifting and makes
//! the sequence number a pure function of time, shared by every instance.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::sample::Tick;
use crate::simulator::Model;

/// The shared stream's tick: the configured scenario, the original's four fields.
pub fn tick(model: &Model, tick: u64) -> Tick {
    Tick::new(&model.sample(tick, model.scenario, false))
}

/// Starts the generator thread. It publishes the tick after `first` and every one after
/// that, until `stop` is disconnected.
pub fn spawn(
    model: Model,
    first: u64,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("generator".into())
        .spawn(move || run(model, first, &hub, &metrics, &stop))
}

fn run(model: Model, mut last: u64, hub: &Hub, metrics: &Metrics, stop: &Receiver<()>) {
    let interval_ms = model.interval_ms();
    loop {
        let due_ms = (last + 1) * interval_ms;
        let wait = Duration::from_millis(due_ms.saturating_sub(now_ms()));
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        // After a suspend or a clock jump, publish the tick we are in, not every missed one.
        let next = model.tick_at(now_ms()).max(last + 1);
        metrics.sample_generated(hub.publish(tick(&model, next)));
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
