//! `GET /status` and `GET /status.json`: a live page of the daemon, self-contained (no
//! asset from anywhere, so it works offline), and the data it polls. Answered only to the
//! peers and hosts [`crate::daemon::status::allowed`] lets through; rendered only when
//! asked (the samples it charts are taken by a thread of their own).

use crate::daemon::state::Shared;
use crate::daemon::status;
use crate::http::response::Response;
use crate::route::StatusPage;
use protocol_api::throttle::Throttle;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who asks for the page.
pub struct Asker<'a> {
    pub peer: IpAddr,
    /// The `Host` field (`""` when it is not text).
    pub host: Option<&'a str>,
    /// The request carries a proxy's fields (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`,
    /// `Via`): it came through a proxy, whose address says nothing of the client's.
    pub proxied: bool,
}

/// How long a rendered `/status.json` is served again (to every loop and viewer).
const JSON_FOR: Duration = Duration::from_secs(1);

/// The page: HTML, CSS and JavaScript in one file, which fetches `/status.json`.
const PAGE: &str = include_str!("status.html");

/// The answer to a status request from `peer` for `host`.
pub fn answer(shared: &Shared, page: StatusPage, asker: Asker<'_>) -> Response {
    let Asker {
        peer,
        host,
        proxied,
    } = asker;
    if proxied || !status::allowed(&shared.config.status_from, peer, host) {
        static REFUSED: Throttle = Throttle::new();
        if let Some(unlogged) = REFUSED.admit() {
            // The Host as sent, cut short: a client chooses it.
            let host: Option<String> = host.map(|h| h.chars().take(64).collect());
            log::info!(
                "/status refused to {peer} (Host {host:?}{}): open it from an address in SWITCHYARD_STATUS_FROM, by address or localhost, not through a proxy{unlogged}",
                if proxied { ", through a proxy" } else { "" }
            );
        }
        return Response::error(
            403,
            "the status page is answered to SWITCHYARD_STATUS_FROM only, asked for by address or localhost",
        );
    }
    let (body, content_type): (std::borrow::Cow<'static, [u8]>, _) = match page {
        StatusPage::Html => (PAGE.as_bytes().into(), "text/html; charset=utf-8"),
        StatusPage::Json => (json(shared).as_ref().clone().into(), "application/json"),
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

/// `/status.json`, rendered at most once a second whoever asks.
fn json(shared: &Shared) -> Arc<Vec<u8>> {
    static RENDERED: Mutex<Option<(Instant, Arc<Vec<u8>>)>> = Mutex::new(None);
    let mut rendered = RENDERED.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    match &*rendered {
        Some((at, body)) if now.duration_since(*at) < JSON_FOR => body.clone(),
        _ => {
            let body = Arc::new(status::json(shared).into_bytes());
            *rendered = Some((now, body.clone()));
            body
        }
    }
}
