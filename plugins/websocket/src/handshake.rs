//! The opening handshake (RFC 6455 §4.2), pure: a request's method and headers in, the
//! `101`'s headers or the refusal out.
//!
//! The daemon has already checked HTTP/1.1, `Host`, `Connection: upgrade` and that
//! `websocket` is in `Upgrade`; what is left is WebSocket's own:
//! - `GET` (§4.1), a `Sec-WebSocket-Key` that base64-decodes to 16 bytes: else `400`;
//! - `Sec-WebSocket-Version: 13`: missing `400`, another version `426` naming 13 (§4.4);
//! - an `Origin` the route does not allow, or two of them: `403` (§4.2.2 item 4, §10.2;
//!   see [`crate::origin`]);
//! - at most one subprotocol, ours by preference among those the client listed (§4.2.2).

use crate::config::Config;
use crate::origin::Origins;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use protocol_api::Rejection;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What the `101` carries besides `Upgrade` and `Connection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub accept: String,
    pub protocol: Option<String>,
    /// permessage-deflate, when the client offered it and it is enabled.
    pub deflate: Option<crate::deflate::Agreement>,
}

/// `Sec-WebSocket-Accept` for a key (§4.2.2 item 5.4).
pub fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(GUID.as_bytes());
    STANDARD.encode(sha1.finalize())
}

fn refuse(status: u16, why: &str) -> Rejection {
    Rejection {
        status,
        headers: Vec::new(),
        body: format!("WebSocket handshake refused: {why}\n").into_bytes(),
    }
}

/// Checks a handshake. `headers` are (name, value) as received; `origins` are the pages
/// the route takes; `scheme` is `https` when the daemon terminated TLS (see
/// [`Origins::check`]).
pub fn check(
    method: &str,
    headers: &[(&str, &[u8])],
    config: &Config,
    origins: &Origins,
    scheme: Option<&str>,
) -> Result<Accepted, Rejection> {
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| std::str::from_utf8(v).unwrap_or("\u{fffd}").trim())
            .collect()
    };
    if method != "GET" {
        return Err(refuse(400, "the method must be GET"));
    }
    let key = match values("sec-websocket-key")[..] {
        [key] if STANDARD.decode(key).is_ok_and(|k| k.len() == 16) => key,
        [] => return Err(refuse(400, "missing Sec-WebSocket-Key")),
        _ => {
            return Err(refuse(
                400,
                "Sec-WebSocket-Key must be one base64 value of 16 bytes",
            ))
        }
    };
    match values("sec-websocket-version")[..] {
        ["13"] => {}
        [] => return Err(refuse(400, "missing Sec-WebSocket-Version")),
        _ => {
            return Err(refuse(426, "only Sec-WebSocket-Version 13 is supported")
                .with_header("Sec-WebSocket-Version", "13"))
        }
    }
    if let Err(why) = origins.check(&values("origin"), values("host").first().copied(), scheme) {
        return Err(refuse(403, why));
    }
    let offered: Vec<&str> = values("sec-websocket-protocol")
        .iter()
        .flat_map(|v| protocol_api::fields::list_items(v.as_bytes()))
        .filter_map(|p| std::str::from_utf8(p).ok())
        .collect();
    let protocol = config
        .protocols
        .iter()
        .find(|ours| offered.contains(&ours.as_str()))
        .cloned();
    let deflate = match config.deflate {
        true => crate::deflate::negotiate(&values("sec-websocket-extensions")),
        false => None,
    };
    Ok(Accepted {
        accept: accept_key(key),
        protocol,
        deflate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_lookup(|_| None).unwrap()
    }

    const KEY: (&str, &[u8]) = ("Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==");
    const V13: (&str, &[u8]) = ("Sec-WebSocket-Version", b"13");

    #[test]
    fn rfc6455_1_3_accept_key_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let accepted = check("GET", &[KEY, V13], &config(), &Origins::any(), None).unwrap();
        assert_eq!(
            accepted,
            Accepted {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                protocol: None,
                deflate: None,
            }
        );
        let offer = (
            "Sec-WebSocket-Extensions",
            &b"permessage-deflate; client_max_window_bits"[..],
        );
        let accepted = check("GET", &[KEY, V13, offer], &config(), &Origins::any(), None).unwrap();
        assert!(accepted.deflate.is_some(), "RFC 7692 offer accepted");
        let mut off = config();
        off.deflate = false;
        assert_eq!(
            check("GET", &[KEY, V13, offer], &off, &Origins::any(), None)
                .unwrap()
                .deflate,
            None,
            "unless turned off"
        );
    }

    #[test]
    fn rfc6455_4_2_1_bad_requests_are_400() {
        let c = config();
        assert_eq!(
            check("POST", &[KEY, V13], &c, &Origins::any(), None)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            check("GET", &[V13], &c, &Origins::any(), None)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            check(
                "GET",
                &[("Sec-WebSocket-Key", b"c2hvcnQ="), V13],
                &c,
                &Origins::any(),
                None,
            )
            .unwrap_err()
            .status,
            400
        );
        assert_eq!(
            check(
                "GET",
                &[("Sec-WebSocket-Key", b"not base64!"), V13],
                &c,
                &Origins::any(),
                None,
            )
            .unwrap_err()
            .status,
            400
        );
        assert_eq!(
            check("GET", &[KEY, KEY, V13], &c, &Origins::any(), None)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            check("GET", &[KEY], &c, &Origins::any(), None)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn rfc6455_4_4_other_versions_get_426_naming_13() {
        let refused = check(
            "GET",
            &[KEY, ("Sec-WebSocket-Version", b"8")],
            &config(),
            &Origins::any(),
            None,
        )
        .unwrap_err();
        assert_eq!(refused.status, 426);
        assert_eq!(
            refused.headers,
            [("Sec-WebSocket-Version".to_string(), "13".to_string())]
        );
    }

    #[test]
    fn rfc6455_10_2_origins_outside_the_list_get_403() {
        let c = config();
        let allowed = Origins::parse("https://good.example").unwrap();
        let good = ("Origin", &b"https://good.example"[..]);
        let evil = ("Origin", &b"https://evil.example"[..]);
        assert!(check("GET", &[KEY, V13, good], &c, &allowed, None).is_ok());
        assert_eq!(
            check("GET", &[KEY, V13, evil], &c, &allowed, None)
                .unwrap_err()
                .status,
            403
        );
        assert!(
            check("GET", &[KEY, V13], &c, &allowed, None).is_ok(),
            "non-browser clients send no Origin"
        );
        let two = check("GET", &[KEY, V13, evil, good], &c, &allowed, None).unwrap_err();
        assert_eq!(two.status, 403, "RFC 6454 §7.3: one Origin at most");
        let host = ("Host", &b"good.example:8080"[..]);
        let page = ("Origin", &b"http://good.example:8080"[..]);
        let same = Origins::same_origin();
        // A page over http on a name is refused unless the name is listed (DNS rebinding).
        assert_eq!(
            check("GET", &[host, KEY, V13, page], &c, &same, None)
                .unwrap_err()
                .status,
            403
        );
        let same = same.with_http_hosts(crate::origin::parse_hosts("good.example"));
        assert!(check("GET", &[host, KEY, V13, page], &c, &same, None).is_ok());
        assert_eq!(
            check("GET", &[host, KEY, V13, evil], &c, &same, None)
                .unwrap_err()
                .status,
            403
        );
    }

    #[test]
    fn rfc6455_4_2_2_one_subprotocol_by_our_preference_among_the_clients() {
        let mut c = config();
        c.protocols = vec!["v2.chat".into(), "v1.chat".into()];
        let offer = ("Sec-WebSocket-Protocol", &b"v1.chat, v2.chat"[..]);
        assert_eq!(
            check("GET", &[KEY, V13, offer], &c, &Origins::any(), None)
                .unwrap()
                .protocol
                .as_deref(),
            Some("v2.chat")
        );
        let other = ("Sec-WebSocket-Protocol", &b"mqtt"[..]);
        assert_eq!(
            check("GET", &[KEY, V13, other], &c, &Origins::any(), None)
                .unwrap()
                .protocol,
            None
        );
    }
}
