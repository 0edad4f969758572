//! The status page's data (`/status.json`): the daemon now (plugins and their generation,
//! connections by protocol, refusals and panics, its memory, CPU and descriptors, every
//! plugin metric, the settings in force) and the last minutes of its counters, sampled every [`EVERY`] by a thread of its
//! own, so that the event loops do nothing for the page until someone opens it.
//!
//! Who may read it ([`allowed`]) is a pure rule: a peer in `SWITCHYARD_STATUS_FROM`, and a
//! `Host` that names an address or `localhost`, never a name a DNS-rebinding page chose.

use super::history::{Point, EVERY};
use super::state::Shared;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes one sample of `shared`'s counters now, for the page's charts.
fn sample(shared: &Shared) {
    let totals = shared.metrics.totals();
    let process = super::process::sample();
    let point = Point {
        at: unix_millis(SystemTime::now()),
        accepted: totals.accepted,
        switched: totals.switches,
        refused: totals.responses[3],
        failed: totals.responses[4],
        panics: totals.panics,
        open: shared.open_connections() as u64,
        upgraded: shared
            .metrics
            .event_connections
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(0) as u64
            + shared.worker_slots.busy() as u64,
        resident: process.resident_bytes,
        cpu_us: u64::try_from(process.cpu.as_micros()).unwrap_or(u64::MAX),
    };
    shared.history.push(point);
}

/// Samples `shared` every [`EVERY`] until the daemon ends, on a thread of its own.
pub fn start_sampling(shared: &'static Shared) -> std::io::Result<()> {
    sample(shared);
    std::thread::Builder::new()
        .name("switchyard-status".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            while !shared.is_ending() {
                std::thread::sleep(EVERY);
                sample(shared);
            }
        })
        .map(|_| ())
}

/// Whether `/status` is answered to `peer` asking for `host` (the `Host` header, if any):
/// the peer is in `from`, and the host names an address or `localhost` (with or without a
/// port). A page of another site that got its name to resolve to this daemon (DNS
/// rebinding) sends its own name, and is refused.
pub fn allowed(from: &[ipnet::IpNet], peer: IpAddr, host: Option<&str>) -> bool {
    if !is_from(from, peer) {
        return false;
    }
    let Some(host) = host.map(str::trim) else {
        return true; // HTTP/1.0 without Host: no browser sends that
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            match port.bytes().all(|b| b.is_ascii_digit()) {
                true => name,
                false => host,
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// Whether `peer` is in one of `from`'s blocks (an IPv4-mapped IPv6 peer as its IPv4
/// address): who may read `/status` and `/metrics`.
pub fn is_from(from: &[ipnet::IpNet], peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    from.iter().any(|net| net.contains(&peer))
}

/// The value a setting has: its own when set, else `None` (its default applies). Only
/// `SWITCHYARD_*` and `RUST_LOG` values are shown: a plugin that lists another variable
/// (a password it reads) gets `(set)`, never its value.
fn set_value(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    match name.starts_with("SWITCHYARD_") || name == "RUST_LOG" {
        true => Some(value),
        false => Some("(set)".into()),
    }
}

/// Everything the page shows, as JSON.
pub fn json(shared: &Shared) -> String {
    let started = shared.started;
    let registry = shared.registry();
    let totals = shared.metrics.totals();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let plugins: Vec<serde_json::Value> = registry
        .plugins
        .iter()
        .map(|p| {
            let settings: Vec<serde_json::Value> = p
                .settings
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name, "value": set_value(&s.name),
                        "default": s.default, "help": s.help,
                    })
                })
                .collect();
            serde_json::json!({
                "name": p.name,
                "file": p.file.display().to_string(),
                "build": p.build,
                "abi": format!("1.{}", p.abi_minor()),
                "generation": p.generation,
                "tokens": p.tokens,
                "mode": if p.is_readiness() { "event loops" } else { "workers" },
                "in_service": p.in_service(),
                "open": p.stats.open.load(relaxed).max(0),
                "switched": p.stats.switches.load(relaxed),
                "panics": p.stats.panics.load(relaxed),
                "slow_calls": p.stats.slow_calls.load(relaxed),
                "settings": settings,
            })
        })
        .collect();
    let metrics: Vec<serde_json::Value> = crate::plugin::metrics::samples()
        .into_iter()
        .map(|s| {
            let labels: serde_json::Map<String, serde_json::Value> = s
                .labels
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            serde_json::json!({
                "plugin": s.plugin, "name": s.name, "kind": s.kind,
                "labels": labels, "value": s.value,
            })
        })
        .collect();
    let settings: Vec<serde_json::Value> = super::config::SETTINGS
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.variable, "value": set_value(s.variable),
                "default": s.default.replace('`', ""),
            })
        })
        .collect();
    let process = super::process::latest();
    let now = SystemTime::now();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "abi": format!("{}.{}", protocol_api::abi::ABI_MAJOR, protocol_api::abi::ABI_MINOR),
        "now": unix_millis(now),
        "started": unix_millis(started),
        "uptime_seconds": now.duration_since(started).map_or(0, |d| d.as_secs()),
        "generation": registry.generation,
        "stopping": shared.is_stopping(),
        "connections": {
            "open": shared.open_connections(),
            "max": shared.config.max_connections,
            "http": shared.metrics.http_connections.load(relaxed).max(0),
            "event_loops": shared.metrics.event_connections.load(relaxed).max(0),
            "workers": shared.worker_slots.busy(),
            "workers_max": shared.config.workers,
            "clients": shared.clients.tracked(),
        },
        "totals": {
            "accepted": totals.accepted,
            "switched": totals.switches,
            "panics": totals.panics,
            "responses": {
                "1xx": totals.responses[0], "2xx": totals.responses[1],
                "3xx": totals.responses[2], "4xx": totals.responses[3],
                "5xx": totals.responses[4],
            },
            "client_limit_refusals": {
                "connections": shared.clients.refused(super::clients::Limit::Connections),
                "workers": shared.clients.refused(super::clients::Limit::Workers),
            },
            "ended_idle": totals.ended_idle,
            "ended_write_timeout": totals.ended_write_timeout,
            "reloads_ok": totals.reloads_ok,
            "reloads_failed": totals.reloads_failed,
        },
        "process": {
            "resident_bytes": process.resident_bytes,
            "cpu_seconds": process.cpu.as_secs_f64(),
            "open_fds": process.open_fds,
            "max_fds": process.max_fds,
            "threads": process.threads,
        },
        "history": shared.history.json(),
        "plugins": plugins,
        "plugin_metrics": metrics,
        "settings": settings,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn only_allowed_peers_asking_by_address_or_localhost_are_answered() {
        let loopback: Vec<ipnet::IpNet> =
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert!(allowed(&loopback, local, Some("127.0.0.1:8080")));
        assert!(allowed(&loopback, local, Some("localhost:8080")));
        assert!(allowed(&loopback, local, Some("LOCALHOST")));
        assert!(allowed(
            &loopback,
            "::1".parse().unwrap(),
            Some("[::1]:8080")
        ));
        assert!(allowed(
            &loopback,
            "::ffff:127.0.0.1".parse().unwrap(),
            Some("[::1]")
        ));
        assert!(!allowed(
            &loopback,
            "10.0.0.1".parse().unwrap(),
            Some("127.0.0.1")
        ));
        assert!(!allowed(&loopback, local, Some("attacker.example:8080")));
        assert!(!allowed(&loopback, local, Some("127.0.0.1.nip.io")));
        assert!(!allowed(&[], local, Some("127.0.0.1")), "none: nobody");
    }
}
