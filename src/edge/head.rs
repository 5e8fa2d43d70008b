//! Request heads, read strictly (RFC 9112 §2-§3, §5-§6), before tiny_http sees them.
//!
//! What is refused, and why: anything two parsers could read differently is how request
//! smuggling works, so a head is either unambiguous or refused, and a refused head ends
//! the connection (nothing after it is read, let alone served).
//!
//! | input | answer |
//! |---|---|
//! | a bare LF, a NUL, or a line folded with leading whitespace (obs-fold) | 400 |
//! | a malformed request line, header name or value; whitespace before a colon | 400 |
//! | a version other than HTTP/1.x (`HTTP/2.0`, `PRI * HTTP/2.0`, `HTTP/3.0`, `HTTP/0.9`) | 505 |
//! | HTTP/1.1 without exactly one valid `Host`; two `Host` headers in any version | 400 |
//! | `Content-Length` that is not one run of digits in range, or given twice | 400 |
//! | `Content-Length` together with `Transfer-Encoding` | 400 |
//! | a `Transfer-Encoding` whose codings are not all `chunked` (RFC 9112 §6.1) | 501 |
//!
//! A head that declares a body (`Transfer-Encoding: chunked`, or a `Content-Length`
//! above 0) passes with [`Head::body`] set: this API takes no bodies, but the route is
//! judged first (404, then 405 with `Allow`, then 413), and the connection closes after
//! the answer, as the body is never read.
//! | more than 100 header lines | 431 |
//!
//! Header values may carry obs-text (bytes above 0x7f) as RFC 9110 allows; such headers
//! are kept out of what reaches tiny_http, which reads heads as ASCII.

/// At most this many header lines (hyper's default as well).
const MAX_HEADERS: usize = 100;

/// A request head that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1 (and later 1.x, answered as 1.1).
    pub minor: u8,
    /// Header lines in order, names as sent, values trimmed. Only ASCII values.
    pub headers: Vec<(String, String)>,
    /// The connection ends after this request's response.
    pub close: bool,
    /// `Connection` names the `upgrade` option.
    pub upgrade: bool,
    /// The body it declares.
    pub body: Body,
}

/// The body a request head declares: its framing, unambiguous (see `framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    /// `Content-Length`, above zero.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// An error the edge answers itself (a refused head, the caps, no turn in time): an HTTP
/// status, a stable code and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeError {
    pub status: u16,
    pub error: &'static str,
    pub message: String,
}

impl Head {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Finds where a head ends in a buffer that grows, looking at each byte once.
#[derive(Debug, Default)]
pub struct Scanner {
    pos: usize,
    line_start: usize,
    started: bool,
}

impl Scanner {
    /// Where the head in `buf` ends (the index after its empty line), `Ok(None)` while it
    /// is incomplete. `buf` must only have grown since the last call. Refuses as soon as a
    /// bare LF or a NUL arrives, so that a client cannot hide a head behind a line ending
    /// we would not see.
    pub fn end(&mut self, buf: &[u8]) -> Result<Option<usize>, EdgeError> {
        while self.pos < buf.len() {
            let (i, b) = (self.pos, buf[self.pos]);
            self.pos += 1;
            match b {
                0 => return Err(bad("A NUL byte is not allowed in a request head.")),
                b'\n' if i == 0 || buf[i - 1] != b'\r' => {
                    return Err(bad("Lines must end with CRLF; a bare LF is refused."));
                }
                b'\n' => {
                    // An empty line ends the head, unless it comes before the request
                    // line (RFC 9112 §2.2 lets a server skip those).
                    if i - self.line_start == 1 && self.started {
                        return Ok(Some(i + 1));
                    }
                    self.line_start = i + 1;
                }
                b'\r' => {}
                _ => self.started = true,
            }
        }
        Ok(None)
    }
}

/// Parses a complete head (as delimited by [`Scanner::end`]).
pub fn parse(raw: &[u8]) -> Result<Head, EdgeError> {
    let text = raw.strip_suffix(b"\r\n\r\n").unwrap_or(raw);
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let (method, target, minor) = request_line(lines.next().unwrap_or_default())?;
    let mut head = Head {
        method,
        target,
        minor,
        headers: Vec::new(),
        close: false,
        upgrade: false,
        body: Body::None,
    };
    let (mut hosts, mut lengths, mut codings) = (0, Vec::new(), Vec::new());
    let (mut close, mut keep_alive) = (false, false);
    for (count, line) in lines.enumerate() {
        if count == MAX_HEADERS {
            return Err(EdgeError {
                status: 431,
                error: "headers_too_large",
                message: format!("More than {MAX_HEADERS} header lines. Send fewer headers."),
            });
        }
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err(bad(
                "A header line starting with whitespace (obs-fold) is refused: send each \
                 header on one line.",
            ));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("A header line has no colon."))?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad(
                "A header name is empty or has characters a token may not (whitespace before \
                 the colon included).",
            ));
        }
        if !value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
        {
            return Err(bad("A header value has a control character."));
        }
        let name = String::from_utf8_lossy(name).into_owned();
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "host" => {
                hosts += 1;
                if !value
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-._~:[]%!$&'()*+,;=".contains(&b))
                {
                    return Err(bad("The Host header is not a valid host[:port]."));
                }
            }
            "content-length" => lengths.push(value.to_vec()),
            "transfer-encoding" => codings.push(value.to_vec()),
            "connection" => {
                for option in value.split(|&b| b == b',').map(trim) {
                    if option.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if option.eq_ignore_ascii_case(b"upgrade") {
                        head.upgrade = true;
                    }
                }
            }
            _ => {}
        }
        if value.is_ascii() {
            head.headers
                .push((name, String::from_utf8_lossy(value).into_owned()));
        }
    }
    head.close = close || (minor == 0 && !keep_alive);
    if hosts > 1 || (minor == 1 && hosts == 0) {
        return Err(bad("HTTP/1.1 requests need exactly one Host header."));
    }
    head.body = framing(&lengths, &codings)?;
    Ok(head)
}

