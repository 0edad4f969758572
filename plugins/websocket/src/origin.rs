//! Which web pages may open a WebSocket: the `Origin` check (RFC 6455 §4.2.2 item 4, §10.2;
//! RFC 6454), pure.
//!
//! A browser lets any page open a WebSocket to any host, sending the page's origin in
//! `Origin`; nothing else stops a page on `evil.example` from driving a visitor's browser
//! into a route to a terminal or a VNC server (cross-site WebSocket hijacking). So routes
//! to real services (`tcp://`, `unix:`, `exec:`) only take pages of the daemon's own origin
//! unless `SWITCHYARD_WEBSOCKET_ORIGINS` says otherwise; `echo` routes take any page.
//! A request without `Origin` (not from a browser) is always allowed: only browsers need
//! the check, and they always send the field. A request with two is refused: a user agent
//! sends at most one (RFC 6454 §7.3), so two are a forgery.
//!
//! `same-origin` alone does not stop DNS rebinding: a page on `http://evil.example:8080`
//! whose name is then made to resolve to the daemon's address opens a WebSocket whose
//! `Origin` and `Host` are both `evil.example:8080`, the same origin. Such a page is always
//! `http` (over TLS its name would need our certificate), so a page over `http` is taken as
//! the same origin only on an IP address, `localhost` (or a `.localhost` name), or a name
//! in `SWITCHYARD_WEBSOCKET_HOSTS` (`*`: any, as before), as Vite's and webpack's dev
//! servers do for the same attack.

/// What `SWITCHYARD_WEBSOCKET_ORIGINS` allows: `*` (any page), `same-origin` (pages whose
/// origin is the request's `Host`), and origins by name (`https://app.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origins {
    pub any: bool,
    pub same_origin: bool,
    pub listed: Vec<String>,
    /// `SWITCHYARD_WEBSOCKET_HOSTS`: the names (lower case) a page over `http` may be the
    /// same origin on, besides IP addresses and `localhost`; `None`: any name.
    pub http_hosts: Option<Vec<String>>,
}

/// Parses `SWITCHYARD_WEBSOCKET_HOSTS`: names, comma-separated; `*` for any.
pub fn parse_hosts(value: &str) -> Option<Vec<String>> {
    let names: Vec<String> = protocol_api::fields::setting_list(value)
        .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    (!names.iter().any(|name| name == "*")).then_some(names)
}

/// The setting's keyword for "the page's origin is this host".
pub const SAME_ORIGIN: &str = "same-origin";

impl Origins {
    /// Any page (the default for `echo` routes).
    pub fn any() -> Origins {
        Origins {
            any: true,
            ..Origins::default()
        }
    }

    /// Pages of the daemon's own origin (the default for routes to services); over `http`,
    /// on IP addresses and `localhost` only.
    pub fn same_origin() -> Origins {
        Origins {
            same_origin: true,
            http_hosts: Some(Vec::new()),
            ..Origins::default()
        }
    }

    /// The same, with `http_hosts` for what a page over `http` may be the same origin on.
    pub fn with_http_hosts(mut self, http_hosts: Option<Vec<String>>) -> Origins {
        self.http_hosts = http_hosts;
        self
    }

