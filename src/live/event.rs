//! An event as sites send it: Plausible's Events API body, with its long keys (`name`,
//! `url`, `domain`, `referrer`, `props`) or the short ones its browser tracker sends (`n`,
//! `u`, `d`, `r`, `w`, `h`, `p`), read into what live mode counts and nothing more.

use std::fmt::Write;

use serde::Deserialize;
use serde_json::Value;

/// The longest path kept for `top_pages`, and the longest referrer host: longer ones are
/// cut, so that no client can make a label long.
const MAX_LABEL: usize = 128;

/// An event, checked: what the counters need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The domains it is for (Plausible's `d` may list several, comma-separated).
    pub domains: Vec<String>,
    /// What happened, as far as the counters care.
    pub kind: Kind,
    /// The page's path: no scheme, host or query; the fragment only in hash mode (`h`).
    pub path: String,
    /// The referrer's host, if another site sent the visitor.
    pub referrer: Option<String>,
    /// The screen width in CSS pixels, if sent (`w`).
    pub width: Option<u32>,
}

/// An event's name, as the counters read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `pageview`: a page view, and activity.
    PageView,
    /// `engagement`: Plausible's tracker reporting time and scroll on a page it already
    /// counted, when the page is hidden or left. Activity of a session already open, as
    /// in Plausible: it never starts one.
    Engagement,
    /// Any other name, a custom event: activity, not a page view.
    Custom,
}

/// Why an event body cannot be counted: the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEvent(pub String);

#[derive(Deserialize)]
struct Body {
    #[serde(alias = "n")]
    name: Option<Value>,
    #[serde(alias = "u")]
    url: Option<Value>,
    #[serde(alias = "d")]
    domain: Option<Value>,
    #[serde(alias = "r")]
    referrer: Option<Value>,
    #[serde(alias = "w", alias = "screen_width")]
    width: Option<Value>,
    #[serde(alias = "h")]
    hash: Option<Value>,
}

/// Reads an event body (JSON, as `application/json` or `text/plain`).
pub fn parse(body: &[u8]) -> Result<Event, BadEvent> {
    let not_an_event = |why: String| {
        BadEvent(format!(
            "The body is not a JSON object of an event ({why}). Send e.g. \
             {{\"name\":\"pageview\",\"url\":\"https://example.com/\",\"domain\":\"example.com\"}}."
        ))
    };
    // serde would read an array into the fields in order; an event is an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(not_an_event("it does not start with {".into()));
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| not_an_event(e.to_string()))?;
    // Each key named as the Events API and as the tracker send it.
    let missing = |field: &str, short: &str| {
        BadEvent(format!(
            "The event has no \"{field}\" (\"{short}\"): send it."
        ))
    };
    let text = |value: Option<Value>, field: &str, short: &str, example: &str| match value {
        None | Some(Value::Null) => Err(missing(field, short)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(BadEvent(format!(
            "\"{field}\" (\"{short}\") is a string, such as {example}."
        ))),
    };
    let name = text(body.name, "name", "n", "\"pageview\"")?;
    if name.trim().is_empty() {
        return Err(missing("name", "n"));
    }
    let url = text(body.url, "url", "u", "\"https://example.com/\"")?;
    let domain = text(
        body.domain,
        "domain",
        "d",
        "\"example.com\" (several: \"a.example,b.example\")",
    )?;
    let hash_mode = match body.hash {
        None | Some(Value::Null) => false,
        Some(Value::Bool(on)) => on,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 1) => n.as_u64() == Some(1),
        Some(_) => return Err(BadEvent("\"h\" (hash mode) is 0, 1, true or false.".into())),
    };
    let path = path_of(&url, hash_mode).ok_or_else(|| {
        BadEvent("\"url\" (\"u\") must be an absolute http(s) URL, as location.href is.".into())
    })?;
    let domains: Vec<String> = domain
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    if domains.is_empty() {
        return Err(missing("domain", "d"));
    }
    let referrer = match body.referrer {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => host_of(&r),
        Some(_) => {
            return Err(BadEvent(
                "\"referrer\" (\"r\") is a URL (document.referrer) or null.".into(),
            ));
        }
    };
    let width = match body.width {
        None | Some(Value::Null) => None,
        Some(Value::Number(w)) if w.as_f64().is_some_and(|w| w >= 0.0) => {
            w.as_f64().map(|w| w.min(f64::from(u32::MAX)) as u32)
        }
        Some(_) => {
            return Err(BadEvent(
                "\"screen_width\" (\"w\") is a number of CSS pixels.".into(),
            ));
        }
    };
    Ok(Event {
        kind: match name.as_str() {
            "pageview" => Kind::PageView,
            "engagement" => Kind::Engagement,
            _ => Kind::Custom,
        },
        domains,
        path,
        // A link within the site is no referral.
        referrer: referrer.filter(|host| !host_matches(host, &url)),
        width,
    })
}