/// The `Origin` of a head that may be refused, read leniently: only so that the refusal
/// can carry the CORS headers a browser needs to show it to the page.
pub fn origin(raw: &[u8]) -> Option<String> {
    raw.split(|&b| b == b'\n').find_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("origin")
            .then(|| value.trim().to_string())
    })
}

/// `METHOD SP request-target SP HTTP-version`, single spaces, nothing else.
fn request_line(line: &[u8]) -> Result<(String, String, u8), EdgeError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "The request line must be METHOD TARGET HTTP/1.1, single spaces.",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(bad("The method is not a token."));
    }
    if target.is_empty() || !target.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(bad(
            "The request target is empty or has a character that must be percent-encoded.",
        ));
    }
    // RFC 9112 §3.2: a path (origin form), an absolute URL, or `*`; never a fragment.
    let absolute = [&b"http://"[..], b"https://"].iter().any(|scheme| {
        target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme)
    });
    if target.contains(&b'#') || !(target[0] == b'/' || absolute || target == b"*") {
        return Err(bad(
            "The request target must be a path such as /api/analytics (or an absolute URL), \
             without a fragment (#).",
        ));
    }
    let minor = match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if *major != b'1' {
                return Err(EdgeError {
                    status: 505,
                    error: "http_version_not_supported",
                    message: format!(
                        "{} is not served here; use HTTP/1.1 (or 1.0).",
                        String::from_utf8_lossy(version)
                    ),
                });
            }
            u8::from(*minor != b'0')
        }
        _ => return Err(bad("The version must be HTTP/1.1 or HTTP/1.0.")),
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((text(method), text(target), minor))
}

/// The body rules: the framing must be unambiguous and its codings known.
fn framing(lengths: &[Vec<u8>], codings: &[Vec<u8>]) -> Result<Body, EdgeError> {
    let coded = !codings.is_empty();
    if lengths.len() > 1 || (coded && !lengths.is_empty()) {
        return Err(EdgeError {
            status: 400,
            error: "ambiguous_framing",
            message: "Send at most one Content-Length and no Transfer-Encoding.".into(),
        });
    }
    let declared = match lengths.first() {
        // At most 19 digits: always a u64.
        Some(v) if !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit) => {
            v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
        }
        Some(_) => {
            return Err(EdgeError {
                status: 400,
                error: "bad_content_length",
                message: "Content-Length must be one decimal number.".into(),
            });
        }
        None => 0,
    };
    let mut names = codings
        .iter()
        .flat_map(|value| value.split(|&b| b == b','))
        .map(|coding| trim(coding.split(|&b| b == b';').next().unwrap_or_default()))
        .filter(|name| !name.is_empty())
        .peekable();
    if coded && names.peek().is_none() {
        return Err(bad("Transfer-Encoding is empty."));
    }
    if let Some(unknown) = names.find(|name| !name.eq_ignore_ascii_case(b"chunked")) {
        return Err(EdgeError {
            status: 501,
            error: "transfer_coding_not_implemented",
            message: format!(
                "The transfer coding {:?} is not implemented: send a body with \
                 Content-Length (only POST /api/event takes one).",
                String::from_utf8_lossy(&unknown[..unknown.len().min(40)])
            ),
        });
    }
    Ok(match declared {
        _ if coded => Body::Chunked,
        0 => Body::None,
        n => Body::Length(n),
    })
}

