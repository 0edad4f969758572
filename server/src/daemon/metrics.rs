//! Counters for `GET /metrics`, in the Prometheus text format (version 0.0.4): what an
//! operator graphs and alerts on. Updated with relaxed atomics from the event loop and the
//! workers; read only when scraped.

use crate::plugin::{Plugin, PluginStats, Registry};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A plugin call on an event loop longer than this is counted and logged: it held up every
/// other connection of that loop.
pub const SLOW_CALL: Duration = Duration::from_millis(5);

pub struct Metrics {
    accepted: AtomicU64,
    /// Responses the daemon wrote itself, by status class 1xx..5xx.
    responses: [AtomicU64; 5],
    /// Connections switched and plugin panics, every plugin of every generation (each
    /// plugin counts its own too, in [`PluginStats`]).
    switches: AtomicU64,
    panics: AtomicU64,
    /// Reloads (SIGHUP) that loaded every file, and those where one failed.
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Upgraded connections ended by the daemon: idle, write time-out.
    ended_idle: AtomicU64,
    ended_write_timeout: AtomicU64,
    /// Parts of static files read into the page cache by a reader thread, not the loop.
    reads_ahead: AtomicU64,
    /// Connections speaking HTTP/1.1 on the event loops.
    pub http_connections: AtomicI64,
    /// Readiness-driven upgraded connections on the event loops.
    pub event_connections: AtomicI64,
    /// TLS handshakes done, by what they settled; failed, by reason. A lock per handshake
    /// is nothing beside the handshake's own cost, and none when TLS is off.
    tls_handshakes: Mutex<BTreeMap<crate::tls::Summary, u64>>,
    tls_failures: Mutex<BTreeMap<&'static str, u64>>,
}

/// The counters, read at once (for the status page).
pub struct Totals {
    pub accepted: u64,
    /// Responses by status class, 1xx..5xx.
    pub responses: [u64; 5],
    pub switches: u64,
    pub panics: u64,
    pub ended_idle: u64,
    pub ended_write_timeout: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

/// The gauges only the caller knows at scrape time.
pub struct Gauges {
    pub blocking_connections: usize,
    pub workers_max: usize,
    pub open_connections: usize,
    pub connections_max: usize,
    /// Client addresses (IPv6: /64s) holding connections or worker slots now.
    pub clients: usize,
    /// Refusals for a client's limit, connections then workers.
    pub client_refusals: [u64; 2],
    /// The per-client limits, connections then workers.
    pub per_client_max: [usize; 2],
}

/// One unit of a gauge, held while the thing it counts lives.
pub struct Held(&'static AtomicI64);

impl Held {
    pub fn new(gauge: &'static AtomicI64) -> Held {
        gauge.fetch_add(1, Relaxed);
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// How often a slow plugin is logged at most.
const SLOW_LOG_EVERY: Duration = Duration::from_secs(10);

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            accepted: AtomicU64::new(0),
            responses: Default::default(),
            switches: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            ended_idle: AtomicU64::new(0),
            ended_write_timeout: AtomicU64::new(0),
            reads_ahead: AtomicU64::new(0),
            http_connections: AtomicI64::new(0),
            event_connections: AtomicI64::new(0),
            tls_handshakes: Mutex::default(),
            tls_failures: Mutex::default(),
        }
    }

    pub fn tls_handshake_done(&self, summary: crate::tls::Summary) {
        let mut done = self
            .tls_handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *done.entry(summary).or_default() += 1;
    }

    /// A handshake failed: `reason` is [`crate::tls::failure_reason`]'s, or `timeout`.
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        let mut failed = self.tls_failures.lock().unwrap_or_else(|e| e.into_inner());
        *failed.entry(reason).or_default() += 1;
    }

    /// Notes a plugin call on an event loop that began at `began`; one that took longer
    /// than [`SLOW_CALL`] is counted, and logged at most
    /// every ten seconds per plugin. Returns the time now.
    pub fn timed_call(&self, plugin: &Plugin, call: &str, began: Instant) -> Instant {
        let now = Instant::now();
        let took = now.duration_since(began);
        if took < SLOW_CALL {
            return now;
        }
        let slow = plugin.stats.slow_calls.fetch_add(1, Relaxed) + 1;
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        plugin.stats.slowest_call_us.fetch_max(micros, Relaxed);
        let at = now
            .duration_since(protocol_api::moment::epoch())
            .as_millis() as u64;
        let last = plugin.stats.slow_logged.load(Relaxed);
        if (last == 0 || at.saturating_sub(last) >= SLOW_LOG_EVERY.as_millis() as u64)
            && plugin
                .stats
                .slow_logged
                .compare_exchange(last, at.max(1), Relaxed, Relaxed)
                .is_ok()
        {
            log::warn!(
                "plugin {} took {:.1} ms in {call} on an event loop, holding up its other connections ({slow} slow call(s) so far): callbacks must not block",
                plugin.name,
                took.as_secs_f64() * 1000.0
            );
        }
        now
    }

    pub fn ended_idle(&self) {
        self.ended_idle.fetch_add(1, Relaxed);
    }

