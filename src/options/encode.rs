//! Encoding: a sample's bytes under a client's options, or the shared stream's when the
//! options ask for nothing else.

use bytes::Bytes;

use crate::feed::Feed;
use crate::sample::{Fields, Sample, Tick, encode};
use crate::simulator::Model;

use super::Options;

impl Options {
    /// Whether samples are the shared stream's bytes (no per-client encoding needed).
    pub fn is_shared(&self, model: &Model) -> bool {
        self.profile == model.profile
            && self.scenario == model.scenario
            && self.fields == Fields::ORIGINAL
            && !self.seq
    }

    /// The bytes of sample `seq` for these options: `shared` (the stream's, encoded once
    /// for everyone) when it is that tick and the options ask for nothing else, otherwise
    /// this client's own encoding.
    pub fn encode(&self, feed: &Feed, seq: u64, shared: Option<&Tick>) -> Bytes {
        match shared {
            Some(tick) if tick.seq == seq && self.is_shared(&feed.model) => tick.json.clone(),
            _ => encode(&self.sample(feed, seq), self.fields, self.seq),
        }
    }

    /// Sample `tick` of these options' site, profile and scenario.
    pub fn sample(&self, feed: &Feed, tick: u64) -> Sample {
        let details = self.fields.needs_details();
        feed.sample(self.site, self.profile, self.scenario, details, tick)
    }
}
