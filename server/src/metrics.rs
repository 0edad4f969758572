//! Counters for `GET /metrics`, in the Prometheus text format (version 0.0.4): what an
//! operator graphs and alerts on. Updated with relaxed atomics from the event loop and the
//! workers; read only when scraped.

use crate::plugin::Registry;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct Metrics {
    accepted: AtomicU64,
    /// Responses the daemon wrote itself, by status class 1xx..5xx.
    responses: [AtomicU64; 5],
    /// Connections switched, by plugin index.
    switches: Box<[AtomicU64]>,
    /// Panics caught at the plugin boundary, by plugin index.
    panics: Box<[AtomicU64]>,
}

/// The gauges only the caller knows at scrape time.
pub struct Gauges {
    pub http_connections: usize,
    pub upgraded_connections: usize,
    pub workers_max: usize,
}

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Metrics {
    pub fn new(plugins: usize) -> Metrics {
        Metrics {
            accepted: AtomicU64::new(0),
            responses: Default::default(),
            switches: counters(plugins),
            panics: counters(plugins),
        }
    }

    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }

    pub fn response(&self, status: u16) {
        if let Some(class) = self
            .responses
            .get(usize::from(status / 100).wrapping_sub(1))
        {
            class.fetch_add(1, Relaxed);
        }
    }

    pub fn switched(&self, plugin: usize) {
        self.switches[plugin].fetch_add(1, Relaxed);
    }

    pub fn panicked(&self, plugin: usize) {
        self.panics[plugin].fetch_add(1, Relaxed);
    }

    /// One line for the log at exit.
    pub fn summary(&self) -> String {
        let total = |c: &[AtomicU64]| c.iter().map(|v| v.load(Relaxed)).sum::<u64>();
        format!(
            "{} connection(s) switched, {} plugin panic(s)",
            total(&self.switches),
            total(&self.panics)
        )
    }

    pub fn render(&self, registry: &Registry, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |v: u64| vec![(String::new(), v)];
        let per_plugin = |counters: &[AtomicU64]| -> Vec<(String, u64)> {
            registry
                .plugins
                .iter()
                .zip(counters)
                .map(|(p, c)| (format!("{{plugin=\"{}\"}}", p.name), c.load(Relaxed)))
                .collect()
        };
        metric(
            "switchyard_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            &plain(self.accepted.load(Relaxed)),
        );
        metric(
            "switchyard_http_connections",
            "gauge",
            "Connections speaking HTTP/1.1 on the event loop.",
            &plain(gauges.http_connections as u64),
        );
        metric(
            "switchyard_upgraded_connections",
            "gauge",
            "Connections with a worker: being switched or served by a plugin.",
            &plain(gauges.upgraded_connections as u64),
        );
        metric(
            "switchyard_workers_max",
            "gauge",
            "Most upgraded connections served at once (SWITCHYARD_WORKERS).",
            &plain(gauges.workers_max as u64),
        );
        let classes: Vec<(String, u64)> = self
            .responses
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("{{class=\"{}xx\"}}", i + 1), c.load(Relaxed)))
            .collect();
        metric(
            "switchyard_responses_total",
            "counter",
            "Responses the daemon wrote, by status class (101 included).",
            &classes,
        );
        metric(
            "switchyard_switches_total",
            "counter",
            "Connections switched to a plugin.",
            &per_plugin(&self.switches),
        );
        metric(
            "switchyard_plugin_panics_total",
            "counter",
            "Panics caught at the plugin boundary (each cost one connection).",
            &per_plugin(&self.panics),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::new(0);
        metrics.accepted();
        metrics.response(200);
        metrics.response(426);
        metrics.response(426);
        metrics.response(999); // not a status class: ignored
        let text = metrics.render(
            &Registry::default(),
            &Gauges {
                http_connections: 2,
                upgraded_connections: 1,
                workers_max: 8,
            },
        );
        assert!(text.contains("# TYPE switchyard_connections_accepted_total counter\nswitchyard_connections_accepted_total 1\n"), "{text}");
        assert!(
            text.contains("switchyard_responses_total{class=\"4xx\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_http_connections 2\n")
                && text.contains("switchyard_workers_max 8\n"),
            "{text}"
        );
    }
}
