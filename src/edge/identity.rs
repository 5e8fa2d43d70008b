//! Who sent a request, for the one route that counts senders (events): the client's
//! address, from the socket or from the `X-Forwarded-For` of trusted proxies, and its
//! User-Agent, turned here into keyed digests that stand for them. Neither reaches
//! tiny_http or the workers, and the edge's own copies are overwritten once the digests
//! are made, so that no address or User-Agent of a site's visitor stays in the process.

use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use siphasher::sip::SipHasher13;

use super::head::Head;

/// Headers that identify a visitor: read into the digests, then overwritten.
pub(super) const IDENTIFYING: [&str; 4] =
    ["user-agent", "x-forwarded-for", "forwarded", "x-real-ip"];

/// The key of the digests, the key of the log's names for peers (random, never written
/// anywhere), how many proxies in front are trusted to name the client, and how the log
/// names peers.
pub struct Identity {
    key: (u64, u64),
    names: PeerNames,
    trusted_proxy_hops: usize,
}

/// How the log names a peer: by its address, or, when peers are hidden (live mode: any
/// peer may be a site's visitor), by `client` and a digest of its address under a key
/// drawn at start and never written. The edge and the workers name peers alike.
#[derive(Clone, Copy)]
pub struct PeerNames {
    key: Option<(u64, u64)>,
}

/// Says whether peers are hidden, never the key.
impl std::fmt::Debug for PeerNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerNames")
            .field("hidden", &self.key.is_some())
            .finish()
    }
}

impl PeerNames {
    pub fn new(hide: bool) -> PeerNames {
        PeerNames {
            key: hide.then(|| (rand::random(), rand::random())),
        }
    }

    /// `peer` as the log names it: the same name for the same address for the life of
    /// the process.
    pub fn name(&self, peer: SocketAddr) -> String {
        let Some(key) = self.key else {
            return peer.to_string();
        };
        let mut h = SipHasher13::new_with_keys(key.0, key.1);
        peer.ip().hash(&mut h);
        format!("client {:08x}", h.finish() >> 32)
    }
}

/// The digests' key when several instances count the same visitors (live mode with
/// `REDIS_URL`): a visitor must have one digest whichever instance it reaches. A digest
/// never leaves the process; what is stored is its hash under the day's key.
const FLEET_KEY: (u64, u64) = (0x7261_622d_666c_6565, 0x742d_6469_6765_7374);

impl Identity {
    /// With `fleet`, the digests are the same in every instance ([`FLEET_KEY`]); else
    /// their key is this process's, random.
    pub fn new(trusted_proxy_hops: usize, names: PeerNames, fleet: bool) -> Identity {
        Identity {
            key: if fleet {
                FLEET_KEY
            } else {
                (rand::random(), rand::random())
            },
            names,
            trusted_proxy_hops,
        }
    }

    /// `peer` as the log names it ([`PeerNames`]).
    pub fn name(&self, peer: SocketAddr) -> String {
        self.names.name(peer)
    }

    /// The `X-Edge-Client` value for `head`, from `peer`: the client's digest (for the
    /// rate limit), the visitor's (client and User-Agent), and `bot` for a User-Agent
    /// that names a crawler or is missing ([`is_bot`]). Then overwrites the identifying
    /// headers' values in `head`.
    pub fn digest(&self, head: &mut Head, peer: SocketAddr) -> String {
        let mut client = SipHasher13::new_with_keys(self.key.0, self.key.1);
        self.forwarded_client(head)
            .unwrap_or(peer.ip())
            .hash(&mut client);
        let mut visitor = client;
        let user_agent = head.header("User-Agent").unwrap_or("");
        user_agent.hash(&mut visitor);
        let mut line = String::with_capacity(40);
        let _ = write!(line, "{:016x} {:016x}", client.finish(), visitor.finish());
        if is_bot(user_agent) {
            line.push_str(" bot");
        }
        for (name, value) in &mut head.headers {
            if IDENTIFYING.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                let zeros = "0".repeat(value.len());
                value.replace_range(.., &zeros);
            }
        }
        line
    }

    /// With `n` trusted proxies, the `n`th address from the right of the last
    /// `X-Forwarded-For` (each proxy appends the address it was reached from); the
    /// header is ignored without trusted proxies, so that no client can forge it, and
    /// so is an entry that is no IP address, so that a client cannot pick its own name.
    fn forwarded_client(&self, head: &Head) -> Option<IpAddr> {
        let n = self.trusted_proxy_hops;
        if n == 0 {
            return None;
        }
        let forwarded = head
            .headers
            .iter()
            .rev()
            .find(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))?;
        let addresses: Vec<&str> = forwarded.1.split(',').collect();
        let i = addresses.len().saturating_sub(n);
        addresses.get(i).and_then(|a| ip_of(a.trim()))
    }
}

/// An address as proxies write it: `192.0.2.1`, `2001:db8::1`, with a port
/// (`192.0.2.1:443`, `[2001:db8::1]:443`) or bracketed; an IPv4-mapped IPv6 address is
/// its IPv4 one, so that one client has one name.
fn ip_of(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| entry.trim_start_matches('[').trim_end_matches(']').parse())
        .ok()?;
    Some(ip.to_canonical())
}

