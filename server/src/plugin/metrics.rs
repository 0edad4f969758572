//! Plugins' own metrics (ABI 1.6): the families they declare, the cells of each series the
//! daemon lends them, and the Prometheus text they render as in `/metrics`.
//!
//! The rule across reloads: a family belongs to a plugin *name*, not to a loaded file.
//! A new generation that declares a family again with the same kind, labels, buckets and
//! scale gets the very same family and cells, so counters carry on and a gauge of open
//! connections stays true while the old generation's connections close. One declared
//! with another shape replaces it in `/metrics` (logged); the old generation's updates then
//! go to cells nobody renders. Cells live as long as the process, as plugins do.

use protocol_api::abi::{METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM, METRIC_MAX_SERIES};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

/// One family as a plugin declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    pub kind: u32,
    pub name: String,
    pub help: String,
    pub labels: Vec<String>,
    pub bounds: Vec<u64>,
    pub scale: u64,
}

impl Declaration {
    /// Same kind, labels, buckets and scale: the cells mean the same.
    fn same_shape(&self, other: &Declaration) -> bool {
        (self.kind, &self.labels, &self.bounds, self.scale.max(1))
            == (other.kind, &other.labels, &other.bounds, other.scale.max(1))
    }

    fn cells(&self) -> usize {
        match self.kind {
            METRIC_HISTOGRAM => self.bounds.len() + 2,
            _ => 1,
        }
    }
}

struct Family {
    /// The plugin's name as rendered ([`name_part`]).
    plugin: String,
    declared: Declaration,
    series: Mutex<Vec<(Vec<String>, &'static [AtomicU64])>>,
    /// Another declaration of the same name took its place in `/metrics`.
    replaced: AtomicBool,
    /// Past [`METRIC_MAX_SERIES`] once: logged once.
    full: AtomicBool,
}

/// Every family of every plugin, by id (its index). Never shrinks.
fn families() -> &'static Mutex<Vec<&'static Family>> {
    static FAMILIES: OnceLock<Mutex<Vec<&'static Family>>> = OnceLock::new();
    FAMILIES.get_or_init(Mutex::default)
}

fn all() -> Vec<&'static Family> {
    families().lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The first words of the daemon's own metric names (`switchyard_<word>_...`): a plugin
/// rendered under one of them could repeat a daemon metric, so it may not declare any.
const DAEMON_WORDS: &[&str] = &[
    "client",
    "clients",
    "connections",
    "http",
    "open",
    "plugin",
    "reloads",
    "responses",
    "switches",
    "tls",
    "upgraded",
    "workers",
];

/// The names a family's samples take in the text format, after `switchyard_<plugin>_`.
fn sample_names(declared: &Declaration) -> Vec<String> {
    match declared.kind {
        METRIC_HISTOGRAM => ["_bucket", "_sum", "_count", ""]
            .iter()
            .map(|suffix| format!("{}{suffix}", declared.name))
            .collect(),
        _ => vec![declared.name.clone()],
    }
}

/// Declares a family for `plugin`; the id to hand back, or why not. Families belong to
/// the plugin's name as rendered (`my-x` and `my_x` are one), and none may render a
/// sample name another family of it renders, or a daemon metric's.
pub fn declare(plugin: &str, declared: Declaration) -> Result<u32, String> {
    let labels: Vec<&str> = declared.labels.iter().map(String::as_str).collect();
    protocol_api::metrics::check(declared.kind, &declared.name, &labels, &declared.bounds)?;
    let plugin = name_part(plugin);
    if DAEMON_WORDS.contains(&plugin.as_str()) {
        return Err(format!(
            "a plugin named {plugin:?} would render its metrics among the daemon's (switchyard_{plugin}_...): rename the plugin"
        ));
    }
    let plugin = plugin.as_str();
    let mut families = families().lock().unwrap_or_else(|e| e.into_inner());
    let mine = |f: &&Family| {
        f.plugin == plugin && f.declared.name == declared.name && !f.replaced.load(Relaxed)
    };
    let names = sample_names(&declared);
    let clash = families.iter().find(|f| {
        f.plugin == plugin
            && f.declared.name != declared.name
            && !f.replaced.load(Relaxed)
            && sample_names(&f.declared).iter().any(|n| names.contains(n))
    });
    if let Some(other) = clash {
        return Err(format!(
            "metric {} would render a sample name of metric {}",
            declared.name, other.declared.name
        ));
    }
    if let Some(index) = families.iter().position(mine) {
        let family = families[index];
        if family.declared.same_shape(&declared) {
            return Ok(index as u32);
        }
        log::warn!(
            "plugin {plugin} declared metric {} anew with another kind, labels or buckets: its earlier series leave /metrics",
            declared.name
        );
        family.replaced.store(true, Relaxed);
    }
    let id = u32::try_from(families.len()).map_err(|_| "too many metric families".to_string())?;
    families.push(Box::leak(Box::new(Family {
        plugin: plugin.to_string(),
        declared,
        series: Mutex::default(),
        replaced: AtomicBool::new(false),
        full: AtomicBool::new(false),
    })));
    Ok(id)
}

/// A counter's or gauge's cell, alone on its cache line: two series updated by two
/// threads never share one.
#[repr(align(64))]
struct OneLine([AtomicU64; 1]);

/// A histogram's cells (at most `METRIC_MAX_BUCKETS + 2`), on lines of their own.
#[repr(align(64))]
struct Lines([AtomicU64; protocol_api::abi::METRIC_MAX_BUCKETS + 2]);

fn new_cells(count: usize) -> &'static [AtomicU64] {
    match count {
        1 => &Box::leak(Box::new(OneLine(Default::default()))).0,
        _ => &Box::leak(Box::new(Lines(std::array::from_fn(|_| AtomicU64::new(0))))).0[..count],
    }
}