    pub fn ended_write_timeout(&self) {
        self.ended_write_timeout.fetch_add(1, Relaxed);
    }

    /// A part of a static file was not in the page cache: a reader thread reads it.
    pub fn read_ahead(&self) {
        self.reads_ahead.fetch_add(1, Relaxed);
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

    pub fn switched(&self, plugin: &Plugin) {
        self.switches.fetch_add(1, Relaxed);
        plugin.stats.switches.fetch_add(1, Relaxed);
    }

    pub fn panicked(&self, plugin: &Plugin) {
        self.panics.fetch_add(1, Relaxed);
        plugin.stats.panics.fetch_add(1, Relaxed);
    }

    pub fn totals(&self) -> Totals {
        Totals {
            accepted: self.accepted.load(Relaxed),
            responses: std::array::from_fn(|i| self.responses[i].load(Relaxed)),
            switches: self.switches.load(Relaxed),
            panics: self.panics.load(Relaxed),
            ended_idle: self.ended_idle.load(Relaxed),
            ended_write_timeout: self.ended_write_timeout.load(Relaxed),
            reloads_ok: self.reloads_ok.load(Relaxed),
            reloads_failed: self.reloads_failed.load(Relaxed),
        }
    }

    /// One line for the log at exit.
    pub fn summary(&self) -> String {
        format!(
            "{} connection(s) switched, {} plugin panic(s)",
            self.switches.load(Relaxed),
            self.panics.load(Relaxed)
        )
    }

    /// Counts a reload: `ok` when every file in the folder loaded (or was unchanged).
    pub fn reloaded(&self, ok: bool) {
        match ok {
            true => self.reloads_ok.fetch_add(1, Relaxed),
            false => self.reloads_failed.fetch_add(1, Relaxed),
        };
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
        let per_plugin = |counter: fn(&PluginStats) -> &AtomicU64| -> Vec<(String, u64)> {
            registry
                .plugins
                .iter()
                .map(|p| {
                    let value = counter(&p.stats).load(Relaxed);
                    (format!("{{plugin=\"{}\"}}", p.name), value)
                })
                .collect()
        };
        metric(
            "switchyard_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            &plain(self.accepted.load(Relaxed)),
        );
        metric(
            "switchyard_open_connections",
            "gauge",
            "Client connections open, HTTP and upgraded (limit: SWITCHYARD_MAX_CONNECTIONS).",
            &plain(gauges.open_connections as u64),
        );
        metric(
            "switchyard_connections_max",
            "gauge",
            "Most client connections open at once (SWITCHYARD_MAX_CONNECTIONS).",
            &plain(gauges.connections_max as u64),
        );
        metric(
            "switchyard_http_connections",
            "gauge",
            "Connections speaking HTTP/1.1 on the event loops.",
            &plain(self.http_connections.load(Relaxed).max(0) as u64),
        );
        let upgraded = vec![
            (
                "{mode=\"event\"}".to_string(),
                self.event_connections.load(Relaxed).max(0) as u64,
            ),
            (
                "{mode=\"worker\"}".to_string(),
                gauges.blocking_connections as u64,
            ),
        ];
        metric(
            "switchyard_upgraded_connections",
            "gauge",
            "Upgraded connections: on the event loops (readiness plugins) or on workers (being switched or served by a blocking plugin).",
            &upgraded,
        );
        metric(
            "switchyard_workers_max",
            "gauge",
            "Most connections on workers at once (SWITCHYARD_WORKERS).",
            &plain(gauges.workers_max as u64),
        );
        metric(
            "switchyard_clients",
            "gauge",
            "Client addresses (an IPv6 client: its /64) holding connections or worker slots.",
            &plain(gauges.clients as u64),
        );
        let limits = ["connections", "workers"];
        let per_client = |values: [u64; 2]| -> Vec<(String, u64)> {
            limits
                .iter()
                .zip(values)
                .map(|(limit, value)| (format!("{{limit=\"{limit}\"}}"), value))
                .collect()
        };
        metric(
            "switchyard_client_limit",
            "gauge",
            "Most connections and worker slots one client address may hold (SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT, SWITCHYARD_WORKERS_PER_CLIENT).",
            &per_client(gauges.per_client_max.map(|n| n as u64)),
        );
        metric(
            "switchyard_client_limit_refusals_total",
            "counter",
            "Connections and upgrades refused with 503 because their client address held its most.",
            &per_client(gauges.client_refusals),
        );
        let ended = vec![
            (
                "{reason=\"idle\"}".to_string(),
                self.ended_idle.load(Relaxed),
            ),
            (
                "{reason=\"write_timeout\"}".to_string(),
                self.ended_write_timeout.load(Relaxed),
            ),
        ];
        metric(
            "switchyard_upgraded_ended_total",
            "counter",
            "Upgraded connections the daemon ended: idle past SWITCHYARD_IDLE_MS, or a peer that took no bytes for SWITCHYARD_WRITE_TIMEOUT_MS.",
            &ended,
        );
        metric(
            "switchyard_static_reads_ahead_total",
            "counter",
            "Parts of static files (up to 256 KiB each) that were not in the page cache and were read from disk by a reader thread, so that no event loop waited for the disk.",
            &plain(self.reads_ahead.load(Relaxed)),
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
            &per_plugin(|s| &s.switches),
        );
        metric(
            "switchyard_plugin_panics_total",
            "counter",
            "Panics caught at the plugin boundary (each cost one connection).",
            &per_plugin(|s| &s.panics),
        );
        let in_service: Vec<(String, u64)> = registry
            .plugins
            .iter()
            .map(|p| {
                (
                    format!("{{plugin=\"{}\"}}", p.name),
                    u64::from(p.in_service()),
                )
            })
            .collect();
        metric(
            "switchyard_plugin_in_service",
            "gauge",
            "1 while the plugin takes new connections; 0 once it panicked more than SWITCHYARD_PLUGIN_PANIC_LIMIT times within a minute.",
            &in_service,
        );
        metric(
            "switchyard_plugin_slow_calls_total",
            "counter",
            &format!(
                "Plugin calls on an event loop that took over {} ms (each held up that loop).",
                SLOW_CALL.as_millis()
            ),
            &per_plugin(|s| &s.slow_calls),
        );
        metric(
            "switchyard_plugin_generation",
            "gauge",
            "The plugin folder's generation serving new connections: 1 at start, one more for each reload (SIGHUP).",
            &plain(registry.generation),
        );
        let reloads = vec![
            ("{result=\"ok\"}".to_string(), self.reloads_ok.load(Relaxed)),
            (
                "{result=\"failed\"}".to_string(),
                self.reloads_failed.load(Relaxed),
            ),
        ];
        metric(
            "switchyard_reloads_total",
            "counter",
            "Reloads of the plugin folder (SIGHUP): ok, or failed when a file did not load (the previous generation of that plugin serves on).",
            &reloads,
        );
        let handshakes: Vec<(String, u64)> = {
            let done = self
                .tls_handshakes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let label = |s: &crate::tls::Summary| {
                format!(
                    "{{version=\"{}\",cipher=\"{}\",alpn=\"{}\"}}",
                    s.version, s.cipher, s.alpn
                )
            };
            done.iter().map(|(s, n)| (label(s), *n)).collect()
        };
        if !handshakes.is_empty() {
            metric(
                "switchyard_tls_handshakes_total",
                "counter",
                "TLS handshakes completed, by protocol version, cipher suite and ALPN protocol (- : none offered).",
                &handshakes,
            );
        }
        let failures: Vec<(String, u64)> = {
            let failed = self.tls_failures.lock().unwrap_or_else(|e| e.into_inner());
            let label = |r: &str| format!("{{reason=\"{r}\"}}");
            failed.iter().map(|(r, n)| (label(r), *n)).collect()
        };
        if !failures.is_empty() {
            metric(
                "switchyard_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed: not_tls (not a ClientHello), too_large (over 16 KiB from the client in one flight, 80 KiB with client certificates), incompatible (no version or cipher in common), no_alpn, client_alert (the client refused us, mostly our certificate), client_certificate, protocol, closed (the client left), timeout (not done within SWITCHYARD_HEADER_TIMEOUT_MS), io, rate (not begun: the client address began more than SWITCHYARD_TLS_HANDSHAKES_PER_CLIENT a second).",
                &failures,
            );
        }
        let name = "switchyard_plugin_slowest_call_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} The longest single plugin call on an event loop since start, among those over {} ms (0: none); the loop's other connections waited that long.\n# TYPE {name} gauge",
            SLOW_CALL.as_millis()
        );
        for plugin in &registry.plugins {
            let micros = plugin.stats.slowest_call_us.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}{{plugin=\"{}\"}} {}.{:06}",
                plugin.name,
                micros / 1_000_000,
                micros % 1_000_000
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::new();
        metrics.accepted();
        metrics.response(200);
        metrics.response(426);
        metrics.response(426);
        metrics.response(999); // not a status class: ignored
        metrics.http_connections.store(2, Relaxed);
        let text = metrics.render(
            &Registry::default(),
            &Gauges {
                blocking_connections: 1,
                workers_max: 8,
                open_connections: 3,
                connections_max: 100,
                clients: 2,
                client_refusals: [5, 1],
                per_client_max: [25, 2],
            },
        );
        assert!(text.contains("# TYPE switchyard_connections_accepted_total counter\nswitchyard_connections_accepted_total 1\n"), "{text}");
        assert!(
            text.contains("switchyard_responses_total{class=\"4xx\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_http_connections 2\n")
                && text.contains("switchyard_workers_max 8\n")
                && text.contains("switchyard_upgraded_connections{mode=\"worker\"} 1\n")
                && text.contains("switchyard_clients 2\n")
                && text
                    .contains("switchyard_client_limit_refusals_total{limit=\"connections\"} 5\n")
                && text.contains("switchyard_client_limit{limit=\"workers\"} 2\n"),
            "{text}"
        );
    }
}
