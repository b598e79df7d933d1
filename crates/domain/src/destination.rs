//! [`DestinationPolicy`]: where a callback may go — the scheme, the host name, and every
//! address the host stands for. The service checks a `callback_url` against it when a job is
//! submitted; the sender (`callback-sender`) checks it again at every delivery, down to the
//! address it connects to.
//!
//! A callback URL comes from a caller, so without rules it is a way to make talkgate send
//! requests into its own network (SSRF): to loopback services, the cloud metadata endpoint
//! (`169.254.169.254`, `fd00:ec2::254`), private ranges. The rules:
//! - `https` only, unless [`DestinationPolicy::allow_http`];
//! - no host named `localhost` (or `*.localhost`), and none of the metadata names;
//! - no address that is loopback, unspecified, private (RFC 1918), shared (CGNAT,
//!   100.64/10), link-local (which holds the metadata endpoint), unique-local (fc00::/7),
//!   site-local, multicast, broadcast, documentation, benchmarking or reserved; IPv4-mapped,
//!   IPv4-compatible, NAT64 and 6to4 IPv6 addresses are judged by the IPv4 address inside;
//! - unless the address is inside one of [`DestinationPolicy::allowed_nets`] (tests allow
//!   `127.0.0.0/8`; a deployment can allow its own receivers' network).
//!
//! The URL's host is checked as text here ([`DestinationPolicy::check_url`]: literal
//! addresses in any form the URL standard accepts — `2130706433`, `0x7f000001`, `[::1]` —
//! are parsed to the address they mean); a name is not resolved here (no I/O in `domain`):
//! every address it resolves to is checked by the resolver the sender connects through, so a
//! name that resolves to a public address when checked and to an internal one when
//! connecting (DNS rebinding) is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::callback::CallbackUrl;
pub use ipnet::IpNet;
use url::{Host, Url};

/// Host names refused whatever they resolve to (the cloud metadata services' names).
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// The rules a destination must pass (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    /// Also allow `http://` URLs (signed, but readable on the way).
    pub allow_http: bool,
    /// Networks allowed even though the rules refuse them (e.g. `127.0.0.0/8` in tests).
    pub allowed_nets: Vec<IpNet>,
}

/// A destination the rules refuse, and why (for the job's record; it names the rule, not
/// more of the URL than the caller sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not `https` (or `http` when allowed).
    #[error("the scheme {0:?} is not allowed (https only, unless http is allowed)")]
    Scheme(String),
    /// No usable host.
    #[error("the URL has no host")]
    NoHost,
    /// A name that always means this machine or a metadata service.
    #[error("the host {0:?} is not allowed")]
    Name(String),
    /// An address of a refused kind.
    #[error("the address {address} is {kind}, which callbacks may not reach")]
    Address {
        /// The address.
        address: IpAddr,
        /// Its kind (`loopback`, `private`, `link-local`…).
        kind: &'static str,
    },
    /// A name that resolves to no address at all.
    #[error("the host {0:?} resolves to no address")]
    Unresolved(String),
}

impl DestinationPolicy {
    /// Checks `url`'s scheme and host (a literal address by its kind); `Ok` with the parsed
    /// URL. A name still has to pass [`DestinationPolicy::check_address`] for each address it
    /// resolves to.
    pub fn check_url(&self, url: &CallbackUrl) -> Result<Url, Refusal> {
        let parsed = Url::parse(url.as_str()).map_err(|_| Refusal::NoHost)?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => return Err(Refusal::Scheme(other.to_owned())),
        }
        match parsed.host() {
            None => return Err(Refusal::NoHost),
            Some(Host::Ipv4(v4)) => self.check_address(IpAddr::V4(v4))?,
            Some(Host::Ipv6(v6)) => self.check_address(IpAddr::V6(v6))?,
            Some(Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name.is_empty() {
                    return Err(Refusal::NoHost);
                }
                if name == "localhost"
                    || name.ends_with(".localhost")
                    || METADATA_NAMES.contains(&name.as_str())
                {
                    return Err(Refusal::Name(name));
                }
            }
        }
        Ok(parsed)
    }

    /// Checks one address the destination stands for.
    pub fn check_address(&self, address: IpAddr) -> Result<(), Refusal> {
        let Some(kind) = refused_kind(address) else {
            return Ok(());
        };
        if self.allowed_nets.iter().any(|net| net.contains(&address)) {
            return Ok(());
        }
        Err(Refusal::Address { address, kind })
    }
}

/// The kind of `address` if callbacks may not reach it; `None` for a public unicast address.
pub fn refused_kind(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [o1, o2, o3, _] = a.octets();
    Some(match () {
        () if a.is_unspecified() || o1 == 0 => "unspecified (this network, 0.0.0.0/8)",
        () if a.is_loopback() => "loopback",
        () if a.is_private() => "private",
        () if o1 == 100 && (64..128).contains(&o2) => "shared address space (100.64.0.0/10)",
        () if a.is_link_local() => "link-local (the cloud metadata range)",
        () if o1 == 192 && o2 == 0 && o3 == 0 => "IETF protocol assignments (192.0.0.0/24)",
        () if a.is_documentation() => "documentation",
        () if o1 == 198 && (o2 == 18 || o2 == 19) => "benchmarking (198.18.0.0/15)",
        () if a.is_multicast() => "multicast",
        () if a.is_broadcast() || o1 >= 240 => "reserved",
        () => return None,
    })
}

