//! Metrics a plugin declares once and updates from any thread (ABI 1.6): counters, gauges
//! and histograms, with label names, that the daemon renders in its `/metrics` as
//! `switchyard_<plugin>_<name>`.
//!
//! An update is one relaxed atomic add on a cell the daemon lent: no call into the
//! daemon, no lock. Finding a series by its label values takes a lock, so keep the handle
//! ([`Counter`], [`Gauge`], [`Histogram`]) where the hot path can reach it (in a route's
//! state, made once), and look up per connection at most.
//!
//! ```
//! use protocol_api::metrics;
//!
//! # fn main() -> Result<(), String> {
//! let opened = metrics::counter("route_connections_total", "Connections switched, per route.", &["route"])?;
//! let chat = opened.with(&["/chat"]);
//! chat.inc();
//! assert_eq!(chat.get(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! Label values must come from a bounded set (routes, status classes, known codes), never
//! straight from a client: the daemon keeps at most [`METRIC_MAX_SERIES`] series a family
//! and drops updates past it.
//!
//! Under a daemon before 1.6, or in a unit test, the same handles count in the plugin's
//! own memory: code need not ask which.

use crate::abi::{
    RawBytes, RawMetric, METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM, METRIC_MAX_BUCKETS,
    METRIC_MAX_LABELS, METRIC_MAX_SERIES,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// A count that only goes up.
#[derive(Clone, Copy, Debug)]
pub struct Counter(&'static AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Relaxed);
        }
    }
    /// The count so far (for tests and the plugin's own use).
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Copy, Debug)]
pub struct Gauge(&'static AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Takes one away.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    /// Adds `n` (negative: takes away).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// The value now.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
    /// One unit held until the guard drops: an open connection, a running program.
    pub fn hold(&self) -> Held {
        self.inc();
        Held(*self)
    }
}

/// One unit of a [`Gauge`], given back when dropped.
#[derive(Debug)]
pub struct Held(Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Values counted into buckets: `bounds[i]` is bucket `i`'s upper bound (inclusive), in
/// the plugin's unit; past the last, `+Inf`.
#[derive(Clone, Copy, Debug)]
pub struct Histogram {
    /// A count per bucket, `+Inf`'s last, then the sum.
    cells: &'static [AtomicU64],
    bounds: &'static [u64],
}

impl Histogram {
    /// Counts `value` (in the family's unit) into its bucket and the sum.
    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.cells[bucket].fetch_add(1, Relaxed);
        self.cells[self.bounds.len() + 1].fetch_add(value, Relaxed);
    }
    /// Observes a duration in microseconds: for families declared with
    /// [`MICROS_PER_SECOND`] as their scale.
    pub fn observe_micros(&self, took: Duration) {
        self.observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }
    /// How many values were observed.
    pub fn count(&self) -> u64 {
        self.cells[..=self.bounds.len()]
            .iter()
            .map(|c| c.load(Relaxed))
            .sum()
    }
}

/// The scale of a histogram of microseconds rendered in seconds.
pub const MICROS_PER_SECOND: u64 = 1_000_000;

/// Bucket bounds in microseconds for times from 0.5 ms to 10 s: connect times, backend
/// answers.
pub const LATENCY_MICROS: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// What a metric kind makes of a series' cells.
pub trait Metric: Copy + Send + Sync + 'static {
    #[doc(hidden)]
    const KIND: u32;
    #[doc(hidden)]
    fn from_cells(cells: &'static [AtomicU64], bounds: &'static [u64]) -> Self;
}

impl Metric for Counter {
    const KIND: u32 = METRIC_COUNTER;
    fn from_cells(cells: &'static [AtomicU64], _: &'static [u64]) -> Self {
        Counter(&cells[0])
    }
}

impl Metric for Gauge {
    const KIND: u32 = METRIC_GAUGE;
    fn from_cells(cells: &'static [AtomicU64], _: &'static [u64]) -> Self {
        // SAFETY: `AtomicI64` and `AtomicU64` have the same size, alignment and bit
        // validity; the ABI says a gauge's cell holds an `i64` in two's complement.
        Gauge(unsafe { &*(&cells[0] as *const AtomicU64).cast::<AtomicI64>() })
    }
}

impl Metric for Histogram {
    const KIND: u32 = METRIC_HISTOGRAM;
    fn from_cells(cells: &'static [AtomicU64], bounds: &'static [u64]) -> Self {
        Histogram { cells, bounds }
    }
}

/// One declared family: its series by label values.
pub struct Family<M> {
    /// The host's id, when the host renders it.
    id: Option<u32>,
    labels: usize,
    bounds: &'static [u64],
    series: Mutex<HashMap<Box<[String]>, M>>,
}

impl<M: Metric> Family<M> {
    /// The series for these label values (one per label name), made on first use.
    /// Past the daemon's [`METRIC_MAX_SERIES`], or with a wrong number of values, the
    /// handle counts in the plugin only.
    pub fn with(&self, values: &[&str]) -> M {
        let key: Box<[String]> = values.iter().map(|v| v.to_string()).collect();
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = series.get(&key) {
            return *found;
        }
        let cells = cell_count(M::KIND, self.bounds.len());
        let lent = match (self.id, values.len() == self.labels) {
            (Some(id), true) => crate::host::series(id, values, cells),
            _ => None,
        };
        let metric = M::from_cells(lent.unwrap_or_else(|| own_cells(cells)), self.bounds);
        if series.len() < METRIC_MAX_SERIES {
            series.insert(key, metric);
        }
        metric
    }
}

/// How many cells a series of `kind` has.
fn cell_count(kind: u32, buckets: usize) -> usize {
    match kind {
        METRIC_HISTOGRAM => buckets + 2,
        _ => 1,
    }
}

