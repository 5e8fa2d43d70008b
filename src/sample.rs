//! The sample: the Node original's four-field JSON object, optional detail fields, and the one
//! encoder that turns a sample into the bytes clients receive.
//!
//! By default a sample is exactly the Node original's object, fields in its order, so its
//! clients (`JSON.parse(event.data).active_users`) work unchanged. Clients that want more
//! opt in with `?fields=` (detail fields) and `?seq=1` (the sequence number).

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// Every field a client can select, in the order they are serialized.
pub const FIELDS: [&str; 10] = [
    "timestamp",
    "active_users",
    "page_views",
    "avg_session_duration",
    "bounce_rate",
    "new_visitors",
    "devices",
    "countries",
    "referrers",
    "top_pages",
];

/// One analytics sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The tick index: `unix_ms / INTERVAL_MS`. Consecutive samples differ by one.
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds: the start of the tick.
    pub timestamp: String,
    pub active_users: u32,
    pub page_views: u32,
    /// Minutes, one decimal.
    pub avg_session_duration: f64,
    /// Live mode with Redis: Redis failed, and this sample repeats the last one's gauges
    /// with no page views (`"stale": true`, after the fields).
    pub stale: bool,
    /// Computed only when a client selected a detail field.
    pub details: Option<Details>,
}

/// Breakdowns and rates for richer dashboards. Breakdowns sum to the total they split:
/// devices, countries and referrers to `active_users`, top pages to `page_views`.
#[derive(Debug, Clone, PartialEq)]
pub struct Details {
    /// Share of sessions with a single page view, 0 to 1.
    pub bounce_rate: f64,
    /// Active users on their first visit.
    pub new_visitors: u32,
    pub devices: Vec<(Label, u32)>,
    /// `None` where it cannot be known (live traffic carries no country): the field is
    /// then absent.
    pub countries: Option<Vec<(Label, u32)>>,
    pub referrers: Vec<(Label, u32)>,
    pub top_pages: Vec<(Label, u32)>,
}

/// A breakdown's key: one of the simulator's fixed names, or a page or referrer of live
/// traffic, shared by every sample that counts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Label {
    Fixed(&'static str),
    Shared(Arc<str>),
}

impl Label {
    pub fn as_str(&self) -> &str {
        match self {
            Label::Fixed(name) => name,
            Label::Shared(name) => name,
        }
    }
}

impl From<&'static str> for Label {
    fn from(name: &'static str) -> Label {
        Label::Fixed(name)
    }
}

/// A set of fields, as selected with `?fields=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields(u16);

impl Fields {
    /// The Node original's four fields: the default.
    pub const ORIGINAL: Fields = Fields(0b1111);
    pub const ALL: Fields = Fields((1 << FIELDS.len()) - 1);

