//! Path normalisation and the route table, shared by REST and the streams.
//!
//! The Node original's rules: repeated slashes collapse, a trailing slash is ignored, and the query
//! string (and any fragment) plays no part in routing, so `//api` and `/api//analytics/`
//! reach the same place as `/api` and `/api/analytics`.
//!
//! Nothing is decoded or resolved: `/api/%61nalytics` and `/api/../api/analytics` name no
//! route and get 404. Decoding would let two different spellings reach one handler, which
//! buys nothing for three fixed paths and is how path-confusion bugs start.

/// Every path the server answers: the original's three, history, three for operators, the
/// two API descriptions and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/`: describes the service; over WebSocket, a welcome and nothing more.
    Root,
    /// `/api`: same as `/`.
    Api,
    /// `/api/analytics`: the latest sample; over WebSocket, the stream.
    Analytics,
    /// `/api/analytics/history`: samples over a time range, computed.
    History,
    /// `/healthz`: 200 while the process can serve.
    Health,
    /// `/readyz`: 200 while accepting clients, 503 while shutting down.
    Ready,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/openapi.json`: the REST API, OpenAPI 3.1.
    OpenApi,
    /// `/asyncapi.json`: the streams, AsyncAPI 3.1.
    AsyncApi,
    /// `/dashboard`: a live chart in one HTML page.
    Dashboard,
    /// `/api/event`: page views from sites, `POST` only (live mode).
    Event,
    /// `/tracker.js`: the script a site includes to send its page views here.
    Tracker,
}

impl Route {
    pub const ALL: [Route; 12] = [
        Route::Root,
        Route::Api,
        Route::Analytics,
        Route::History,
        Route::Health,
        Route::Ready,
        Route::Metrics,
        Route::OpenApi,
        Route::AsyncApi,
        Route::Dashboard,
        Route::Event,
        Route::Tracker,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Route::Root => "/",
            Route::Api => "/api",
            Route::Analytics => "/api/analytics",
            Route::History => "/api/analytics/history",
            Route::Health => "/healthz",
            Route::Ready => "/readyz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::AsyncApi => "/asyncapi.json",
            Route::Dashboard => "/dashboard",
            Route::Event => "/api/event",
            Route::Tracker => "/tracker.js",
        }
    }

    /// The methods this route answers, for `Allow`.
    pub fn allow(self) -> &'static str {
        match self {
            Route::Event => "POST, OPTIONS",
            _ => "GET, HEAD, OPTIONS",
        }
    }

    /// Whether `method` is one of [`Route::allow`]'s.
    pub fn allows(self, method: &str) -> bool {
        self.allow().split(", ").any(|m| m == method)
    }

    /// The longest body a `method` request to this route may send, if it may send one:
    /// only events do, and they are small.
    pub fn body_limit(self, method: &str) -> Option<u64> {
        (self == Route::Event && method == "POST").then_some(MAX_EVENT_BODY)
    }

    /// Whether WebSocket upgrades are accepted here (the original's three paths).
    pub fn websocket(self) -> bool {
        matches!(self, Route::Root | Route::Api | Route::Analytics)
    }

    /// Whether a stream (WebSocket or SSE) on this route receives samples; elsewhere a
    /// WebSocket gets only the welcome.
    pub fn sends_samples(self) -> bool {
        self == Route::Analytics
    }
}

/// The longest event body: Plausible's tracker sends a few hundred bytes.
pub const MAX_EVENT_BODY: u64 = 4096;

/// The route a normalised path names, if any.
pub fn route(path: &str) -> Option<Route> {
    Route::ALL.into_iter().find(|r| r.path() == path)
}

/// Normalises a request target (`/api//analytics/?x=1`) into a path (`/api/analytics`).
///
/// Absolute-form targets (`http://host/api`, which HTTP/1.1 servers must accept) are
/// reduced to their path first.
pub fn normalise(target: &str) -> String {
    let mut path = strip_authority(target);
    if let Some(cut) = path.find(['?', '#']) {
        path = &path[..cut];
    }
    if !path.is_empty() && !path.starts_with('/') {
        // `*` or a relative target: not a path, so it names no route.
        return path.to_string();
    }
    let mut out = String::with_capacity(path.len() + 1);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn strip_authority(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &target[scheme.len()..])
        {
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The normalisation table. (`tests/http.rs` sends a sample of these spellings over
    /// real sockets; this table, private to the crate, is the complete one.)
    pub const TABLE: &[(&str, Option<Route>)] = &[
        ("/", Some(Route::Root)),
        ("", Some(Route::Root)),
        ("//", Some(Route::Root)),
        ("/?x=1", Some(Route::Root)),
        ("/api", Some(Route::Api)),
        ("/api/", Some(Route::Api)),
        ("//api", Some(Route::Api)),
        ("///api///", Some(Route::Api)),
        ("/api/analytics", Some(Route::Analytics)),
        ("/api//analytics/", Some(Route::Analytics)),
        ("//api//analytics//", Some(Route::Analytics)),
        ("/api/analytics?since=5&x=/../", Some(Route::Analytics)),
        ("/api/analytics#frag", Some(Route::Analytics)),
        ("http://example.com/api/analytics", Some(Route::Analytics)),
        ("HTTPS://example.com", Some(Route::Root)),
        ("/api/%61nalytics", None),
        ("/api/analytics%2F", None),
        ("/api/../api/analytics", None),
        ("/api/./analytics", None),
        ("/API/analytics", None),
        ("/api/analytics/extra", None),
        ("/api//analytics/history/?last=5m", Some(Route::History)),
        ("/apianalytics", None),
        ("*", None),
        ("/healthz/", Some(Route::Health)),
        ("/readyz", Some(Route::Ready)),
        ("//metrics", Some(Route::Metrics)),
        ("api/analytics", None),
    ];

    #[test]
    fn normalisation_table() {
        for (target, expected) in TABLE {
            assert_eq!(route(&normalise(target)), *expected, "target {target:?}");
        }
    }

    #[test]
    fn normalised_paths_are_canonical() {
        assert_eq!(normalise("//api//analytics/?a=b"), "/api/analytics");
        assert_eq!(normalise("/x//y/"), "/x/y");
        assert_eq!(normalise("/api/%61nalytics"), "/api/%61nalytics");
        for (target, _) in TABLE {
            let once = normalise(target);
            assert_eq!(normalise(&once), once, "idempotent for {target:?}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Request targets built from the characters that matter to routing, plus anything.
    fn target() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(
                prop_oneof![
                    Just("/"),
                    Just("//"),
                    Just("api"),
                    Just("analytics"),
                    Just("history"),
                    Just("healthz"),
                    Just(".."),
                    Just("."),
                    Just("%2F"),
                    Just("%61"),
                    Just("?"),
                    Just("#"),
                    Just("&x=/api"),
                    Just("http://h"),
                    Just("é"),
                ],
                0..12
            )
            .prop_map(|parts| parts.concat()),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn normalising_is_idempotent_and_canonical(t in target()) {
            let path = normalise(&t);
            prop_assert_eq!(normalise(&path), path.clone());
            if path.starts_with('/') {
                prop_assert!(!path.contains("//"));
                prop_assert!(path == "/" || !path.ends_with('/'));
                prop_assert!(!path.contains(['?', '#']));
            }
        }

        /// A target reaches a route only if its raw path's segments are exactly the
        /// route's: no decoding, no dot segments, no other spelling.
        #[test]
        fn only_the_routes_own_segments_reach_it(t in target()) {
            if let Some(r) = route(&normalise(&t)) {
                let raw = strip_authority(&t);
                let raw = &raw[..raw.find(['?', '#']).unwrap_or(raw.len())];
                let segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
                let expected: Vec<&str> = r.path().split('/').filter(|s| !s.is_empty()).collect();
                prop_assert_eq!(segments, expected, "target {:?}", t);
            }
        }
    }
}
