//! The process's own figures for `/metrics`, under the names every Prometheus client
//! library gives them (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, ...), so that the dashboards and alerts operators already have for
//! any daemon (memory growth, descriptors near their limit, restarts) work unchanged.
//!
//! Read from `/proc/self` every 2 s by the status page's sampling thread ([`sample`]),
//! never on an event loop: before Linux 6.2 the open descriptors are counted by listing
//! `/proc/self/fd`, milliseconds with tens of thousands open (from 6.2 the kernel gives
//! the count as the folder's size). `/metrics` and `/status.json` show the last sample
//! ([`latest`]): 2 s old at most, and `/metrics` is rendered again once a second, so 3 s.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last figures [`sample`] took.
static LATEST: Mutex<Option<Figures>> = Mutex::new(None);

/// Takes the process's figures now and keeps them for [`latest`]; off the event loops.
pub fn sample() -> Figures {
    let figures = Figures::now();
    *LATEST.lock().unwrap_or_else(|e| e.into_inner()) = Some(figures.clone());
    figures
}

/// The figures [`sample`] took last (taken now if it has not run yet).
pub fn latest() -> Figures {
    let latest = LATEST.lock().unwrap_or_else(|e| e.into_inner()).clone();
    latest.unwrap_or_else(sample)
}

/// The process's figures at one moment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures {
    pub cpu: Duration,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on descriptors (`RLIMIT_NOFILE`), `None` when unlimited.
    pub max_fds: Option<u64>,
    pub threads: u64,
}

impl Figures {
    /// This process's figures now; a figure that cannot be read is 0.
    pub fn now() -> Figures {
        let page = crate::sys::page_size();
        let (virtual_pages, resident_pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| statm_pages(&statm))
            .unwrap_or_default();
        Figures {
            cpu: crate::sys::process_cpu_time(),
            resident_bytes: resident_pages * page,
            virtual_bytes: virtual_pages * page,
            open_fds: open_fds(),
            max_fds: rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
                .filter(|&soft| soft != rlimit::INFINITY),
            threads: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|stat| stat_threads(&stat))
                .unwrap_or_default(),
        }
    }

    /// The figures in the Prometheus text format; `started` is when the process began.
    pub fn render(&self, out: &mut String, started: SystemTime) {
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            format!("{:.6}", self.cpu.as_secs_f64()),
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_bytes.to_string(),
        );
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            self.virtual_bytes.to_string(),
        );
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.to_string(),
        );
        if let Some(max) = self.max_fds {
            metric(
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                max.to_string(),
            );
        }
        metric(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            self.threads.to_string(),
        );
        let started = started.duration_since(UNIX_EPOCH).unwrap_or_default();
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            format!("{:.3}", started.as_secs_f64()),
        );
    }
}

/// `/proc/self/statm`'s first two fields: the virtual and the resident size, in pages.
fn statm_pages(statm: &str) -> Option<(u64, u64)> {
    let mut fields = statm.split_ascii_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// `/proc/self/stat`'s `num_threads` (field 20). The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted from the
/// last `)`.
fn stat_threads(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (the state) is the first after the name: 20 is the 18th.
    after_name.split_ascii_whitespace().nth(17)?.parse().ok()
}

/// Open descriptors: the kernel's count (the size it gives `/proc/self/fd`, Linux 6.2 on),
/// else the directory's entries (less the one the listing holds open).
fn open_fds() -> u64 {
    match std::fs::metadata("/proc/self/fd") {
        Ok(meta) if meta.len() > 0 => meta.len(),
        _ => std::fs::read_dir("/proc/self/fd")
            .map_or(0, |entries| entries.count().saturating_sub(1) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_statm_and_stat() {
        assert_eq!(
            statm_pages("45210 2318 1632 410 0 3721 0\n"),
            Some((45210, 2318))
        );
        assert_eq!(statm_pages("12\n"), None);
        let stat = "4242 (sw (x) y) S 1 4242 4242 0 -1 4194560 1033 0 0 0 5 3 0 0 20 0 7 0 \
                    123456 185184256 2318 18446744073709551615";
        assert_eq!(stat_threads(stat), Some(7));
        assert_eq!(stat_threads("4242 (sw) S 1"), None);
    }

    #[test]
    fn this_process_is_seen() {
        let figures = Figures::now();
        assert!(figures.resident_bytes > 0 && figures.virtual_bytes >= figures.resident_bytes);
        assert!(figures.open_fds >= 3, "{figures:?}");
        assert!(figures.threads >= 1, "{figures:?}");
        let mut text = String::new();
        figures.render(
            &mut text,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
        );
        assert!(
            text.contains("\nprocess_start_time_seconds 1700000000.250\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
    }
}
