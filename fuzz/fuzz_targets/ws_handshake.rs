//! The WebSocket opening handshake on arbitrary headers: an answer or a refusal, never a
//! panic; an accepted key gets RFC 6455's accept value; under the same-origin policy a
//! request with more than one Origin, or one not naming its Host, is never accepted.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard_websocket::config::Config;
use switchyard_websocket::handshake::{accept_key, check};
use switchyard_websocket::origin::Origins;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET").trim();
    let headers: Vec<(&str, &[u8])> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim().as_bytes()))
        .collect();
    let config = Config::from_lookup(|name| match name {
        "SWITCHYARD_WEBSOCKET_PROTOCOLS" => Some("chat, v2".into()),
        _ => None,
    })
    .unwrap();
    let origins = match data.first() {
        Some(b) if b & 1 == 1 => Origins::same_origin(),
        _ => Origins::any(),
    };
    // Over TLS (the daemon's) or in cleartext.
    let scheme = match data.first() {
        Some(b) if b & 2 == 2 => Some("https"),
        _ => None,
    };
    let field = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect()
    };
    let (origin, host) = (field("origin"), field("host"));
    match check(method, &headers, &config, &origins, scheme) {
        Ok(accepted) => {
            let key = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, v)| std::str::from_utf8(v).unwrap())
                .unwrap();
            assert_eq!(accepted.accept, accept_key(key));
            assert_eq!(accepted.accept.len(), 28);
            assert!(origin.len() <= 1, "two Origins accepted");
            if origins.same_origin {
                if let [origin] = origin[..] {
                    let origin = String::from_utf8_lossy(origin).to_ascii_lowercase();
                    let host = String::from_utf8_lossy(host.first().copied().unwrap_or(b""))
                        .to_ascii_lowercase();
                    let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
                    assert!(
                        origin.contains(name.trim_start_matches('[').trim_end_matches(']')),
                        "{origin} accepted on {host}"
                    );
                }
            }
        }
        Err(rejection) => assert!((400..500).contains(&rejection.status)),
    }
});
