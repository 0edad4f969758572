//! The h2c plugin's metrics (ABI 1.6), rendered by the daemon as `switchyard_h2c_*`:
//! connections open, streams at HTTP/1.1 backends and the request bodies read for them,
//! and per route (its configured prefix;
//! `-` for streams no route took) streams, answers by status class, and the time a backend
//! took to answer. A route's handles are made once, at load.

use protocol_api::metrics::{self, Counter, Gauge, Histogram};

/// The route label of streams answered before any route took them (`404`, `400`, `431`).
pub const UNROUTED: &str = "-";

/// The families, and each route's handles (in the configuration's order, then
/// [`UNROUTED`]'s).
pub struct Stats {
    pub open: Gauge,
    /// Streams at HTTP/1.1 backends now, each holding a backend connection (the hyper
    /// engine's `http1://` routes).
    pub http1_streams: Gauge,
    /// Bytes of request bodies read before they go to HTTP/1.1 backends, held now.
    pub http1_buffered: Gauge,
    /// HTTP/2 backend connections open now (either engine's).
    pub backends: Gauge,
    /// Bytes the relay holds that their destination has not taken ([`crate::relay::held`]).
    pub held: Gauge,
    routes: Vec<RouteStats>,
}

/// One route's handles.
pub struct RouteStats {
    pub streams: Counter,
    /// Answers by status class, 1xx (unused: interim answers are not counted) to 5xx.
    classes: [Counter; 5],
    pub latency: Histogram,
}

impl RouteStats {
    /// A final answer with `status` went to the client.
    pub fn answered(&self, status: u16) {
        if let Some(class) = self.classes.get(usize::from(status / 100).wrapping_sub(1)) {
            class.inc();
        }
    }
}

impl Stats {
    /// Declares the families and makes each route's handles, `prefixes` in the
    /// configuration's order.
    pub fn declare<'a>(prefixes: impl Iterator<Item = &'a str>) -> Result<Stats, String> {
        let open = metrics::gauge(
            "open_connections",
            "HTTP/2 client connections open now (by Upgrade: h2c, prior knowledge or TLS ALPN h2).",
            &[],
        )?;
        let http1_streams = metrics::gauge(
            "http1_backend_streams",
            "Streams at http1:// backends now, each holding a backend connection (at most SWITCHYARD_H2C_HTTP1_MAX).",
            &[],
        )?;
        let http1_buffered = metrics::gauge(
            "http1_buffered_bytes",
            "Bytes of request bodies read before they go to http1:// backends, held now (at most 64 MiB; past it, bodies go on unread).",
            &[],
        )?;
        let backends = metrics::gauge(
            "backend_connections",
            "HTTP/2 backend connections open now, each client connection's own: the relay's one per route it uses, hyper's one per backend (at most SWITCHYARD_H2C_BACKENDS_MAX).",
            &[],
        )?;
        let held = metrics::gauge(
            "held_bytes",
            "Bytes the relay holds between clients and backends that have not taken them (answers and uploads past their windows, output not yet written; a connection holding under 16 KiB counts none); one address at most SWITCHYARD_H2C_HELD_PER_CLIENT.",
            &[],
        )?;
        let streams = metrics::counter(
            "streams_total",
            "Streams (requests) begun, per route; - : answered before any route took them.",
            &["route"],
        )?;
        let answers = metrics::counter(
            "responses_total",
            "Final answers sent to clients, per route and status class: the backend's, and the plugin's own (404 no route, 502 backend unreachable or failed, 504 not connected in time).",
            &["route", "class"],
        )?;
        let latency = metrics::histogram(
            "backend_response_seconds",
            "From a stream's request to its backend's final answer (its headers), per route.",
            &["route"],
            metrics::LATENCY_MICROS,
            metrics::MICROS_PER_SECOND,
        )?;
        let routes = prefixes
            .chain([UNROUTED])
            .map(|route| RouteStats {
                streams: streams.with(&[route]),
                classes: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| answers.with(&[route, c])),
                latency: latency.with(&[route]),
            })
            .collect();
        Ok(Stats {
            open: open.with(&[]),
            http1_streams: http1_streams.with(&[]),
            http1_buffered: http1_buffered.with(&[]),
            backends: backends.with(&[]),
            held: held.with(&[]),
            routes,
        })
    }

    /// Route `index`'s handles; `None`: [`UNROUTED`]'s.
    pub fn route(&self, index: Option<usize>) -> &RouteStats {
        let unrouted = self.routes.len() - 1;
        &self.routes[index.unwrap_or(unrouted).min(unrouted)]
    }
}
