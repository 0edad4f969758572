//! Who the client is behind an HTTP proxy the operator trusts (`SWITCHYARD_FORWARDED_FROM`):
//! the address its `X-Forwarded-For` names.
//!
//! nginx's `proxy_pass` cannot send the PROXY protocol, so behind it every client has
//! nginx's address, and all of them share one client's limits. A proxy listed here appends
//! the address it took the request from to `X-Forwarded-For` (nginx's
//! `$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`, Apache's `mod_proxy`);
//! what the client itself wrote stands to the left of that and is not believed. So the
//! list is read from the right, past the proxies listed (a chain of them, nginx's
//! `real_ip_recursive on`), and the first address not listed is the client's. A list
//! that ends in something other than an address names no one: the proxy's own address
//! stays the peer.
//!
//! ```text
//! X-Forwarded-For = #( IP address )       (a de facto list; RFC 7239 §5.2's `for` is the
//!                                          standard one, which these proxies do not send)
//! ```

use ipnet::IpNet;
use std::net::IpAddr;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarders {
    nets: Vec<IpNet>,
}

impl Forwarders {
    /// Parses `SWITCHYARD_FORWARDED_FROM`: addresses or CIDR blocks, comma-separated.
    pub fn parse(value: &str) -> Result<Forwarders, String> {
        let nets = crate::proxy_protocol::ProxyProtocol::parse_from(value)?;
        Ok(Forwarders { nets })
    }

    /// No proxy is trusted (the default).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `peer` is a trusted proxy (an IPv4-mapped IPv6 address as its IPv4 one).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.nets.iter().any(|net| net.contains(&peer))
    }

    /// The client that a request from a trusted proxy names in `entries`, the elements of
    /// its `X-Forwarded-For` lines in order: the last one that is not itself a trusted
    /// proxy. `None` when there is none, or when an element before it (from the right) is
    /// not an address: the list cannot then be followed to the client.
    pub fn client(&self, entries: &[&[u8]]) -> Option<IpAddr> {
        // Empty elements are ignored (RFC 9110 §5.6.1.2).
        for entry in entries.iter().rev().filter(|e| !e.trim_ascii().is_empty()) {
            let address = parse_address(entry)?;
            if !self.trusts(address) {
                return Some(address.to_canonical());
            }
        }
        None
    }
}

/// An element of `X-Forwarded-For`: an IPv4 or IPv6 address, the latter perhaps in
/// brackets, either perhaps with a port (Azure's Application Gateway appends one), which
/// is not kept.
fn parse_address(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry.trim_ascii()).ok()?;
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(address) = text.parse::<std::net::SocketAddr>() {
        return Some(address.ip());
    }
    text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(from: &str, entries: &[&str]) -> Option<IpAddr> {
        let entries: Vec<&[u8]> = entries.iter().map(|e| e.as_bytes()).collect();
        Forwarders::parse(from).unwrap().client(&entries)
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn the_address_the_proxy_appended_is_the_client() {
        assert_eq!(client("127.0.0.1", &["203.0.113.9"]), ip("203.0.113.9"));
        // What the client wrote to the left is not believed.
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6", "203.0.113.9"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client("127.0.0.1", &[" 2001:db8::7 "]),
            ip("2001:db8::7"),
            "spaces around list elements (RFC 9110 §5.6.1)"
        );
        assert_eq!(client("127.0.0.1", &["[2001:db8::7]"]), ip("2001:db8::7"));
        // A port, as Azure's Application Gateway appends one, is not kept.
        assert_eq!(
            client("127.0.0.1", &["203.0.113.9:4711"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client("127.0.0.1", &["[2001:db8::7]:4711"]),
            ip("2001:db8::7")
        );
        assert_eq!(client("127.0.0.1", &["::ffff:192.0.2.1"]), ip("192.0.2.1"));
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_past() {
        let chain = ["6.6.6.6", "198.51.100.4", "10.0.0.2", "10.0.0.3"];
        assert_eq!(client("10.0.0.0/8", &chain), ip("198.51.100.4"));
        assert_eq!(
            client("10.0.0.3", &chain),
            ip("10.0.0.2"),
            "only those listed"
        );
        assert_eq!(client("10.0.0.0/8", &["10.0.0.2"]), None, "only proxies");
    }

    #[test]
    fn a_list_that_cannot_be_followed_names_no_one() {
        assert_eq!(client("127.0.0.1", &[]), None);
        assert_eq!(client("127.0.0.1", &["unknown"]), None);
        assert_eq!(client("127.0.0.1", &["203.0.113.9:"]), None);
        assert_eq!(client("127.0.0.1", &["2001:db8::7%eth0"]), None, "no zones");
        assert_eq!(client("127.0.0.1", &["203.0.113.9\u{a0}"]), None);
        assert_eq!(
            client("127.0.0.1", &["203.0.113.9", " "]),
            ip("203.0.113.9"),
            "empty elements are ignored (RFC 9110 §5.6.1.2)"
        );
        // Past an element that is not an address, nothing further left is believed.
        assert_eq!(
            client("10.0.0.0/8", &["203.0.113.9", "x", "10.0.0.2"]),
            None
        );
        assert_eq!(client("127.0.0.1", &["\u{0}"]), None);
    }

    #[test]
    fn trusts_mapped_addresses_as_their_ipv4_selves() {
        let forwarders = Forwarders::parse("127.0.0.1, 10.1.0.0/16").unwrap();
        assert!(forwarders.trusts(ip("::ffff:127.0.0.1").unwrap()));
        assert!(forwarders.trusts(ip("10.1.200.3").unwrap()));
        assert!(!forwarders.trusts(ip("10.2.0.1").unwrap()));
        assert!(Forwarders::parse("nginx").is_err());
    }
}
