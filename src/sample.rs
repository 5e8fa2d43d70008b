//! The sample: the seed's four-field JSON object, and its encoded form.
//!
//! Field names, types and magnitudes are the Node original's, so its clients
//! (`JSON.parse(event.data).active_users`) work unchanged.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use serde::Serialize;

/// The field names of a sample, in the order they are serialized.
pub const FIELDS: [&str; 4] = [
    "timestamp",
    "active_users",
    "page_views",
    "avg_session_duration",
];

/// One analytics sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// RFC 3339 UTC with milliseconds: `2025-04-12T12:01:00.000Z`.
    pub timestamp: String,
    /// Users active during the sample's interval.
    pub active_users: u32,
    /// Pages viewed during the sample's interval.
    pub page_views: u32,
    /// Mean session length in minutes, one decimal.
    pub avg_session_duration: f64,
}

/// Formats a Unix time in milliseconds the way every sample and log line does.
pub fn timestamp(unix_ms: i64) -> String {
    DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A sample as published: its sequence number (the generator's tick index) and its JSON,
/// encoded once and shared by every subscriber (cloning is a reference-count increment).
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub seq: u64,
    pub json: Bytes,
}

impl Tick {
    pub fn new(seq: u64, sample: &Sample) -> Tick {
        // A struct of strings and numbers cannot fail to serialize.
        let json = serde_json::to_vec(sample).unwrap_or_default();
        Tick {
            seq,
            json: Bytes::from(json),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_exactly_the_four_seed_fields() {
        let s = Sample {
            timestamp: timestamp(1_744_459_260_000),
            active_users: 87,
            page_views: 152,
            avg_session_duration: 4.6,
        };
        let tick = Tick::new(3, &s);
        assert_eq!(
            std::str::from_utf8(&tick.json).unwrap(),
            r#"{"timestamp":"2025-04-12T12:01:00.000Z","active_users":87,"page_views":152,"avg_session_duration":4.6}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&tick.json).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut expected = FIELDS.to_vec();
        expected.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, expected);
    }

    #[test]
    fn timestamps_keep_milliseconds() {
        assert_eq!(timestamp(1_500), "1970-01-01T00:00:01.500Z");
    }
}
