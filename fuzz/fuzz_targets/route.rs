//! Routing: every protocol offered to a plugin was listed by the client under a token the
//! plugin serves; a plugin out of service is never offered; the development console goes
//! only to a browser's plain GET or HEAD while it is on and a WebSocket plugin serves.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::http::head::{parse, Limits, Parsed};
use switchyard::route::{route, Route, TokenTable};

fuzz_target!(|data: &[u8]| {
    let [out_of_service, input @ ..] = data else {
        return;
    };
    let limits = Limits {
        head: 8192,
        target: 4096,
    };
    let Ok(Parsed::Complete(head)) = parse(input, limits) else {
        return;
    };
    let mut tokens = TokenTable::default();
    for (i, token) in ["echo", "websocket", "tcp", "h2c"].iter().enumerate() {
        tokens.insert(token, i).unwrap();
    }
    let in_service = |plugin: usize| plugin != usize::from(*out_of_service % 5);
    let console = out_of_service & 0x80 != 0;
    match route(&head, input, &tokens, &in_service, console) {
        Route::Upgrade(offers) => {
            assert!(head.wants_upgrade && !offers.is_empty());
            let listed: Vec<&[u8]> = head.list(input, "upgrade").collect();
            for offer in &offers {
                assert!(in_service(offer.plugin));
                let product = offer.product.get(input);
                assert!(listed.contains(&product));
                let name = product.split(|&b| b == b'/').next().unwrap();
                assert_eq!(tokens.find(name), Some(offer.plugin));
            }
        }
        Route::Answer(response) => assert!((200..600).contains(&response.status)),
        // HEAD is answered as GET, without the body (e216216).
        Route::Metrics | Route::Status(_) => {
            assert!(matches!(head.method(input), "GET" | "HEAD"))
        }
        Route::Readiness => assert!(matches!(head.method(input), "GET" | "HEAD")),
        Route::Console => {
            assert!(console && !head.wants_upgrade && in_service(1));
            assert!(matches!(head.method(input), "GET" | "HEAD"));
            assert!(head
                .list(input, "accept")
                .any(|a| a.to_ascii_lowercase().starts_with(b"text/html")));
        }
    }
});
