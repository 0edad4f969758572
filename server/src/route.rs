//! What to do with a request, as a pure function of its head: switch (and to which
//! plugins, in the client's order), or answer it here.
//!
//! RFC 9110 §7.8: the server never switches to a protocol the client did not list, ignores
//! names it does not know, and answers as if `Upgrade` were absent when nothing listed is
//! available. We take the client's order of preference: the first listed protocol whose
//! plugin accepts wins.

use crate::http::head::Head;
use crate::http::response::Response;
use crate::http::Span;

/// `Upgrade` tokens (lower-case) to the index of the plugin serving each, in load order.
#[derive(Debug, Default, Clone)]
pub struct TokenTable {
    entries: Vec<(String, usize)>,
}

impl TokenTable {
    /// Adds `token` for `plugin`; on a clash returns the plugin that already serves it.
    pub fn insert(&mut self, token: &str, plugin: usize) -> Result<(), usize> {
        let token = token.to_ascii_lowercase();
        match self.entries.iter().find(|(t, _)| *t == token) {
            Some(&(_, owner)) => Err(owner),
            None => {
                self.entries.push((token, plugin));
                Ok(())
            }
        }
    }

    /// The plugin serving the protocol `name` (case-insensitive).
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .find(|(t, _)| t.as_bytes().eq_ignore_ascii_case(name))
            .map(|&(_, p)| p)
    }

    /// The tokens of plugins in service, comma-separated, for `Upgrade` in `426` (our order
    /// of preference).
    pub fn advertised(&self, in_service: &dyn Fn(usize) -> bool) -> String {
        self.entries
            .iter()
            .filter(|(_, plugin)| in_service(*plugin))
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One protocol the client offered that a loaded plugin serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub plugin: usize,
    /// The product as the client sent it (`websocket`, `foo/2`), echoed in the `101`.
    pub product: Span,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Ask these plugins, in this order; answer with [`plain_answer`] if all decline.
    Upgrade(Vec<Offer>),
    /// Answer here.
    Answer(Response),
    /// `GET /metrics`: the caller renders its counters.
    Metrics,
    /// `GET /readyz`: the caller says whether it wants new connections.
    Readiness,
    /// `GET /status` (the page) or `GET /status.json` (its data): the caller checks who
    /// asks, then renders.
    Status(StatusPage),
    /// A browser's plain `GET` where the development console is on
    /// (`SWITCHYARD_DEVCONSOLE`, websocketd's `--devconsole`): the console page, which
    /// opens a WebSocket to the same address.
    Console,
}

/// Which part of the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPage {
    Html,
    Json,
}

/// Decides on a request. `in_service` says which plugins take new connections: offers of
/// the others are left out, and a request that offered only those gets `503`. With
/// `console` (`SWITCHYARD_DEVCONSOLE`), a browser's `GET` that would get `426` while a
/// WebSocket plugin is in service gets [`Route::Console`].
pub fn route(
    head: &Head,
    bytes: &[u8],
    tokens: &TokenTable,
    in_service: &dyn Fn(usize) -> bool,
    console: bool,
) -> Route {
    if head.wants_upgrade {
        let mut offers: Vec<Offer> = Vec::new();
        let mut out_of_service = false;
        for product in head.list(bytes, "upgrade") {
            let name = product.split(|&b| b == b'/').next().unwrap_or(product);
            let Some(plugin) = tokens.find(name) else {
                continue;
            };
            if !in_service(plugin) {
                out_of_service = true;
            } else if offers.iter().all(|o| o.plugin != plugin) {
                offers.push(Offer {
                    plugin,
                    product: Span::of(bytes, product),
                });
            }
        }
        if !offers.is_empty() {
            return Route::Upgrade(offers);
        }
        if out_of_service {
            let response = Response::error(503, "the protocol asked for is out of service");
            return Route::Answer(response);
        }
    }
    // RFC 9110 §9.3.2: HEAD is GET without the body (which the answer's writer leaves out).
    match (head.method(bytes), head.path(bytes)) {
        ("GET" | "HEAD", "/metrics") => return Route::Metrics,
        ("GET" | "HEAD", "/readyz") => return Route::Readiness,
        ("GET" | "HEAD", "/status") => return Route::Status(StatusPage::Html),
        ("GET" | "HEAD", "/status.json") => return Route::Status(StatusPage::Json),
        _ => {}
    }
    if console && wants_console(head, bytes, tokens, in_service) {
        return Route::Console;
    }
    Route::Answer(plain_answer(head, bytes, tokens, in_service))
}

