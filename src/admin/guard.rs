//! What the admin API lets through before any handler runs. Pure: header
//! values and the address a connection was accepted on go in, a verdict comes
//! out.
//!
//! The API trusts whoever can reach its address and, when `admin_token` is
//! set, holds the token. A web page the operator opens can reach a loopback
//! address too, in two ways, and both are closed here:
//!
//! - **DNS rebinding.** A page at `http://evil.example:24101` makes its name
//!   resolve to 127.0.0.1 and is then same-origin with the admin API: it can
//!   read answers and set any header but `Host`, which stays its own name. So
//!   every request, GET included, must name this node in `Host` (and in the
//!   request target, if that is absolute): `localhost` with or without a port,
//!   or an IP literal equal to the address the connection was accepted on (a
//!   wildcard-bound API answers on each of its addresses; a page always sends a
//!   name, never our IP). Anything else, or no `Host`, is refused with 421.
//! - **Cross-site requests.** A page of any origin can send a POST without
//!   asking first only with a form or `text/plain` type. Each POST route names
//!   the one content type it takes (415 otherwise), which such a page cannot
//!   send without a CORS preflight that this API never answers.
//!
//! While `admin_token` is set, every request that is not a read must also
//! carry it as `Authorization: Bearer` (401 otherwise; see [`super::token`]).
//!
//! The port in `Host` is not compared: rebinding changes what a name resolves
//! to, never the port, and a forwarded port should still work.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::token::AdminToken;

/// What `POST /tx` takes: the raw transaction.
pub(crate) const OCTET_STREAM: &str = "application/octet-stream";
/// What `POST /members` takes.
pub(crate) const JSON: &str = "application/json";

/// Why a request was refused before reaching its handler. The names are the
/// `reason` label of `masternode_admin_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No `Host` header.
    HostMissing,
    /// A `Host` that is not `host[:port]`.
    HostMalformed,
    /// A name other than `localhost`: what a page after DNS rebinding sends.
    HostName,
    /// An IP literal other than the one the connection reached.
    HostAddress,
    /// A POST without `Authorization: Bearer`, while `admin_token` is set.
    TokenMissing,
    /// A POST with a bearer token that is not ours.
    TokenWrong,
    /// A POST whose content type is not the one its route takes.
    ContentType,
    /// A request a browser made for a page (`Origin`, or `Sec-Fetch-Site`
    /// other than `none`).
    Browser,
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 8] = [
        Refusal::HostMissing,
        Refusal::HostMalformed,
        Refusal::HostName,
        Refusal::HostAddress,
        Refusal::TokenMissing,
        Refusal::TokenWrong,
        Refusal::ContentType,
        Refusal::Browser,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::HostMissing => "host_missing",
            Refusal::HostMalformed => "host_malformed",
            Refusal::HostName => "host_name",
            Refusal::HostAddress => "host_address",
            Refusal::TokenMissing => "token_missing",
            Refusal::TokenWrong => "token_wrong",
            Refusal::ContentType => "content_type",
            Refusal::Browser => "browser",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A `Host` (or request-target authority) that does not name this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostRefused {
    #[error("a request must carry a Host header naming this node (localhost or its IP address)")]
    Missing,
    #[error("Host {0:?} is not host[:port]")]
    Malformed(String),
    #[error("Host {0:?} is a name other than localhost; this API answers only to localhost or its own IP address")]
    Name(String),
    #[error("Host {host} is not the address {local} this connection reached")]
    Address { host: IpAddr, local: IpAddr },
}

impl HostRefused {
    pub(crate) fn refusal(&self) -> Refusal {
        match self {
            HostRefused::Missing => Refusal::HostMissing,
            HostRefused::Malformed(_) => Refusal::HostMalformed,
            HostRefused::Name(_) => Refusal::HostName,
            HostRefused::Address { .. } => Refusal::HostAddress,
        }
    }
}

/// A POST refused while `admin_token` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenRefused {
    #[error("this node takes a POST only with its admin token: Authorization: Bearer <admin_token>")]
    Missing,
    #[error("the bearer token is not this node's admin_token")]
    Wrong,
}

impl TokenRefused {
    pub(crate) fn refusal(self) -> Refusal {
        match self {
            TokenRefused::Missing => Refusal::TokenMissing,
            TokenRefused::Wrong => Refusal::TokenWrong,
        }
    }
}

