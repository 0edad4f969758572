//! `GET /status` and `GET /status.json`: a live page of the daemon, self-contained (no
//! asset from anywhere, so it works offline), and the data it polls. Answered only to the
//! peers and hosts [`crate::daemon::status::allowed`] lets through; rendered only when
//! asked (the samples it charts are taken by a thread of their own).

use crate::daemon::state::Shared;
use crate::daemon::status;
use crate::http::response::Response;
use crate::route::StatusPage;
use std::net::IpAddr;

/// The page: HTML, CSS and JavaScript in one file, which fetches `/status.json`.
const PAGE: &str = include_str!("status.html");

/// The answer to a status request from `peer` for `host`.
pub fn answer(shared: &Shared, page: StatusPage, peer: IpAddr, host: Option<&str>) -> Response {
    if !status::allowed(&shared.config.status_from, peer, host) {
        log::info!(
            "/status refused to {peer} (Host {host:?}): open it from an address in SWITCHYARD_STATUS_FROM, by address or localhost"
        );
        return Response::error(
            403,
            "the status page is answered to SWITCHYARD_STATUS_FROM only, asked for by address or localhost",
        );
    }
    let (body, content_type): (std::borrow::Cow<'static, [u8]>, _) = match page {
        StatusPage::Html => (PAGE.as_bytes().into(), "text/html; charset=utf-8"),
        StatusPage::Json => (status::json(shared).into_bytes().into(), "application/json"),
    };
    Response::new(200, body)
        .header("Content-Type", content_type)
        .header("Cache-Control", "no-store")
        .header("X-Content-Type-Options", "nosniff")
        .header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        )
}
