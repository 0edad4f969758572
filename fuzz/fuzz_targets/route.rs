//! Routing: every protocol offered to a plugin was listed by the client under a token the
//! plugin serves; a plugin out of service is never offered.
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
    match route(&head, input, &tokens, &in_service) {
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
    }
});