/// The cells of `plugin`'s family `id` for `values`; `None` for another plugin's family,
/// a wrong number of values, or a family full.
pub fn series(plugin: &str, id: u32, values: Vec<String>) -> Option<&'static [AtomicU64]> {
    let family = *all().get(id as usize)?;
    if family.plugin != name_part(plugin) || values.len() != family.declared.labels.len() {
        return None;
    }
    let mut series = family.series.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, cells)) = series.iter().find(|(v, _)| *v == values) {
        return Some(cells);
    }
    if series.len() >= METRIC_MAX_SERIES {
        if !family.full.swap(true, Relaxed) {
            log::warn!(
                "plugin {plugin}: metric {} has {METRIC_MAX_SERIES} series, its most; updates for new label values are dropped",
                family.declared.name
            );
        }
        return None;
    }
    let cells = new_cells(family.declared.cells());
    series.push((values, cells));
    Some(cells)
}

/// `name` as a Prometheus name part: lower case, `_` for anything but letters and digits.
fn name_part(name: &str) -> String {
    name.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .collect()
}

/// A label value in the text format's escapes.
fn escaped(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `value / scale` as the text format writes a number.
fn scaled(value: u64, scale: u64) -> String {
    match scale {
        0 | 1 => value.to_string(),
        _ => format!("{}", value as f64 / scale as f64),
    }
}

/// One series' value now, for the status page: counters and gauges their value,
/// histograms their count.
#[derive(Debug, Clone)]
pub struct Sample {
    pub plugin: String,
    pub name: String,
    /// `counter`, `gauge` or `histogram` (whose value is its count).
    pub kind: &'static str,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        METRIC_COUNTER => "counter",
        METRIC_GAUGE => "gauge",
        _ => "histogram",
    }
}

/// Every live series' value, for the status page.
pub fn samples() -> Vec<Sample> {
    let mut out = Vec::new();
    for family in all().into_iter().filter(|f| !f.replaced.load(Relaxed)) {
        let d = &family.declared;
        let series = family.series.lock().unwrap_or_else(|e| e.into_inner());
        for (values, cells) in series.iter() {
            let value = match d.kind {
                METRIC_GAUGE => cells[0].load(Relaxed) as i64 as f64,
                METRIC_HISTOGRAM => cells[..=d.bounds.len()]
                    .iter()
                    .map(|c| c.load(Relaxed))
                    .sum::<u64>() as f64,
                _ => cells[0].load(Relaxed) as f64,
            };
            out.push(Sample {
                plugin: family.plugin.clone(),
                name: d.name.clone(),
                kind: kind_name(d.kind),
                labels: d
                    .labels
                    .iter()
                    .cloned()
                    .zip(values.iter().cloned())
                    .collect(),
                value,
            });
        }
    }
    out
}

