//! What REST and the streams share, built once by `server`: the hubs, the feed, the
//! metrics, readiness, the caps in force and the API document.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::budget::Turns;
use crate::chaos;
use crate::edge::PeerNames;
use crate::feed::Feed;
use crate::hub::Hub;
use crate::metrics::Metrics;

pub struct Context {
    /// One hub per site (one in sim mode), in `SITES` order.
    pub hubs: Vec<Arc<Hub>>,
    /// Where samples come from.
    pub feed: Feed,
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
    /// `INSTANCE`, or the random name drawn at start: said in the welcome and at `/`.
    pub instance: String,
    /// `/openapi.json` as this server answers it: made once, at start-up, since live mode's
    /// names its sites.
    pub openapi: Cow<'static, str>,
    /// How the log names peers: by a digest in live mode.
    pub peer_names: PeerNames,
}

impl Context {
    /// The hub of `site` (an index into `SITES`; 0 in sim mode).
    pub fn hub(&self, site: usize) -> &Hub {
        &self.hubs[site]
    }
}

/// The connection caps in force: configured, or derived from what the process can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// `MAX_WS_CLIENTS`: open streams, WebSocket and SSE together.
    pub streams: usize,
    /// `MAX_HTTP_CONNECTIONS`: open HTTP connections (streams not included).
    pub http: usize,
}