/// A request a browser sent on a page's behalf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BrowserRefused {
    #[error("a request from a web page (Origin {0}) is refused: this API serves the CLI and scrapers, not pages")]
    Origin(String),
    #[error("a request a browser sent for a {0} page is refused: this API serves the CLI and scrapers, not pages")]
    FetchSite(String),
}

/// Browsers mark what they send for a page: `Origin` on every cross-origin
/// request and on POSTs, `Sec-Fetch-Site` (`cross-site`, `same-site`,
/// `same-origin`) on every request a page makes, and `none` only when the user
/// typed the address. Neither the CLI, curl nor Prometheus sends either. The
/// Host rule already stops a page after DNS rebinding; this stops a page that
/// names our address outright (`<img src=http://127.0.0.1:24101/blocks/1>`),
/// which a browser sends without asking, from costing the node a block read
/// per tag or holding its connection slots.
pub(crate) fn check_browser(origin: Option<&[u8]>, fetch_site: Option<&[u8]>) -> Result<(), BrowserRefused> {
    let shown = |raw: &[u8]| String::from_utf8_lossy(raw).chars().take(SHOWN).collect::<String>();
    if let Some(o) = origin {
        return Err(BrowserRefused::Origin(shown(o)));
    }
    match fetch_site {
        Some(site) if !site.eq_ignore_ascii_case(b"none") => Err(BrowserRefused::FetchSite(shown(site))),
        _ => Ok(()),
    }
}

/// Whether an `Authorization` value carries `token` as a bearer token.
pub(crate) fn check_token(token: &AdminToken, authorization: Option<&[u8]>) -> Result<(), TokenRefused> {
    match authorization.and_then(bearer) {
        Some(presented) if token.admits(presented) => Ok(()),
        Some(_) => Err(TokenRefused::Wrong),
        None => Err(TokenRefused::Missing),
    }
}

/// At most this much of a refused `Host` is repeated in answers and logs.
const SHOWN: usize = 64;

/// The Host rule (see the module doc). `local` is the address the connection
/// was accepted on; without it only `localhost` is accepted.
pub(crate) fn check_host(host: Option<&[u8]>, local: Option<IpAddr>) -> Result<(), HostRefused> {
    let raw = host.ok_or(HostRefused::Missing)?;
    let shown = || {
        let text = String::from_utf8_lossy(raw);
        text.chars().take(SHOWN).collect::<String>()
    };
    let text = std::str::from_utf8(raw).map_err(|_| HostRefused::Malformed(shown()))?;
    let named = match parse_host(text) {
        Some(named) => named,
        None => return Err(HostRefused::Malformed(shown())),
    };
    match named {
        Named::Localhost => Ok(()),
        Named::Ip(ip) => match local {
            Some(local) if ip.to_canonical() == local.to_canonical() => Ok(()),
            Some(local) => Err(HostRefused::Address { host: ip, local }),
            // No address to compare with: refused as any other address would be.
            None => Err(HostRefused::Address { host: ip, local: IpAddr::V4(Ipv4Addr::UNSPECIFIED) }),
        },
        Named::Other => Err(HostRefused::Name(shown())),
    }
}

enum Named {
    Localhost,
    Ip(IpAddr),
    Other,
}

/// `host[:port]` as RFC 9110 gives it: an IPv6 literal in brackets, an IPv4
/// literal, or a name; `None` when it is none of these.
fn parse_host(text: &str) -> Option<Named> {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            if !check_port(port) {
                return None;
            }
            return v6.parse::<Ipv6Addr>().ok().map(|ip| Named::Ip(IpAddr::V6(ip)));
        }
        None => match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    if !check_port(port) || host.is_empty() || host.contains(':') {
        return None;
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(Named::Ip(IpAddr::V4(ip)));
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
        return None;
    }
    Some(if host.eq_ignore_ascii_case("localhost") { Named::Localhost } else { Named::Other })
}

fn check_port(port: Option<&str>) -> bool {
    port.is_none_or(|p| {
        !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
    })
}