/// Whether the address `page` (a `Referer` or `Origin`) is on the host `host` names.
fn names_host(page: &[u8], host: Option<&[u8]>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let rest = match page.iter().position(|&b| b == b':') {
        Some(at) if page[at..].starts_with(b"://") => &page[at + 3..],
        _ => return false,
    };
    let authority = rest.split(|&b| b == b'/').next().unwrap_or_default();
    authority.eq_ignore_ascii_case(host)
}

/// A browser asking for a page (`Accept: text/html`, not at `q=0`) with `GET` or `HEAD`,
/// not to switch, at a path that is not the daemon's own, while a WebSocket plugin takes
/// connections; not a navigation from another site (`Sec-Fetch-Site` other than `none` or
/// `same-origin`: a review had another site's page open the console, which then started a
/// route's program with that page's query as its own origin's).
fn wants_console(
    head: &Head,
    bytes: &[u8],
    tokens: &TokenTable,
    in_service: &dyn Fn(usize) -> bool,
) -> bool {
    let page = |accepted: &[u8]| {
        let mut parts = accepted.split(|&b| b == b';');
        let media = parts.next().unwrap_or_default();
        let refused = parts.any(|parameter| {
            let parameter: Vec<u8> = (parameter.iter())
                .filter(|b| !b.is_ascii_whitespace())
                .map(u8::to_ascii_lowercase)
                .collect();
            let q = parameter.strip_prefix(b"q=");
            q.is_some_and(|q| q.iter().all(|&b| b == b'0' || b == b'.'))
        });
        media.trim_ascii().eq_ignore_ascii_case(b"text/html") && !refused
    };
    let mut fetch_site = head.values(bytes, "sec-fetch-site").peekable();
    let from_own_site = match fetch_site.peek() {
        Some(_) => fetch_site.all(|site| {
            site.eq_ignore_ascii_case(b"none") || site.eq_ignore_ascii_case(b"same-origin")
        }),
        // A browser that does not say (Safari before 16.4, Firefox before 90): a page of
        // another origin that led here names itself in the Referer (or Origin).
        None => ["referer", "origin"].iter().all(|field| {
            (head.values(bytes, field))
                .all(|page| names_host(page, head.values(bytes, "host").next()))
        }),
    };
    !head.wants_upgrade
        && matches!(head.method(bytes), "GET" | "HEAD")
        && !PAGES.contains(&head.path(bytes))
        && from_own_site
        && head.list(bytes, "accept").any(page)
        && tokens.find(b"websocket").is_some_and(in_service)
}

/// The daemon's own pages: read with `GET` (or `HEAD`) only.
const PAGES: [&str; 5] = ["/healthz", "/readyz", "/metrics", "/status", "/status.json"];

