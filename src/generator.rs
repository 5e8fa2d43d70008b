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
use crate::simulator;

/// What the generator needs to compute a tick.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    pub seed: u64,
    pub interval: Duration,
}

impl Model {
    /// The tick at `now` and its encoded sample.
    pub fn tick(&self, tick: u64) -> Tick {
        Tick::new(tick, &simulator::sample(self.seed, tick, self.interval))
    }

    /// The tick the wall clock is in.
    pub fn current_tick(&self) -> u64 {
        simulator::tick_at(unix_ms(), self.interval)
    }
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
    let interval_ms = model.interval.as_millis() as u64;
    loop {
        let due_ms = (last + 1) * interval_ms;
        let wait = Duration::from_millis(due_ms.saturating_sub(unix_ms()));
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        // After a suspend or a clock jump, publish the tick we are in, not every missed one.
        let tick = model.current_tick().max(last + 1);
        let missed = hub.publish(model.tick(tick));
        Metrics::count(&metrics.samples_generated);
        metrics
            .frames_skipped
            .fetch_add(missed as u64, std::sync::atomic::Ordering::Relaxed);
        log::trace!("published tick {tick}");
        last = tick;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