    /// Whether a page over `http` on `name` may be the same origin as the daemon (see the
    /// module's docs on DNS rebinding).
    fn http_host_allowed(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        let literal = name.parse::<std::net::Ipv4Addr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|v6| v6.strip_suffix(']'))
                .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok());
        literal
            || name == "localhost"
            || name.ends_with(".localhost")
            || self
                .http_hosts
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// Parses the setting's comma-separated entries.
    pub fn parse(value: &str) -> Result<Origins, String> {
        let mut origins = Origins {
            http_hosts: Some(Vec::new()),
            ..Origins::default()
        };
        for entry in protocol_api::fields::setting_list(value) {
            if entry == "*" {
                origins.any = true;
            } else if entry.eq_ignore_ascii_case(SAME_ORIGIN) {
                origins.same_origin = true;
            } else if Origin::parse(entry).is_some() {
                origins.listed.push(entry.to_string());
            } else if entry.eq_ignore_ascii_case("null") {
                // A page opened from a file sends `Origin: null`; so does any site's
                // sandboxed frame, so allowing it is allowing every page.
                return Err(format!(
                    "invalid SWITCHYARD_WEBSOCKET_ORIGINS entry {entry:?}: `Origin: null` is \
                     what any page's sandboxed frame sends, not only a file opened in a \
                     browser; * allows every page, if that is meant"
                ));
            } else {
                return Err(format!(
                    "invalid SWITCHYARD_WEBSOCKET_ORIGINS entry {entry:?}: expected an origin \
                     (scheme://host[:port]), {SAME_ORIGIN} or *"
                ));
            }
        }
        if !origins.any && !origins.same_origin && origins.listed.is_empty() {
            return Err(
                "SWITCHYARD_WEBSOCKET_ORIGINS is empty: name origins, same-origin or *".into(),
            );
        }
        Ok(origins)
    }

    /// Whether a request with these `Origin` field values (as received) and this `Host` may
    /// switch; the reason when not. `scheme` is the one the request came by when the
    /// daemon knows it (`https`: it terminated TLS); in cleartext it may be behind a proxy
    /// that terminated TLS, so a page's `https` origin is taken as its own there.
    pub fn check(
        &self,
        origins: &[&str],
        host: Option<&str>,
        scheme: Option<&str>,
    ) -> Result<(), &'static str> {
        let origin = match origins {
            [] => return Ok(()), // not a browser
            [origin] => *origin,
            _ => return Err("more than one Origin"),
        };
        if self.any {
            return Ok(());
        }
        if self.listed.iter().any(|a| same_serialised(a, origin)) {
            return Ok(());
        }
        match Origin::parse(origin) {
            Some(page) if self.same_origin && host.is_some_and(|h| page.is_host(h, scheme)) => {
                match page.scheme != "http" || self.http_host_allowed(&page.host) {
                    true => Ok(()),
                    false => Err(
                        "a page over http on a name not in SWITCHYARD_WEBSOCKET_HOSTS \
                                  (DNS rebinding)",
                    ),
                }
            }
            _ => Err(
                "Origin not allowed (neither the page's own host nor listed in \
                 SWITCHYARD_WEBSOCKET_ORIGINS)",
            ),
        }
    }
}