/// `https://host/a/b?q#f` → `/a/b` (`/a/b#f` in hash mode); `None` if not an http(s) URL.
fn path_of(url: &str, hash_mode: bool) -> Option<String> {
    let rest = strip_scheme(url)?;
    let path = rest.find(['/', '?', '#']).map_or("", |i| &rest[i..]);
    let (path, fragment) = path.split_once('#').unwrap_or((path, ""));
    let path = path.split('?').next().unwrap_or("");
    let mut out = if path.is_empty() { "/" } else { path }.to_string();
    if hash_mode && !fragment.is_empty() {
        out.push('#');
        out.push_str(fragment);
    }
    Some(label(&out))
}

/// The host of an http(s) URL, lowercased, without port or user info.
fn host_of(url: &str) -> Option<String> {
    let rest = strip_scheme(url)?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    let host = host.trim_start_matches("www.").to_ascii_lowercase();
    (!host.is_empty()).then(|| label(&host))
}

fn host_matches(host: &str, url: &str) -> bool {
    host_of(url).is_some_and(|own| own == host)
}

fn strip_scheme(url: &str) -> Option<&str> {
    ["https://", "http://"].into_iter().find_map(|scheme| {
        url.get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &url[scheme.len()..])
    })
}

/// `text` as a label: the bytes a browser percent-encodes in a URL (controls, space,
/// `"`, `<`, `>`, `` ` `` and every byte of a non-ASCII character) encoded as
/// `location.href` has them, so that no label carries markup or control characters into
/// a dashboard; cut to [`MAX_LABEL`] bytes, never inside an escape.
fn label(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LABEL));
    for b in text.bytes() {
        let escape = !(0x21..0x7f).contains(&b) || b"\"<>`".contains(&b);
        if out.len() + if escape { 3 } else { 1 } > MAX_LABEL {
            break;
        }
        if escape {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trackers_short_keys_and_the_apis_long_ones_are_the_same_event() {
        let short = parse(
            br#"{"n":"pageview","u":"https://shop.example/cart?x=1#top","d":"shop.example","r":"https://www.news.example/a","w":1280,"h":0,"p":"{\"a\":1}"}"#,
        )
        .unwrap();
        let long = parse(
            br#"{"name":"pageview","url":"https://shop.example/cart?x=1#top","domain":"shop.example","referrer":"https://www.news.example/a","width":1280,"props":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(short, long);
        assert_eq!(short.path, "/cart");
        assert_eq!(short.referrer.as_deref(), Some("news.example"));
        assert_eq!(short.width, Some(1280));
        assert_eq!(short.kind, Kind::PageView);
    }

    #[test]
    fn paths_referrers_and_domains_are_read_as_plausible_reads_them() {
        let e = |body: &str| parse(body.as_bytes());
        let hash = e(r#"{"n":"pageview","u":"http://a.example/#/settings","d":"a.example","h":1}"#);
        assert_eq!(hash.unwrap().path, "/#/settings");
        let internal =
            e(r#"{"n":"x","u":"https://a.example/b","d":"a.example","r":"https://a.example/"}"#)
                .unwrap();
        assert_eq!(internal.referrer, None, "a link within the site");
        assert_eq!(internal.kind, Kind::Custom);
        let engagement = r#"{"n":"engagement","sd":40,"d":"a.example","u":"https://a.example/","p":{},"e":3000,"v":36}"#;
        assert_eq!(e(engagement).unwrap().kind, Kind::Engagement);
        let many = e(r#"{"n":"pageview","u":"https://a.example","d":"A.example, b.example"}"#);
        assert_eq!(many.unwrap().domains, ["a.example", "b.example"]);
        let long = format!(
            r#"{{"n":"pageview","u":"https://a.example/{}","d":"a.example"}}"#,
            "p".repeat(1000)
        );
        assert_eq!(e(&long).unwrap().path.len(), MAX_LABEL);
        // What a browser would percent-encode is encoded: no markup, no control or
        // direction characters reach a dashboard.
        let odd =
            e(r#"{"n":"pageview","u":"https://a.example/a\"b<i>\u0007\u202e é","d":"a.example"}"#);
        assert_eq!(odd.unwrap().path, "/a%22b%3Ci%3E%07%E2%80%AE%20%C3%A9");
        let escapes = format!(
            r#"{{"n":"pageview","u":"https://a.example/{}","d":"a.example"}}"#,
            "é".repeat(100)
        );
        let cut = e(&escapes).unwrap().path;
        assert!(cut.len() <= MAX_LABEL && cut.ends_with("%A9"), "{cut}");
        // The Events API's name for the screen width.
        let api = e(
            r#"{"name":"pageview","url":"https://a.example/","domain":"a.example","screen_width":390}"#,
        );
        assert_eq!(api.unwrap().width, Some(390));
    }

    #[test]
    fn bad_bodies_say_what_to_fix() {
        let e = |body: &str| parse(body.as_bytes()).unwrap_err().0;
        assert!(e("not json").contains("not a JSON object"));
        let array = e(r#"["pageview","https://a.example/","a.example",null,1,null]"#);
        assert!(
            array.contains("not a JSON object") && !array.contains("struct"),
            "{array}"
        );
        assert!(e(r#"{"u":"https://a.example","d":"a.example"}"#).contains("\"name\""));
        assert!(e(r#"{"n":"pageview","d":"a.example"}"#).contains("\"url\""));
        assert!(e(r#"{"n":"pageview","u":"https://a.example"}"#).contains("\"domain\""));
        assert!(e(r#"{"n":"pageview","u":"/relative","d":"a.example"}"#).contains("absolute"));
        assert!(e(r#"{"n":"pageview","u":"https://a.example","d":" , "}"#).contains("\"domain\""));
        let typed = |field: &str| {
            e(&format!(
                r#"{{"n":"pageview","u":"https://a.example","d":"a.example",{field}}}"#
            ))
        };
        // Each names the key as the tracker and as the Events API send it.
        for w in [r#""w":{}"#, r#""screen_width":-5"#] {
            let e = typed(w);
            assert!(e.contains("\"screen_width\" (\"w\")"), "{w}: {e}");
        }
        assert!(typed(r#""h":2"#).contains("\"h\""));
        for (body, says) in [
            (
                r#"{"n":5,"u":"https://a.example","d":"a.example"}"#,
                r#""name" ("n") is a string"#,
            ),
            (
                r#"{"n":"pageview","url":5,"d":"a.example"}"#,
                r#""url" ("u") is a string"#,
            ),
            (
                r#"{"n":"pageview","u":"https://a.example","d":["a.example"]}"#,
                r#""domain" ("d") is a string"#,
            ),
            (
                r#"{"n":null,"u":"https://a.example","d":"a.example"}"#,
                r#"no "name" ("n")"#,
            ),
        ] {
            let e = e(body);
            assert!(e.contains(says), "{body}: {e}");
        }
        for r in [r#""r":5"#, r#""referrer":[]"#] {
            let e = typed(r);
            assert!(e.contains("\"referrer\" (\"r\")"), "{r}: {e}");
        }
    }
}
