//! When each connection of an event loop next needs attention (a request time-out, the end
//! of a lingering close, a plugin's timer, an idle limit): one heap of deadlines.
//!
//! Deadlines mostly move later (each request, each message pushes the idle limit back), so
//! scheduling is lazy: a connection keeps the time it is scheduled for, and a later deadline
//! pushes nothing; when the scheduled time comes, the loop asks the connection for its real
//! deadline and schedules again. A connection thus has one live entry, and busy connections
//! cost the heap nothing per message.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A heap entry: when, the connection's slot, and its id (which tells it from a later
/// connection in the same slot).
type Due = Reverse<(Instant, usize, u64)>;

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Due>,
}

impl Timers {
    /// Makes sure connection `(slot, id)`, now scheduled for `scheduled`, is looked at by
    /// `at`.
    pub fn schedule(&mut self, scheduled: &mut Option<Instant>, at: Instant, slot: usize, id: u64) {
        if scheduled.is_some_and(|s| s <= at) {
            return;
        }
        *scheduled = Some(at);
        self.heap.push(Reverse((at, slot, id)));
    }

    /// The earliest time anything is scheduled for.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes the earliest entry if it is due by `now`. The caller checks it is still the
    /// connection's scheduled time (stale entries are skipped).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(due)| due),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn later_deadlines_push_nothing_earlier_ones_do() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut scheduled = None;
        timers.schedule(&mut scheduled, t0 + Duration::from_secs(5), 1, 7);
        timers.schedule(&mut scheduled, t0 + Duration::from_secs(9), 1, 7);
        assert_eq!(
            timers.heap.len(),
            1,
            "a later deadline waits for the earlier one"
        );
        timers.schedule(&mut scheduled, t0 + Duration::from_secs(2), 1, 7);
        assert_eq!(scheduled, Some(t0 + Duration::from_secs(2)));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            timers.pop_due(t0 + Duration::from_secs(3)),
            Some((t0 + Duration::from_secs(2), 1, 7))
        );
        // The entry for 5 s is stale now: the caller compares it with `scheduled`.
        assert_eq!(
            timers.pop_due(t0 + Duration::from_secs(6)).map(|d| d.0),
            Some(t0 + Duration::from_secs(5))
        );
    }
}