/// The answer to a request that does not switch: `/healthz`, `405` to another method on a
/// page of the daemon's, or `426` naming what would do.
pub fn plain_answer(
    head: &Head,
    bytes: &[u8],
    tokens: &TokenTable,
    in_service: &dyn Fn(usize) -> bool,
) -> Response {
    let method = head.method(bytes);
    let advertised = tokens.advertised(in_service);
    let response = if head.path(bytes) == "/healthz" && (method == "GET" || method == "HEAD") {
        Response::new(200, &b"ok\n"[..]).header("Content-Type", "text/plain")
    } else if PAGES.contains(&head.path(bytes)) && !matches!(method, "GET" | "HEAD") {
        // RFC 9110 §15.5.6: a 405 names the methods the page answers in Allow. (A 426
        // said a switch would do, a review found: no switch makes POST /healthz work.)
        // A GET here is an upgrade every plugin declined: 426, as for any path.
        let body = format!("{} is only read (GET, HEAD)\n", head.path(bytes));
        Response::new(405, body.into_bytes())
            .header("Allow", "GET, HEAD")
            .header("Content-Type", "text/plain")
    } else if advertised.is_empty() {
        Response::new(404, &b"no protocols are loaded\n"[..]).header("Content-Type", "text/plain")
    } else {
        // RFC 9110 §15.5.22: 426 names the protocols that would do, with Connection: upgrade.
        let body = format!("this service switches protocols; ask with Upgrade: {advertised}\n");
        Response::new(426, body.into_bytes())
            .header("Upgrade", advertised)
            .header("Connection", "upgrade")
            .header("Content-Type", "text/plain")
    };
    if head.close {
        response.closing()
    } else {
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{parse, Parsed};

    fn table() -> TokenTable {
        let mut t = TokenTable::default();
        t.insert("echo", 0).unwrap();
        t.insert("WebSocket", 1).unwrap();
        t.insert("h2c", 2).unwrap();
        t
    }

    fn route_of(bytes: &[u8]) -> (Route, Vec<String>) {
        let limits = crate::http::head::Limits {
            head: 16384,
            target: 8192,
        };
        let Ok(Parsed::Complete(head)) = parse(bytes, limits) else {
            panic!("bad fixture")
        };
        let route = route(&head, bytes, &table(), &|_| true, false);
        let products = match &route {
            Route::Upgrade(offers) => offers
                .iter()
                .map(|o| o.product.str(bytes).to_string())
                .collect(),
            Route::Answer(_)
            | Route::Metrics
            | Route::Readiness
            | Route::Status(_)
            | Route::Console => Vec::new(),
        };
        (route, products)
    }

    #[test]
    fn rfc9110_7_8_client_order_unknown_ignored_case_insensitive() {
        let (_, products) = route_of(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo/1, H2C, echo\r\n\r\n");
        assert_eq!(products, ["H2C", "echo"]);
        let (_, products) = route_of(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket/13\r\nUpgrade: echo, echo\r\n\r\n");
        assert_eq!(products, ["websocket/13", "echo"]);
    }

    #[test]
    fn rfc9110_7_8_nothing_available_is_answered_as_without_upgrade() {
        let (route, _) =
            route_of(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n");
        let Route::Answer(response) = route else {
            panic!("expected an answer")
        };
        assert_eq!(response.status, 426);
        let (route, _) = route_of(
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
        );
        assert!(matches!(route, Route::Answer(Response { status: 200, .. })));
    }

    #[test]
    fn rfc9110_15_5_22_426_lists_protocols_in_server_preference() {
        let (route, _) = route_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let Route::Answer(response) = route else {
            panic!()
        };
        assert_eq!(response.status, 426);
        assert!(response
            .headers
            .contains(&("Upgrade".into(), "echo, websocket, h2c".into())));
        assert!(response
            .headers
            .contains(&("Connection".into(), "upgrade".into())));
    }

    #[test]
    fn http_1_0_is_never_upgraded() {
        let (route, _) =
            route_of(b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n");
        assert!(matches!(
            route,
            Route::Answer(Response {
                status: 426,
                close: true,
                ..
            })
        ));
    }

    #[test]
    fn readiness_and_status_pages_for_get() {
        assert_eq!(
            route_of(b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n").0,
            Route::Readiness
        );
        assert_eq!(
            route_of(b"HEAD /readyz HTTP/1.1\r\nHost: a\r\n\r\n").0,
            Route::Readiness
        );
        assert_eq!(
            route_of(b"GET /status.json HTTP/1.1\r\nHost: a\r\n\r\n").0,
            Route::Status(StatusPage::Json)
        );
        for page in PAGES {
            let (route, _) =
                route_of(format!("POST {page} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            let Route::Answer(response) = route else {
                panic!("POST {page}: expected an answer")
            };
            assert_eq!(response.status, 405, "POST {page}");
            assert!(
                response
                    .headers
                    .iter()
                    .any(|(name, value)| *name == "Allow" && value == "GET, HEAD"),
                "RFC 9110 §15.5.6: Allow in a 405"
            );
        }
        assert_eq!(
            route_of(b"HEAD /status HTTP/1.1\r\nHost: a\r\n\r\n").0,
            Route::Status(StatusPage::Html)
        );
    }

    /// Review of e216216: a `GET /metrics` whose `Upgrade: h2c` every plugin declined
    /// (`curl --http2` sends one) got 405 naming GET among the allowed methods.
    #[test]
    fn a_declined_upgrade_to_a_page_is_426_not_405() {
        let bytes =
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
        let limits = crate::http::head::Limits {
            head: 16384,
            target: 8192,
        };
        let Ok(Parsed::Complete(head)) = parse(bytes, limits) else {
            panic!("bad fixture")
        };
        let answer = plain_answer(&head, bytes, &table(), &|_| true);
        assert_eq!(answer.status, 426);
    }

    #[test]
    fn metrics_only_for_get_and_head() {
        assert_eq!(
            route_of(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").0,
            Route::Metrics
        );
        assert_eq!(
            route_of(b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n").0,
            Route::Metrics
        );
        let (route, _) = route_of(b"POST /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(route, Route::Answer(Response { status: 405, .. })));
        let (_, products) = route_of(
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        );
        assert_eq!(
            products,
            ["echo"],
            "an upgrade request is an upgrade request"
        );
    }

    #[test]
    fn a_plugin_out_of_service_is_not_offered_and_alone_gets_503() {
        let limits = crate::http::head::Limits {
            head: 16384,
            target: 8192,
        };
        let bytes: &[u8] =
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo, h2c\r\n\r\n";
        let Ok(Parsed::Complete(head)) = parse(bytes, limits) else {
            panic!("bad fixture")
        };
        let no_echo = |plugin: usize| plugin != 0;
        let Route::Upgrade(offers) = route(&head, bytes, &table(), &no_echo, false) else {
            panic!("h2c is still there")
        };
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].product.str(bytes), "h2c");
        let only_echo: &[u8] =
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
        let Ok(Parsed::Complete(head)) = parse(only_echo, limits) else {
            panic!("bad fixture")
        };
        let Route::Answer(response) = route(&head, only_echo, &table(), &no_echo, false) else {
            panic!("expected an answer")
        };
        assert_eq!(response.status, 503);
        let plain: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let Ok(Parsed::Complete(head)) = parse(plain, limits) else {
            panic!("bad fixture")
        };
        let Route::Answer(response) = route(&head, plain, &table(), &no_echo, false) else {
            panic!("expected an answer")
        };
        assert!(response
            .headers
            .contains(&("Upgrade".into(), "websocket, h2c".into())));
    }

    /// `SWITCHYARD_DEVCONSOLE`: a browser's plain GET, where a WebSocket plugin serves;
    /// not an upgrade, another method, a client that wants no page, or the daemon's pages.
    #[test]
    fn the_console_is_for_a_browsers_plain_get() {
        let limits = crate::http::head::Limits {
            head: 16384,
            target: 8192,
        };
        let decide = |bytes: &[u8], in_service: &dyn Fn(usize) -> bool, console: bool| {
            let Ok(Parsed::Complete(head)) = parse(bytes, limits) else {
                panic!("bad fixture")
            };
            match route(&head, bytes, &table(), in_service, console) {
                Route::Console => 0,
                Route::Answer(response) => response.status,
                Route::Upgrade(_) => 101,
                _ => 1,
            }
        };
        let all = |_: usize| true;
        let browser: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\nHost: a\r\n\
            Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n\r\n";
        assert_eq!(decide(browser, &all, true), 0);
        assert_eq!(decide(browser, &all, false), 426, "off unless asked");
        let no_websocket = |plugin: usize| plugin != 1;
        assert_eq!(decide(browser, &no_websocket, true), 426);
        let head = b"HEAD / HTTP/1.1\r\nHost: a\r\nAccept: TEXT/HTML; q=1\r\n\r\n";
        assert_eq!(decide(head, &all, true), 0);
        let typed =
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nSec-Fetch-Site: none\r\n\r\n";
        assert_eq!(decide(typed, &all, true), 0, "an address typed in");
        let own = b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nSec-Fetch-Site: same-origin\r\n\r\n";
        assert_eq!(
            decide(own, &all, true),
            0,
            "a link on the daemon's own pages"
        );
        let old = b"GET / HTTP/1.1\r\nHost: a:80\r\nAccept: text/html\r\nReferer: http://a:80/page\r\n\r\n";
        assert_eq!(
            decide(old, &all, true),
            0,
            "a browser without Sec-Fetch-Site, its own site"
        );
        for other in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/htmlx\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nContent-Length: 0\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html;q=0, */*\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html; q=0.0\r\n\r\n",
            b"GET /run?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nSec-Fetch-Site: cross-site\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nSec-Fetch-Site: same-site\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nReferer: http://evil.example/x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nReferer: http://a.evil/\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nOrigin: null\r\n\r\n",
        ] {
            assert_ne!(
                decide(other, &all, true),
                0,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        let upgrade = b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\n\
            Connection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(decide(upgrade, &all, true), 101);
    }

    #[test]
    fn duplicate_tokens_are_refused() {
        let mut t = table();
        assert_eq!(t.insert("ECHO", 5), Err(0));
    }
}
