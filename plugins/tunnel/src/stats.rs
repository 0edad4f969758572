//! The tunnel's metrics, per route (ABI 1.6): rendered by the daemon as
//! `switchyard_tunnel_*{route="/db"}`. Each route's handles are made once, at load; a
//! tunnel adds its bytes after each call, never per read.

use protocol_api::metrics::{self, Counter, Family, Gauge, Histogram};

/// The families, declared once.
pub struct Stats {
    open: Family<Gauge>,
    opened: Family<Counter>,
    refused: Family<Counter>,
    bytes: Family<Counter>,
    connect: Family<Histogram>,
    dialling: Family<Gauge>,
    /// Splice pipes open now (all routes).
    pub pipes: Gauge,
}

/// One route's handles.
#[derive(Clone, Copy)]
pub struct RouteStats {
    pub open: Gauge,
    pub opened: Counter,
    pub up: Counter,
    pub down: Counter,
    pub connect: Histogram,
    /// Dials to the backend under way now (at most `SWITCHYARD_TUNNEL_MAX_DIALS`).
    pub dialling: Gauge,
}

impl Stats {
    pub fn declare() -> Result<Stats, String> {
        let route = &["route"];
        Ok(Stats {
            open: metrics::gauge("open_tunnels", "Tunnels open now, per route.", route)?,
            opened: metrics::counter(
                "tunnels_total",
                "Tunnels switched (101), per route.",
                route,
            )?,
            refused: metrics::counter(
                "refused_total",
                "Tunnels refused before the 101, per route: 502 (the backend refused or could not be reached), 503 (SWITCHYARD_TUNNEL_MAX_DIALS dials to the backend, or the client's quarter of them, were under way), 504 (it did not answer within SWITCHYARD_TUNNEL_CONNECT_TIMEOUT_MS).",
                &["route", "status"],
            )?,
            bytes: metrics::counter(
                "bytes_total",
                "Bytes through tunnels, per route: up (client to backend) and down.",
                &["route", "direction"],
            )?,
            connect: metrics::histogram(
                "connect_seconds",
                "Time to connect to the backend, per route (refusals and time-outs included).",
                route,
                metrics::LATENCY_MICROS,
                metrics::MICROS_PER_SECOND,
            )?,
            dialling: metrics::gauge(
                "dials_in_flight",
                "Dials to the backend under way now, per route, each holding a worker (at most SWITCHYARD_TUNNEL_MAX_DIALS to one backend).",
                route,
            )?,
            pipes: metrics::gauge(
                "pipes",
                "Splice pipes open now, two descriptors each (at most SWITCHYARD_TUNNEL_MAX_PIPES).",
                &[],
            )?
            .with(&[]),
        })
    }

    /// The handles of `route`.
    pub fn route(&self, route: &str) -> RouteStats {
        RouteStats {
            open: self.open.with(&[route]),
            opened: self.opened.with(&[route]),
            up: self.bytes.with(&[route, "up"]),
            down: self.bytes.with(&[route, "down"]),
            connect: self.connect.with(&[route]),
            dialling: self.dialling.with(&[route]),
        }
    }

    /// A refusal of `route` with `status` (`502`, `503`, `504`).
    pub fn refused(&self, route: &str, status: u16) {
        self.refused.with(&[route, &status.to_string()]).inc();
    }
}
