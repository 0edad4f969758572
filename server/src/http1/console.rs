//! The development console (`SWITCHYARD_DEVCONSOLE=on`, websocketd's `--devconsole`): a
//! browser that opens a WebSocket's address as a page gets one that connects to it on a
//! click and shows each message each way, so a route can be tried without writing a
//! client. One self-contained file (no asset from anywhere); off unless asked, as it
//! answers every path a browser opens. Another site's page cannot use it to start a
//! route's program with a query of its choosing: the console is not served to a
//! navigation from another site ([`crate::route`]), and opens nothing until clicked.

use crate::http::response::Response;

/// The page: HTML, CSS and JavaScript in one file.
const PAGE: &str = include_str!("console.html");

/// The console page.
pub fn page() -> Response {
    Response::new(200, PAGE.as_bytes())
        .header("Content-Type", "text/html; charset=utf-8")
        .header("Cache-Control", "no-store")
        .header("X-Content-Type-Options", "nosniff")
        .header("Referrer-Policy", "no-referrer")
        .header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        )
}
