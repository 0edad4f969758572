//! `GET /metrics`: the daemon's counters rendered for a scrape, at most once a second per
//! event loop, however often it is asked.

use crate::daemon::clients::Limit;
use crate::daemon::state::Shared;
use std::time::{Duration, Instant};

/// The last `/metrics` body a loop rendered.
#[derive(Default)]
pub struct MetricsCache {
    rendered: Option<(Instant, Vec<u8>)>,
}

/// How long a rendered `/metrics` is served again.
const METRICS_FOR: Duration = Duration::from_secs(1);

impl MetricsCache {
    pub fn body(&mut self, shared: &Shared, now: Instant) -> Vec<u8> {
        match &self.rendered {
            Some((at, body)) if now.duration_since(*at) < METRICS_FOR => body.clone(),
            _ => {
                let gauges = crate::daemon::metrics::Gauges {
                    blocking_connections: shared.worker_slots.busy(),
                    workers_max: shared.config.workers,
                    open_connections: shared.open_connections(),
                    connections_max: shared.config.max_connections,
                    clients: shared.clients.tracked(),
                    client_refusals: [Limit::Connections, Limit::Workers]
                        .map(|limit| shared.clients.refused(limit)),
                    per_client_max: [
                        shared.config.max_connections_per_client,
                        shared.config.workers_per_client,
                    ],
                };
                // When they were rendered, for whoever needs to know how fresh they are
                // (a comment line: Prometheus reads past it).
                let rendered_at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let mut text = shared.metrics.render(shared.registry(), &gauges);
                if let Some(tls) = &shared.tls {
                    text.push_str(&tls.render_metrics());
                }
                crate::plugin::metrics::render(&mut text);
                crate::daemon::process::latest().render(&mut text, shared.started);
                let body = format!(
                    "# rendered at {rendered_at} (Unix time, ms); rendered again at most once a second\n{text}"
                )
                .into_bytes();
                self.rendered = Some((now, body.clone()));
                body
            }
        }
    }
}