/// Cells in the plugin's own memory, for a host without metrics; kept for the process's
/// life as the host's are (bounded: at most [`METRIC_MAX_SERIES`] a family are made
/// through the cache, and a refused series is made once per lookup, which callers do
/// per connection at most).
fn own_cells(count: usize) -> &'static [AtomicU64] {
    Box::leak((0..count).map(|_| AtomicU64::new(0)).collect())
}

/// Declares a counter family: `name` after `switchyard_<plugin>_`, ending in `_total`.
pub fn counter(name: &str, help: &str, labels: &[&str]) -> Result<Family<Counter>, String> {
    declare(METRIC_COUNTER, name, help, labels, &[], 1)
}

/// Declares a gauge family.
pub fn gauge(name: &str, help: &str, labels: &[&str]) -> Result<Family<Gauge>, String> {
    declare(METRIC_GAUGE, name, help, labels, &[], 1)
}

/// Declares a histogram family: `bounds` rising, in units of which `scale` make one of
/// the unit `name` states (values in microseconds, name in `_seconds`: [`MICROS_PER_SECOND`]).
pub fn histogram(
    name: &str,
    help: &str,
    labels: &[&str],
    bounds: &'static [u64],
    scale: u64,
) -> Result<Family<Histogram>, String> {
    declare(METRIC_HISTOGRAM, name, help, labels, bounds, scale)
}

fn declare<M: Metric>(
    kind: u32,
    name: &str,
    help: &str,
    labels: &[&str],
    bounds: &'static [u64],
    scale: u64,
) -> Result<Family<M>, String> {
    check(kind, name, labels, bounds)?;
    let label_bytes: Vec<RawBytes> = labels.iter().map(|l| RawBytes::new(l.as_bytes())).collect();
    let raw = RawMetric {
        kind,
        name: RawBytes::new(name.as_bytes()),
        help: RawBytes::new(help.as_bytes()),
        labels: label_bytes.as_ptr(),
        labels_len: label_bytes.len(),
        buckets: bounds.as_ptr(),
        buckets_len: bounds.len(),
        scale,
    };
    let id = crate::host::declare(&raw)?;
    Ok(Family {
        id,
        labels: labels.len(),
        bounds,
        series: Mutex::new(HashMap::new()),
    })
}

/// Whether the daemon renders this plugin's metrics (false under a daemon before 1.6 and
/// in unit tests).
pub fn rendered_by_host() -> bool {
    crate::host::has_metrics()
}

/// A Prometheus metric or label name: `[a-zA-Z_][a-zA-Z0-9_]*`, here lower case only.
pub fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The rules a declaration keeps, the host's and the plugin's alike: names, how many
/// labels, buckets rising and not too many. `le` is the histogram's own label.
pub fn check(kind: u32, name: &str, labels: &[&str], bounds: &[u64]) -> Result<(), String> {
    if !matches!(kind, METRIC_COUNTER | METRIC_GAUGE | METRIC_HISTOGRAM) {
        return Err(format!(
            "metric {name:?}: kind {kind} is not one the ABI defines"
        ));
    }
    if !is_name(name) {
        return Err(format!("metric name {name:?} is not [a-z_][a-z0-9_]*"));
    }
    if labels.len() > METRIC_MAX_LABELS {
        return Err(format!(
            "metric {name}: more than {METRIC_MAX_LABELS} labels"
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        if !is_name(label)
            || label.starts_with("__")
            || *label == "le"
            || labels[..i].contains(label)
        {
            return Err(format!(
                "metric {name}: label name {label:?} is not allowed"
            ));
        }
    }
    if kind == METRIC_HISTOGRAM {
        if bounds.is_empty() || bounds.len() > METRIC_MAX_BUCKETS {
            return Err(format!(
                "metric {name}: a histogram needs 1 to {METRIC_MAX_BUCKETS} buckets"
            ));
        }
        if bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("metric {name}: bucket bounds must rise"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_count_in_the_plugin_without_a_host() {
        let opened = counter("opened_total", "Opened.", &["route"]).unwrap();
        opened.with(&["/a"]).inc();
        opened.with(&["/a"]).add(2);
        opened.with(&["/b"]).inc();
        assert_eq!(opened.with(&["/a"]).get(), 3, "the same series each time");
        assert_eq!(opened.with(&["/b"]).get(), 1);
        let open = gauge("open", "Open now.", &[]).unwrap();
        let held = open.with(&[]).hold();
        assert_eq!(open.with(&[]).get(), 1);
        drop(held);
        assert_eq!(open.with(&[]).get(), 0);
    }

    #[test]
    fn a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() {
        static BOUNDS: &[u64] = &[10, 100];
        let took = histogram("took_seconds", "Took.", &[], BOUNDS, 1000).unwrap();
        let h = took.with(&[]);
        for v in [0, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let counts: Vec<u64> = h.cells.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(counts, [2, 2, 2, 5222], "<=10, <=100, +Inf, then the sum");
        assert_eq!(h.count(), 6);
    }

    #[test]
    fn declarations_are_checked() {
        assert!(counter("Bad-name", "", &[]).is_err());
        assert!(counter("ok_total", "", &["le"]).is_err());
        assert!(counter("ok_total", "", &["a", "a"]).is_err());
        assert!(counter("ok_total", "", &["a", "b", "c", "d", "e"]).is_err());
        static FALLING: &[u64] = &[10, 5];
        assert!(histogram("h", "", &[], FALLING, 1).is_err());
        assert!(histogram("h", "", &[], &[], 1).is_err());
        assert!(gauge("fine_name_2", "", &["route", "code"]).is_ok());
    }
}
