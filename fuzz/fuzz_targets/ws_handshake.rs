//! The WebSocket opening handshake on arbitrary headers: an answer or a refusal, never a
//! panic; an accepted key gets RFC 6455's accept value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard_websocket::config::Config;
use switchyard_websocket::handshake::{accept_key, check};

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
    match check(method, &headers, &config) {
        Ok(accepted) => {
            let key = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, v)| std::str::from_utf8(v).unwrap())
                .unwrap();
            assert_eq!(accepted.accept, accept_key(key));
            assert_eq!(accepted.accept.len(), 28);
        }
        Err(rejection) => assert!((400..500).contains(&rejection.status)),
    }
});