fn bad(message: &str) -> EdgeError {
    EdgeError {
        status: 400,
        error: "bad_request",
        message: message.into(),
    }
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(buf: &[u8]) -> Result<Option<usize>, EdgeError> {
        Scanner::default().end(buf)
    }

    fn head(raw: &str) -> Result<Head, EdgeError> {
        let end = end(raw.as_bytes())?.expect("complete head");
        assert_eq!(end, raw.len(), "{raw:?}");
        parse(raw.as_bytes())
    }

    fn status(raw: &str) -> u16 {
        match end(raw.as_bytes()) {
            Err(r) => r.status,
            Ok(None) => panic!("incomplete: {raw:?}"),
            Ok(Some(_)) => parse(raw.as_bytes()).map_or_else(|r| r.status, |_| 200),
        }
    }

    #[test]
    fn plain_heads_are_read() {
        let h =
            head("GET /api/analytics?x=1 HTTP/1.1\r\nHost: a:1\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.minor),
            ("GET", "/api/analytics?x=1", 1)
        );
        assert_eq!(h.header("accept"), Some("*/*"));
        assert!(!h.close && !h.upgrade);
        let h = head("\r\nGET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(h.close, "1.0 closes by default");
        assert!(
            !head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(
            head("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap()
                .close
        );
        let h = head("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(h.upgrade && !h.close);
        assert_eq!(head("GET / HTTP/1.9\r\nHost: x\r\n\r\n").unwrap().minor, 1);
    }

    #[test]
    fn incomplete_heads_wait_and_bare_lf_is_refused_at_once() {
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        assert_eq!(
            end(b"\r\n\r\n").unwrap(),
            None,
            "empty lines before a request line"
        );
        assert_eq!(status("GET / HTTP/1.1\nHost: x\n\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\0\r\n\r\n"), 400);
    }

    #[test]
    fn a_growing_buffer_is_scanned_once() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next";
        let mut scanner = Scanner::default();
        for n in 0..27 {
            assert_eq!(scanner.end(&raw[..n]).unwrap(), None, "{n}");
        }
        assert_eq!(scanner.end(&raw[..]).unwrap(), Some(27));
    }

    #[test]
    fn versions_other_than_1_x_get_505() {
        for v in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/9.9"] {
            assert_eq!(status(&format!("GET / {v}\r\nHost: x\r\n\r\n")), 505, "{v}");
        }
        assert_eq!(status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        for v in ["HTTP/2", "HTTP/1.10", "http/1.1", "HTTP/1.1 ", "HTTPS/1.1"] {
            assert_eq!(
                status(&format!("GET / {v}\r\nHost: x\r\n\r\n")),
                400,
                "{v:?}"
            );
        }
    }

    #[test]
    fn malformed_lines_get_400() {
        for raw in [
            "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /\tx HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /é HTTP/1.1\r\nHost: x\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\tfolded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        ] {
            assert_eq!(status(raw), 400, "{raw:?}");
        }
    }

    #[test]
    fn framing_is_unambiguous_and_codings_known() {
        let with = |headers: &str| status(&format!("GET / HTTP/1.1\r\nHost: x\r\n{headers}\r\n"));
        assert_eq!(with("Content-Length: 0\r\n"), 200);
        for cl in [
            "37, 37",
            "+37",
            "abc",
            "0x25",
            "-37",
            "",
            "18446744073709551616",
            "3 7",
            "99999999999999999999",
        ] {
            assert_eq!(with(&format!("Content-Length: {cl}\r\n")), 400, "{cl:?}");
        }
        assert_eq!(with("Content-Length: 1\r\nContent-Length: 1\r\n"), 400);
        assert_eq!(
            with("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
            400
        );
        assert_eq!(
            with("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
            400
        );
        for te in [
            "chunked",
            "Chunked",
            "chunked;ext=1",
            "chunked, chunked",
            "chunked, ",
        ] {
            assert_eq!(with(&format!("Transfer-Encoding: {te}\r\n")), 200, "{te:?}");
            let head = parse(
                format!("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n").as_bytes(),
            )
            .unwrap();
            assert_eq!(head.body, Body::Chunked, "{te:?}");
        }
        for te in ["gzip", "identity", "gzip, chunked", "x-custom"] {
            assert_eq!(with(&format!("Transfer-Encoding: {te}\r\n")), 501, "{te:?}");
        }
        assert_eq!(with("Transfer-Encoding: \r\n"), 400);
        assert_eq!(with("Transfer-Encoding: ,\r\n"), 400);
        let head = parse(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 37\r\n\r\n").unwrap();
        assert_eq!(head.body, Body::Length(37));
        let head = parse(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(head.body, Body::None);
        let longest = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999999999999\r\n\r\n";
        assert_eq!(
            parse(longest).unwrap().body,
            Body::Length(9_999_999_999_999_999_999)
        );
        let r =
            parse(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .unwrap_err();
        assert_eq!(r.error, "ambiguous_framing");
    }

    #[test]
    fn header_count_is_bounded_and_obs_text_is_kept_from_tiny_http() {
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            431
        );
        let h = parse("GET / HTTP/1.1\r\nHost: x\r\nX-Name: café\r\n\r\n".as_bytes()).unwrap();
        assert_eq!(h.header("x-name"), None);
        assert_eq!(h.header("host"), Some("x"));
    }
}