    /// Parses `a,b,c` or `all`; an unknown name is returned as the error.
    pub fn parse(list: &str) -> Result<Fields, String> {
        if list.trim() == "all" {
            return Ok(Fields::ALL);
        }
        let mut bits = 0;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let i = FIELDS
                .iter()
                .position(|f| *f == name)
                .ok_or_else(|| name.to_string())?;
            bits |= 1 << i;
        }
        if bits == 0 {
            return Err(list.to_string());
        }
        Ok(Fields(bits))
    }

    /// The selected field names, in order.
    pub fn names(self) -> Vec<&'static str> {
        FIELDS.into_iter().filter(|f| self.has(f)).collect()
    }

    /// These fields but `name`.
    pub fn without(self, name: &str) -> Fields {
        let bit = FIELDS.iter().position(|f| *f == name).map_or(0, |i| 1 << i);
        Fields(self.0 & !bit)
    }

    fn has(self, name: &str) -> bool {
        FIELDS
            .iter()
            .position(|f| *f == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// Whether any selected field needs [`Details`].
    pub fn needs_details(self) -> bool {
        self.0 & !Fields::ORIGINAL.0 != 0
    }
}

/// Formats a Unix time in milliseconds the way every sample does.
pub fn timestamp(unix_ms: i64) -> String {
    DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `sample` as JSON with the `fields` selected, and `seq` last if `with_seq`.
pub fn encode(sample: &Sample, fields: Fields, with_seq: bool) -> Bytes {
    let d = sample.details.as_ref();
    let pick = |name| fields.has(name);
    let out = Out {
        timestamp: pick("timestamp").then_some(sample.timestamp.as_str()),
        active_users: pick("active_users").then_some(sample.active_users),
        page_views: pick("page_views").then_some(sample.page_views),
        avg_session_duration: pick("avg_session_duration").then_some(sample.avg_session_duration),
        bounce_rate: d.filter(|_| pick("bounce_rate")).map(|d| d.bounce_rate),
        new_visitors: d.filter(|_| pick("new_visitors")).map(|d| d.new_visitors),
        devices: d.filter(|_| pick("devices")).map(|d| Breakdown(&d.devices)),
        countries: d
            .filter(|_| pick("countries"))
            .and_then(|d| d.countries.as_deref())
            .map(Breakdown),
        referrers: d
            .filter(|_| pick("referrers"))
            .map(|d| Breakdown(&d.referrers)),
        top_pages: d
            .filter(|_| pick("top_pages"))
            .map(|d| Breakdown(&d.top_pages)),
        seq: with_seq.then_some(sample.seq),
        stale: sample.stale.then_some(true),
    };
    // Strings and numbers cannot fail to serialize.
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

#[derive(Serialize)]
struct Out<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_users: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page_views: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avg_session_duration: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bounce_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_visitors: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<Breakdown<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    countries: Option<Breakdown<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    referrers: Option<Breakdown<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_pages: Option<Breakdown<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale: Option<bool>,
}

/// A breakdown as a JSON object, largest-first order kept: `{"desktop": 41, ...}`.
struct Breakdown<'a>(&'a [(Label, u32)]);

impl Serialize for Breakdown<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k.as_str(), v)?;
        }
        map.end()
    }
}

/// A sample as published by the generator: its sequence number and its default encoding,
/// shared by every subscriber (cloning is a reference-count increment).
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub seq: u64,
    pub json: Bytes,
}

impl Tick {
    pub fn new(sample: &Sample) -> Tick {
        Tick {
            seq: sample.seq,
            json: encode(sample, Fields::ORIGINAL, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(details: bool) -> Sample {
        Sample {
            seq: 1_162_972_840,
            timestamp: timestamp(1_744_459_260_000),
            active_users: 87,
            page_views: 152,
            avg_session_duration: 4.6,
            stale: false,
            details: details.then(|| Details {
                bounce_rate: 0.412,
                new_visitors: 30,
                devices: vec![
                    ("desktop".into(), 40),
                    ("mobile".into(), 44),
                    ("tablet".into(), 3),
                ],
                countries: Some(vec![("US".into(), 87)]),
                referrers: vec![("direct".into(), 87)],
                top_pages: vec![("/".into(), 152)],
            }),
        }
    }

    #[test]
    fn default_encoding_is_the_seeds_four_fields_in_order() {
        assert_eq!(
            Tick::new(&sample(false)).json,
            r#"{"timestamp":"2025-04-12T12:01:00.000Z","active_users":87,"page_views":152,"avg_session_duration":4.6}"#
        );
    }

    #[test]
    fn selected_fields_and_seq() {
        let s = sample(true);
        let fields = Fields::parse("active_users, devices").unwrap();
        assert!(fields.needs_details());
        assert_eq!(
            encode(&s, fields, true),
            r#"{"active_users":87,"devices":{"desktop":40,"mobile":44,"tablet":3},"seq":1162972840}"#
        );
        let all: serde_json::Value =
            serde_json::from_slice(&encode(&s, Fields::ALL, false)).unwrap();
        assert_eq!(all.as_object().unwrap().len(), FIELDS.len());
    }

    #[test]
    fn unknown_or_empty_field_lists_are_refused() {
        assert_eq!(Fields::parse("timestamp,visits"), Err("visits".into()));
        assert!(Fields::parse(",").is_err());
        assert_eq!(Fields::parse("all"), Ok(Fields::ALL));
        assert!(
            !Fields::parse("timestamp,page_views")
                .unwrap()
                .needs_details()
        );
    }

    #[test]
    fn timestamps_keep_milliseconds() {
        assert_eq!(timestamp(1_500), "1970-01-01T00:00:01.500Z");
    }
}