/// Every family in the Prometheus text format, `switchyard_<plugin>_<name>`.
pub fn render(out: &mut String) {
    for family in all().into_iter().filter(|f| !f.replaced.load(Relaxed)) {
        let d = &family.declared;
        let full = format!("switchyard_{}_{}", family.plugin, d.name);
        let kind = kind_name(d.kind);
        let help = d.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {full} {help}\n# TYPE {full} {kind}");
        let series = family.series.lock().unwrap_or_else(|e| e.into_inner());
        for (values, cells) in series.iter() {
            let pairs: Vec<String> = d
                .labels
                .iter()
                .zip(values)
                .map(|(l, v)| format!("{l}=\"{}\"", escaped(v)))
                .collect();
            let labels = |extra: Option<String>| {
                let all: Vec<String> = pairs.iter().cloned().chain(extra).collect();
                match all.is_empty() {
                    true => String::new(),
                    false => format!("{{{}}}", all.join(",")),
                }
            };
            match d.kind {
                METRIC_COUNTER => {
                    let _ = writeln!(out, "{full}{} {}", labels(None), cells[0].load(Relaxed));
                }
                METRIC_GAUGE => {
                    let value = cells[0].load(Relaxed) as i64;
                    let shown = match d.scale {
                        0 | 1 => value.to_string(),
                        scale => format!("{}", value as f64 / scale as f64),
                    };
                    let _ = writeln!(out, "{full}{} {shown}", labels(None));
                }
                _ => {
                    let mut cumulative = 0u64;
                    for (i, cell) in cells[..=d.bounds.len()].iter().enumerate() {
                        cumulative += cell.load(Relaxed);
                        let le = match d.bounds.get(i) {
                            Some(bound) => scaled(*bound, d.scale),
                            None => "+Inf".to_string(),
                        };
                        let _ = writeln!(
                            out,
                            "{full}_bucket{} {cumulative}",
                            labels(Some(format!("le=\"{le}\"")))
                        );
                    }
                    let sum = cells[d.bounds.len() + 1].load(Relaxed);
                    let _ = writeln!(out, "{full}_sum{} {}", labels(None), scaled(sum, d.scale));
                    let _ = writeln!(out, "{full}_count{} {cumulative}", labels(None));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declaration(kind: u32, name: &str) -> Declaration {
        Declaration {
            kind,
            name: name.into(),
            help: "h".into(),
            labels: vec!["route".into()],
            bounds: match kind {
                METRIC_HISTOGRAM => vec![1, 10],
                _ => Vec::new(),
            },
            scale: 1,
        }
    }

    /// The text format stays one family per name: a sample name two families would
    /// render, or a plugin whose name is a word of the daemon's own metrics, is refused.
    #[test]
    fn a_declaration_that_would_repeat_a_sample_name_is_refused() {
        let took = declare("test-clash", declaration(METRIC_HISTOGRAM, "took")).unwrap();
        assert!(declare("test_clash", declaration(METRIC_COUNTER, "took_count")).is_err());
        assert!(declare("test-clash", declaration(METRIC_COUNTER, "took_sum")).is_err());
        assert_eq!(
            declare("test_clash", declaration(METRIC_HISTOGRAM, "took")),
            Ok(took),
            "the same family again (another generation, or the same name rendered)"
        );
        let err = declare("plugin", declaration(METRIC_COUNTER, "panics_total")).unwrap_err();
        assert!(err.contains("rename the plugin"), "{err}");
        let mut text = String::new();
        let cells = series("test-clash", took, vec!["/a\"b".into()]).unwrap();
        cells[0].fetch_add(1, Relaxed);
        cells[3].fetch_add(7, Relaxed);
        render(&mut text);
        assert!(
            text.contains("switchyard_test_clash_took_bucket{route=\"/a\\\"b\",le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("switchyard_test_clash_took_sum{route=\"/a\\\"b\"} 7\n"));
        assert!(
            series("another", took, vec!["/a".into()]).is_none(),
            "not its family"
        );
        assert!(
            series("test-clash", took, vec![]).is_none(),
            "one value per label"
        );
    }
}