/// Whether a `Content-Type` value is `wanted` (parameters such as `charset`
/// aside, case-insensitive).
pub(crate) fn has_content_type(value: Option<&[u8]>, wanted: &str) -> bool {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(wanted))
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive), or `None` for any other value.
pub(crate) fn bearer(value: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_a_browser_makes_for_a_page_are_refused_and_typed_ones_pass() {
        assert_eq!(check_browser(None, None), Ok(()), "the CLI, curl, Prometheus");
        assert_eq!(check_browser(None, Some(b"none")), Ok(()), "an address typed by the user");
        assert_eq!(check_browser(None, Some(b"None")), Ok(()));
        for site in [&b"cross-site"[..], b"same-site", b"same-origin"] {
            assert!(matches!(check_browser(None, Some(site)), Err(BrowserRefused::FetchSite(_))), "{site:?}");
        }
        for origin in [&b"http://evil.example"[..], b"null", b"http://127.0.0.1:24101"] {
            assert!(matches!(check_browser(Some(origin), None), Err(BrowserRefused::Origin(_))), "{origin:?}");
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn host_rule_accepts_localhost_and_the_address_reached_and_nothing_else() {
        let v4 = Some(ip("127.0.0.1"));
        let v6 = Some(ip("::1"));
        let mapped = Some(ip("::ffff:127.0.0.1"));
        let cases: [(&str, Option<IpAddr>, Result<(), Refusal>); 27] = [
            ("localhost", v4, Ok(())),
            ("localhost:24101", v4, Ok(())),
            ("LocalHost:1", v6, Ok(())),
            ("127.0.0.1", v4, Ok(())),
            ("127.0.0.1:24101", v4, Ok(())),
            ("[::1]", v6, Ok(())),
            ("[::1]:24101", v6, Ok(())),
            // A dual-stack socket reports an IPv4 client's address mapped.
            ("127.0.0.1:24101", mapped, Ok(())),
            ("localhost", None, Ok(())),
            ("evil.example", v4, Err(Refusal::HostName)),
            ("evil.example:24101", v4, Err(Refusal::HostName)),
            ("localhost.evil.example", v4, Err(Refusal::HostName)),
            ("localhost.", v4, Err(Refusal::HostName)),
            ("127.0.0.1.nip.io", v4, Err(Refusal::HostName)),
            ("127.0.0.2:24101", v4, Err(Refusal::HostAddress)),
            ("[::1]:24101", v4, Err(Refusal::HostAddress)),
            ("127.0.0.1", v6, Err(Refusal::HostAddress)),
            ("127.0.0.1", None, Err(Refusal::HostAddress)),
            ("", v4, Err(Refusal::HostMalformed)),
            (":24101", v4, Err(Refusal::HostMalformed)),
            ("localhost:", v4, Err(Refusal::HostMalformed)),
            ("localhost:99999", v4, Err(Refusal::HostMalformed)),
            ("localhost:80x", v4, Err(Refusal::HostMalformed)),
            ("::1", v6, Err(Refusal::HostMalformed)),
            ("[::1", v6, Err(Refusal::HostMalformed)),
            ("[::1]x", v6, Err(Refusal::HostMalformed)),
            ("local host", v4, Err(Refusal::HostMalformed)),
        ];
        for (host, local, want) in cases {
            let got = check_host(Some(host.as_bytes()), local).map_err(|e| e.refusal());
            assert_eq!(got, want, "Host {host:?} on a connection to {local:?}");
        }
        assert_eq!(check_host(None, v4), Err(HostRefused::Missing));
        assert_eq!(check_host(Some(b"\xff"), v4).map_err(|e| e.refusal()), Err(Refusal::HostMalformed));
    }

    #[test]
    fn a_refused_host_is_repeated_at_most_64_characters_long() {
        let long = format!("{}.example", "a".repeat(5000));
        let Err(HostRefused::Name(shown)) = check_host(Some(long.as_bytes()), None) else { panic!("accepted") };
        assert_eq!(shown.len(), SHOWN);
    }

    #[test]
    fn content_type_is_compared_without_parameters_or_case() {
        for (value, want) in [
            (Some("application/json"), true),
            (Some("Application/JSON; charset=utf-8"), true),
            (Some(" application/json "), true),
            (Some("text/plain"), false),
            (Some("application/x-www-form-urlencoded"), false),
            (Some("multipart/form-data; boundary=x"), false),
            (Some("application/jsonx"), false),
            (None, false),
        ] {
            assert_eq!(has_content_type(value.map(str::as_bytes), JSON), want, "{value:?}");
        }
        assert!(has_content_type(Some(b"application/octet-stream"), OCTET_STREAM));
        assert!(!has_content_type(Some(b"application/json"), OCTET_STREAM));
    }

    #[test]
    fn bearer_takes_the_token_after_the_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"abc"), None);
    }

    #[test]
    fn refusal_names_are_distinct_and_indexed_in_order() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let names: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Refusal::ALL.len());
    }
}