/// Two origins as text, compared as RFC 6454 §4 serialises them: case-insensitively, and a
/// port written out the same as one left to the scheme's default.
fn same_serialised(a: &str, b: &str) -> bool {
    match (Origin::parse(a), Origin::parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A serialised origin, `scheme://host[:port]` (RFC 6454 §6.1), with the port made explicit.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `host[:port]` of an authority (`[v6]:port` too): the host lower-cased, and the port.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            (format!("[{host}]"), rest.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        },
    };
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let (host, port) = split_authority(authority)?;
        let port = port.or_else(|| default_port(&scheme))?;
        Some(Origin { scheme, host, port })
    }

    /// Whether this origin is the host the request was sent to (`Host`): the same name and
    /// port, a `Host` without a port meaning the origin scheme's default one (a page at
    /// `https://x/` opens `wss://x/`, both on 443).
    /// Whether this origin is the host a request was sent to, by `scheme` when it is known
    /// (RFC 6454 §5: another scheme is another origin), else by the origin's own.
    fn is_host(&self, host: &str, scheme: Option<&str>) -> bool {
        if scheme.is_some_and(|scheme| scheme != self.scheme) {
            return false;
        }
        let scheme = scheme.unwrap_or(&self.scheme);
        match split_authority(host.trim()) {
            Some((name, port)) => {
                name == self.host && port.or_else(|| default_port(scheme)) == Some(self.port)
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6454_7_3_two_origins_are_refused_whatever_the_policy() {
        let good = "https://good.example";
        for policy in [Origins::any(), Origins::parse(good).unwrap()] {
            assert_eq!(
                policy.check(&[good, "https://evil.example"], Some("x"), None),
                Err("more than one Origin")
            );
            assert_eq!(
                policy.check(&[good, good], Some("x"), None),
                Err("more than one Origin")
            );
        }
    }

    #[test]
    fn same_origin_is_the_host_the_request_was_sent_to() {
        let same = Origins::same_origin().with_http_hosts(parse_hosts("app.example"));
        for (origin, host, allowed) in [
            ("http://app.example:8080", "app.example:8080", true),
            ("http://APP.example:8080", "app.example:8080", true),
            ("https://app.example", "app.example", true),
            ("https://app.example", "app.example:443", true),
            ("http://app.example", "app.example:80", true),
            ("http://[::1]:8080", "[::1]:8080", true),
            ("http://app.example:8080", "app.example:8081", false),
            ("http://evil.example:8080", "app.example:8080", false),
            ("https://app.example", "app.example:8080", false),
            ("null", "app.example", false),
            ("http://app.example.evil.example", "app.example", false),
        ] {
            assert_eq!(
                same.check(&[origin], Some(host), None).is_ok(),
                allowed,
                "{origin} on {host}"
            );
        }
        assert!(
            same.check(&[], Some("app.example"), None).is_ok(),
            "not a browser"
        );
        assert!(same.check(&["http://a"], None, None).is_err());
    }

    /// Regression (attacker's review): a rebound name is its own origin's `Host`.
    #[test]
    fn a_page_over_http_is_the_same_origin_only_on_addresses_localhost_and_listed_names() {
        let same = Origins::same_origin();
        for (origin, host, allowed) in [
            ("http://evil.example:8080", "evil.example:8080", false),
            ("http://EVIL.example.:8080", "evil.example.:8080", false),
            ("http://127.0.0.1:8080", "127.0.0.1:8080", true),
            ("http://[::1]:8080", "[::1]:8080", true),
            ("http://192.168.1.5", "192.168.1.5", true),
            ("http://localhost:8080", "localhost:8080", true),
            ("http://term.localhost:8080", "term.localhost:8080", true),
            // Over TLS a rebound page cannot be ours: any name.
            ("https://app.example", "app.example", true),
        ] {
            assert_eq!(
                same.check(&[origin], Some(host), None).is_ok(),
                allowed,
                "{origin} on {host}"
            );
        }
        let listed = Origins::same_origin().with_http_hosts(parse_hosts("pi.local, App.Example"));
        assert!(listed
            .check(&["http://pi.local:8080"], Some("pi.local:8080"), None)
            .is_ok());
        assert!(listed
            .check(&["http://app.example"], Some("app.example"), None)
            .is_ok());
        assert!(listed
            .check(&["http://evil.example"], Some("evil.example"), None)
            .is_err());
        let any = Origins::same_origin().with_http_hosts(parse_hosts("*"));
        assert!(any
            .check(&["http://evil.example"], Some("evil.example"), None)
            .is_ok());
    }

    #[test]
    fn rfc6454_5_over_tls_the_page_must_be_https_too() {
        let same = Origins::same_origin();
        for (origin, host, allowed) in [
            ("https://app.example", "app.example", true),
            ("https://app.example:8443", "app.example:8443", true),
            // A cleartext page of the same host is another origin: it could be anyone's.
            ("http://app.example", "app.example", false),
            ("http://app.example:8443", "app.example:8443", false),
            // Host without a port means the scheme's default: 443 here.
            ("https://app.example:80", "app.example", false),
        ] {
            assert_eq!(
                same.check(&[origin], Some(host), Some("https")).is_ok(),
                allowed,
                "{origin} on {host} over TLS"
            );
        }
    }

    #[test]
    fn the_setting_names_origins_same_origin_or_any() {
        let listed = Origins::parse("https://a.example, same-origin")
            .unwrap()
            .with_http_hosts(None);
        assert!(listed
            .check(&["https://A.example:443"], Some("b"), None)
            .is_ok());
        assert!(listed.check(&["http://b:81"], Some("b:81"), None).is_ok());
        assert!(listed
            .check(&["https://c.example"], Some("b"), None)
            .is_err());
        assert!(Origins::parse("*")
            .unwrap()
            .check(&["https://c"], None, None)
            .is_ok());
        for bad in ["a.example", "https://", " , "] {
            assert!(Origins::parse(bad).is_err(), "{bad}");
        }
    }
}