/// User-Agents whose events are accepted and not counted: none at all, those that name
/// themselves crawlers, previews or monitors, and HTTP libraries and command-line
/// clients, which no visitor browses with. Headless Chrome is counted: Plausible's
/// tracker already stays silent under automation, and our browser tests run it.
pub fn is_bot(user_agent: &str) -> bool {
    const BOTS: [&str; 20] = [
        "bot",
        "crawl",
        "spider",
        "slurp",
        "scrapy",
        "facebookexternalhit",
        "preview",
        "monitor",
        "uptime",
        "lighthouse",
        "curl/",
        "wget/",
        "python-",
        "go-http-client",
        "okhttp",
        "java/",
        "libwww",
        "httpclient",
        "node-fetch",
        "axios/",
    ];
    let ua = user_agent.to_ascii_lowercase();
    ua.trim().is_empty() || BOTS.iter().any(|b| ua.contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::head;

    fn head(lines: &str) -> Head {
        head::parse(format!("POST /api/event HTTP/1.1\r\nHost: x\r\n{lines}\r\n").as_bytes())
            .unwrap()
    }

    #[test]
    fn the_client_is_the_peer_unless_proxies_are_trusted() {
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let forged = "X-Forwarded-For: 198.51.100.7\r\nUser-Agent: Mozilla/5.0\r\n";
        let untrusted = Identity::new(0, PeerNames::new(false), false);
        let a = untrusted.digest(&mut head(forged), peer);
        let b = untrusted.digest(&mut head("User-Agent: Mozilla/5.0\r\n"), peer);
        assert_eq!(a, b, "a forged X-Forwarded-For is ignored");
        let trusted = Identity::new(1, PeerNames::new(false), false);
        let digests = |xff: &str| {
            trusted.digest(
                &mut head(&format!("X-Forwarded-For: {xff}\r\nUser-Agent: UA\r\n")),
                peer,
            )
        };
        let client = |line: String| line[..16].to_string();
        assert_eq!(
            client(digests("203.0.113.9")),
            client(digests("10.0.0.1, 203.0.113.9"))
        );
        assert_ne!(
            client(digests("203.0.113.9")),
            client(digests("203.0.113.8"))
        );
        // Only an IP address names a client: one client, one name.
        for same in ["203.0.113.9:443", "[203.0.113.9]", "::ffff:203.0.113.9"] {
            assert_eq!(
                client(digests("203.0.113.9")),
                client(digests(same)),
                "{same}"
            );
        }
        let v6 = client(digests("[2001:db8::1]:443"));
        assert_eq!(v6, client(digests("2001:db8::1")));
        let peer_only = client(trusted.digest(&mut head("User-Agent: UA\r\n"), peer));
        for garbage in ["garbage1", "garbage2", "unknown", ""] {
            assert_eq!(
                client(digests(garbage)),
                peer_only,
                "{garbage:?} is no address"
            );
        }
        let two = Identity::new(2, PeerNames::new(false), false);
        let mut h = head("X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\nUser-Agent: UA\r\n");
        let mut h2 = head("X-Forwarded-For: 203.0.113.9\r\nUser-Agent: UA\r\n");
        assert_eq!(
            two.digest(&mut h, peer)[..16],
            two.digest(&mut h2, peer)[..16]
        );
    }

    #[test]
    fn hidden_peers_are_named_by_a_digest() {
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert_eq!(
            Identity::new(0, PeerNames::new(false), false).name(peer),
            "192.0.2.1:5000"
        );
        let hidden = Identity::new(0, PeerNames::new(true), false);
        let name = hidden.name(peer);
        assert!(
            name.starts_with("client ") && !name.contains("192.0.2"),
            "{name}"
        );
        assert_eq!(name, hidden.name("192.0.2.1:6000".parse().unwrap()));
        assert_ne!(name, hidden.name("192.0.2.2:5000".parse().unwrap()));
    }

    #[test]
    fn digests_replace_the_identifying_headers() {
        let mut h = head("X-Forwarded-For: 203.0.113.9\r\nUser-Agent: Secret/1.0\r\n");
        let line = Identity::new(1, PeerNames::new(false), false)
            .digest(&mut h, "192.0.2.1:1".parse().unwrap());
        assert_eq!(line.len(), 33, "{line}");
        assert_eq!(h.header("User-Agent"), Some("0000000000"));
        assert_eq!(h.header("X-Forwarded-For"), Some("00000000000"));
        let mut bot = head("User-Agent: Googlebot/2.1\r\n");
        assert!(
            Identity::new(0, PeerNames::new(false), false)
                .digest(&mut bot, "192.0.2.1:1".parse().unwrap())
                .ends_with(" bot")
        );
        assert!(is_bot(""));
        for client in [
            "curl/8.5.0",
            "python-requests/2.31",
            "Wget/1.21",
            "Go-http-client/2.0",
        ] {
            assert!(is_bot(client), "{client}");
        }
        assert!(!is_bot(
            "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0"
        ));
    }
}
