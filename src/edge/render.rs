//! Rendering: a reply's bytes for the client's HTTP version, with the `Connection`
//! header the edge decides.

use tiny_http::HTTPVersion;

use crate::http::Reply;

/// The bytes of a response to a client speaking HTTP/1.`minor`. tiny_http renders it;
/// the `Connection` header, which tiny_http will not take from us, goes in after the
/// status line.
pub fn render(reply: Reply, minor: u8, head: bool, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + reply.data_length().unwrap_or(0));
    let _ = reply.raw_print(&mut out, HTTPVersion(1, minor), &[], head, None);
    let connection: &[u8] = match (close, minor) {
        (true, _) => b"Connection: close\r\n",
        (false, 0) => b"Connection: keep-alive\r\n",
        (false, _) => b"",
    };
    if let Some(line_end) = out.windows(2).position(|w| w == b"\r\n") {
        out.splice(line_end + 2..line_end + 2, connection.iter().copied());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    #[test]
    fn replies_say_whether_the_connection_stays_open() {
        let text = |minor, close| {
            String::from_utf8(render(http::empty(204), minor, false, close)).unwrap()
        };
        assert!(text(1, false).starts_with("HTTP/1.1 204"));
        assert!(!text(1, false).contains("Connection"));
        assert!(text(1, true).contains("Connection: close"));
        assert!(text(0, false).starts_with("HTTP/1.0 204"));
        assert!(text(0, false).contains("Connection: keep-alive"));
    }
}
