//! The status page's memory: samples of the daemon's counters over the last minutes, taken
//! by a thread of their own ([`super::status::start_sampling`]) and charted by the page.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(2);
/// How many samples are kept: ten minutes.
const KEPT: usize = 300;

/// One sample of the daemon's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Point {
    /// Unix time, milliseconds.
    pub at: u64,
    pub accepted: u64,
    pub switched: u64,
    /// Responses the daemon wrote with a 4xx or 5xx status, and panics caught.
    pub refused: u64,
    pub failed: u64,
    pub panics: u64,
    pub open: u64,
    pub upgraded: u64,
    /// The process's resident memory (bytes) and CPU time used so far (microseconds).
    pub resident: u64,
    pub cpu_us: u64,
}

/// The samples of the last minutes.
#[derive(Default)]
pub struct History {
    points: Mutex<VecDeque<Point>>,
}

impl History {
    /// Keeps `point`, the oldest dropped past ten minutes.
    pub fn push(&self, point: Point) {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        if points.len() == KEPT {
            points.pop_front();
        }
        points.push_back(point);
    }

    pub fn json(&self) -> serde_json::Value {
        let points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        let column = |f: fn(&Point) -> u64| points.iter().map(f).collect::<Vec<u64>>();
        serde_json::json!({
            "every_seconds": EVERY.as_secs(),
            "at": column(|p| p.at),
            "accepted": column(|p| p.accepted),
            "switched": column(|p| p.switched),
            "refused_4xx": column(|p| p.refused),
            "failed_5xx": column(|p| p.failed),
            "panics": column(|p| p.panics),
            "open": column(|p| p.open),
            "upgraded": column(|p| p.upgraded),
            "resident_bytes": column(|p| p.resident),
            "cpu_microseconds": column(|p| p.cpu_us),
        })
    }
}
