//! What REST and the streams share, built once by `server`: the hub, the model, the
//! metrics, readiness and the caps in force.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::budget::Turns;
use crate::chaos;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::simulator::Model;

pub struct Context {
    pub hub: Arc<Hub>,
    pub model: Model,
    /// `CHAOS` and `CHAOS_SEED`: the faults of clients that ask for none.
    pub chaos: chaos::Defaults,
    pub metrics: Arc<Metrics>,
    /// Cleared when shutdown starts: `/readyz` turns 503 and new streams get 503.
    pub ready: Arc<AtomicBool>,
    pub caps: Caps,
    /// `host:port` to advertise when a request has no usable `Host` header.
    pub default_host: String,
    /// Turns for encoding histories and replays (see `budget`).
    pub turns: Turns,
}

/// The connection caps in force: configured, or derived from what the process can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// `MAX_WS_CLIENTS`: open streams, WebSocket and SSE together.
    pub streams: usize,
    /// `MAX_HTTP_CONNECTIONS`: open HTTP connections (streams not included).
    pub http: usize,
}
