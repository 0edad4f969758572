//! The WebSocket plugin's metrics (ABI 1.6), rendered by the daemon as
//! `switchyard_websocket_*`: per route (its configured prefix; `*` when no routes are set
//! and every path is echo), connections open and switched, refusals by status, bytes each
//! way, close codes, and the time to reach the route's service. A route's handles are made
//! once; a connection adds its bytes once per call.

use protocol_api::metrics::{self, Counter, Family, Gauge, Histogram};

/// The route label when no routes are set.
pub const EVERY_PATH: &str = "*";

/// The families, declared once when the plugin loads.
pub struct Stats {
    open: Family<Gauge>,
    switched: Family<Counter>,
    refused: Family<Counter>,
    bytes: Family<Counter>,
    closes: Family<Counter>,
    connect: Family<Histogram>,
    dialling: Family<Gauge>,
    pub programs: Gauge,
    /// Waits for a client's inflate allowance (`SWITCHYARD_WEBSOCKET_INFLATE_PER_CLIENT`).
    pub inflate_waits: Counter,
}

/// One route's handles, referred to by each of its connections.
pub struct RouteStats {
    /// The route's label, made once per route.
    pub label: &'static str,
    families: &'static Stats,
    pub open: Gauge,
    pub switched: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub connect: Histogram,
    /// Dials to the route's service under way now (at most `SWITCHYARD_WEBSOCKET_MAX_DIALS`).
    pub dialling: Gauge,
    /// The route's service could not be reached: logged once a second, each route apart
    /// (one dead service's lines hide no other's).
    pub dials_failed: protocol_api::throttle::Throttle,
}

impl Stats {
    pub fn declare() -> Result<Stats, String> {
        let route = &["route"];
        Ok(Stats {
            open: metrics::gauge("open_connections", "WebSocket connections open now, per route.", route)?,
            switched: metrics::counter(
                "connections_total",
                "WebSocket connections switched (101), per route.",
                route,
            )?,
            refused: metrics::counter(
                "refused_total",
                "Requests refused, per route and status: 400 (a bad handshake), 403 (Origin not allowed), 404 (an unknown token, or no program in an exec-dir: folder), 429 (a client past its unknown tokens), 502 (the service refused or failed), 503 (SWITCHYARD_WEBSOCKET_MAX_PROCESSES programs running), 504 (the service did not answer in time).",
                &["route", "status"],
            )?,
            bytes: metrics::counter(
                "bytes_total",
                "Bytes on client connections after the 101, per route: in (from clients, as framed and compressed) and out.",
                &["route", "direction"],
            )?,
            closes: metrics::counter(
                "closes_total",
                "Closing handshakes begun, per route, by whom (client, server) and code (1000-1015 as sent; 3xxx and 4xxx for application codes; none; invalid).",
                &["route", "by", "code"],
            )?,
            connect: metrics::histogram(
                "connect_seconds",
                "Time to reach a route's service before the 101 (dial a tcp:// or unix: service, start an exec: program), per route; failures included.",
                route,
                metrics::LATENCY_MICROS,
                metrics::MICROS_PER_SECOND,
            )?,
            dialling: metrics::gauge(
                "dials_in_flight",
                "Dials to a route's tcp:// or unix: services under way now, per route, each holding a worker (at most SWITCHYARD_WEBSOCKET_MAX_DIALS to one service).",
                route,
            )?,
            programs: metrics::gauge(
                "programs_running",
                "Programs of exec: routes running now (limit: SWITCHYARD_WEBSOCKET_MAX_PROCESSES).",
                &[],
            )?
            .with(&[]),
            inflate_waits: metrics::counter(
                "inflate_waits_total",
                "Times a connection's compressed messages waited, unread, because its client address had inflated more than SWITCHYARD_WEBSOCKET_INFLATE_PER_CLIENT bytes a second allows.",
                &[],
            )?
            .with(&[]),
        })
    }

    /// The handles of `route`, made once per configured route and kept for good (a
    /// connection holds a reference, not a copy).
    pub fn route(&'static self, route: &str) -> &'static RouteStats {
        Box::leak(Box::new(RouteStats {
            label: Box::leak(route.into()),
            families: self,
            open: self.open.with(&[route]),
            switched: self.switched.with(&[route]),
            bytes_in: self.bytes.with(&[route, "in"]),
            bytes_out: self.bytes.with(&[route, "out"]),
            connect: self.connect.with(&[route]),
            dialling: self.dialling.with(&[route]),
            dials_failed: protocol_api::throttle::Throttle::new(),
        }))
    }

    /// A request of `route` refused with `status`.
    pub fn refused(&self, route: &str, status: u16) {
        self.refused.with(&[route, status_label(status)]).inc();
    }
}

impl RouteStats {
    /// A connection's compressed messages wait for its client's inflate allowance.
    pub fn inflate_waited(&self) {
        self.families.inflate_waits.inc();
    }

    /// A closing handshake begun by `by` (`client`, `server`) with `code`.
    pub fn closed(&self, by: &'static str, code: Option<u16>) {
        self.families
            .closes
            .with(&[self.label, by, code_label(code)])
            .inc();
    }
}

/// A status as a label value, from the few a refusal has.
fn status_label(status: u16) -> &'static str {
    match status {
        400 => "400",
        403 => "403",
        404 => "404",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

/// A close code as a label value: the RFC's own as they are, application ranges by
/// range, so that a client choosing codes cannot make series without end.
fn code_label(code: Option<u16>) -> &'static str {
    const KNOWN: [&str; 16] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
        "1011", "1012", "1013", "1014", "1015",
    ];
    match code {
        None => "none",
        Some(c @ 1000..=1015) => KNOWN[usize::from(c - 1000)],
        Some(3000..=3999) => "3xxx",
        Some(4000..=4999) => "4xxx",
        Some(_) => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_make_a_bounded_set_of_labels() {
        assert_eq!(code_label(Some(1000)), "1000");
        assert_eq!(code_label(Some(1015)), "1015");
        assert_eq!(code_label(Some(4123)), "4xxx");
        assert_eq!(code_label(Some(3000)), "3xxx");
        assert_eq!(code_label(Some(1016)), "invalid");
        assert_eq!(code_label(Some(65535)), "invalid");
        assert_eq!(code_label(None), "none");
        assert_eq!(status_label(418), "other");
    }
}