fn refused_v6(a: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = a.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    let segments = a.segments();
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    Some(match segments {
        _ if a.is_unspecified() => "unspecified",
        _ if a.is_loopback() => "loopback",
        _ if a.is_multicast() => "multicast",
        [s, ..] if s & 0xfe00 == 0xfc00 => "unique-local (fc00::/7)",
        [s, ..] if s & 0xffc0 == 0xfe80 => "link-local",
        [s, ..] if s & 0xffc0 == 0xfec0 => "site-local",
        [0x2001, 0x0db8, ..] => "documentation",
        [s, ..] if s & 0xfff0 == 0x3ff0 => "documentation (3fff::/20)",
        [0x2001, 0, ..] => "Teredo (2001::/32)",
        [0x0100, 0, 0, 0, ..] => "discard-only (100::/64)",
        [0x64, 0xff9b, 1, ..] => "local-use NAT64 (64:ff9b:1::/48)",
        // IPv4-translated (SIIT): judged by the IPv4 address inside.
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => return refused_v4(embedded(hi, lo)),
        // IPv4-compatible (deprecated), NAT64 and 6to4 addresses carry an IPv4 address.
        [0, 0, 0, 0, 0, 0, hi, lo] => {
            return refused_v4(embedded(hi, lo)).or(Some("IPv4-compatible"));
        }
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return refused_v4(embedded(hi, lo)),
        [0x2002, hi, lo, ..] => return refused_v4(embedded(hi, lo)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(raw: &str) -> CallbackUrl {
        CallbackUrl::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn internal_destinations_in_every_spelling_are_refused() {
        let policy = DestinationPolicy::default();
        for raw in [
            "https://127.0.0.1/hook",
            "https://127.1.2.3/hook",
            "https://[::1]/hook",
            "https://localhost/hook",
            "https://LOCALHOST./hook",
            "https://api.localhost/hook",
            "https://0.0.0.0/hook",
            "https://10.0.0.1/hook",
            "https://172.16.5.4/hook",
            "https://192.168.1.1/hook",
            "https://100.64.0.1/hook",
            "https://169.254.169.254/latest/meta-data/",
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://2130706433/hook",
            "https://0x7f000001/hook",
            "https://017700000001/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://[::ffff:a9fe:a9fe]/hook",
            "https://[fd00:ec2::254]/hook",
            "https://[fe80::1]/hook",
            "https://[ff02::1]/hook",
            "https://[64:ff9b::7f00:1]/hook",
            "https://[2002:7f00:1::]/hook",
            "https://[::ffff:0:7f00:1]/hook",
            "https://[64:ff9b:1::a00:1]/hook",
            "https://[2001:0:4136:e378::1]/hook",
            "https://[100::1]/hook",
            "https://[3fff::1]/hook",
            "https://224.0.0.1/hook",
            "https://255.255.255.255/hook",
        ] {
            assert!(policy.check_url(&url(raw)).is_err(), "{raw} was allowed");
        }
    }

    #[test]
    fn https_to_public_hosts_passes_and_http_only_when_allowed() {
        let policy = DestinationPolicy::default();
        for raw in [
            "https://example.com/hook",
            "https://93.184.216.34/hook",
            "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
        ] {
            assert!(policy.check_url(&url(raw)).is_ok(), "{raw}");
        }
        assert_eq!(
            policy.check_url(&url("http://example.com/hook")),
            Err(Refusal::Scheme("http".into()))
        );
        let http = DestinationPolicy {
            allow_http: true,
            ..DestinationPolicy::default()
        };
        assert!(http.check_url(&url("http://example.com/hook")).is_ok());
    }

    #[test]
    fn an_allowed_network_opens_exactly_that_network() {
        let policy = DestinationPolicy {
            allow_http: true,
            allowed_nets: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert!(policy.check_url(&url("http://127.0.0.1:8080/hook")).is_ok());
        assert!(policy.check_address("10.0.0.1".parse().unwrap()).is_err());
        assert!(policy.check_address("::1".parse().unwrap()).is_err());
        // The names stay refused: an allowed network is about addresses.
        assert!(
            policy
                .check_url(&url("http://localhost:8080/hook"))
                .is_err()
        );
    }

    #[test]
    fn refusals_name_the_kind() {
        let err = DestinationPolicy::default()
            .check_url(&url("https://169.254.169.254/latest/meta-data/"))
            .unwrap_err();
        assert!(err.to_string().contains("link-local"), "{err}");
        assert_eq!(refused_kind("8.8.8.8".parse().unwrap()), None);
        assert_eq!(
            refused_kind("::ffff:10.1.1.1".parse().unwrap()),
            Some("private")
        );
    }
}
