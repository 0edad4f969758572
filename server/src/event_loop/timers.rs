//! When each connection of an event loop next needs attention (a request time-out, the end
//! of a lingering close, a plugin's timer, an idle limit): one heap of deadlines.
//!
//! Deadlines mostly move later (each request, each message pushes the idle limit back), so
//! scheduling is lazy: a connection keeps the time it is scheduled for, and a later deadline
//! pushes nothing; when the scheduled time comes, the loop asks the connection for its real
//! deadline and schedules again. A connection thus has one live entry, and busy connections
//! cost the heap nothing per message.
//!
//! A closed connection's entry stays until its time comes, which for an upgraded one may be
//! the idle limit, minutes away: under connection churn those would pile up (thousands a
//! second, each kept for minutes). So once stale entries outnumber the live ones the heap is
//! rebuilt from the live ones ([`Timers::compact`]), an O(n) pass paid for by the n pushes
//! that made it necessary.

use protocol_api::moment::Moment;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A heap entry: when, the connection's slot, and its id (which tells it from a later
/// connection in the same slot). 16 bytes: a loop holds one or two per connection.
type Due = Reverse<(Moment, u32, u32)>;

/// Below this many entries a heap is never compacted: cheap either way.
const COMPACT_ABOVE: usize = 1024;

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Due>,
}

impl Timers {
    /// Makes sure connection `(slot, id)`, now scheduled for `scheduled`, is looked at by
    /// `at`.
    pub fn schedule(&mut self, scheduled: &mut Option<Moment>, at: Moment, slot: usize, id: u32) {
        if scheduled.is_some_and(|s| s <= at) {
            return;
        }
        *scheduled = Some(at);
        let slot = u32::try_from(slot).expect("a loop holds fewer than 2^32 connections");
        self.heap.push(Reverse((at, slot, id)));
    }

    /// The earliest time anything is scheduled for.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| at.instant())
    }

    /// Whether the heap holds more than twice `live` entries (and is not small): then most of
    /// it is stale, and [`Timers::compact`] should run.
    pub fn wants_compaction(&self, live: usize) -> bool {
        self.heap.len() > 2 * live + COMPACT_ABOVE
    }

    /// Keeps only the entries `live` says still count (the connection in that slot, with
    /// that id, still scheduled for that time).
    pub fn compact(&mut self, mut live: impl FnMut(Moment, usize, u32) -> bool) {
        self.heap
            .retain(|Reverse((at, slot, id))| live(*at, *slot as usize, *id));
        self.heap.shrink_to(self.heap.len() * 2);
    }

    /// Takes the earliest entry if it is due by `now`. The caller checks it is still the
    /// connection's scheduled time (stale entries are skipped).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Moment, usize, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= Moment::of(now) => {
                let Reverse((at, slot, id)) = self.heap.pop()?;
                Some((at, slot as usize, id))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn churn_leaves_no_pile_of_stale_entries() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        // 10,000 connections come and go, each leaving a deadline five minutes away; one
        // stays.
        let mut kept = None;
        timers.schedule(&mut kept, Moment::of(t0 + Duration::from_secs(300)), 0, 0);
        for id in 1..10_000u32 {
            let mut scheduled = None;
            timers.schedule(
                &mut scheduled,
                Moment::of(t0 + Duration::from_secs(300)),
                1,
                id,
            );
            if timers.wants_compaction(1) {
                timers.compact(|_, slot, id| (slot, id) == (0, 0));
            }
        }
        assert!(
            timers.heap.len() <= 2 + COMPACT_ABOVE,
            "{}",
            timers.heap.len()
        );
        assert_eq!(
            timers
                .pop_due(t0 + Duration::from_secs(301))
                .map(|d| (d.1, d.2)),
            Some((0, 0))
        );
    }

    /// A loop holds one per connection, and one more for each connection that ended or
    /// moved its deadline earlier until that entry's time comes.
    #[test]
    fn an_entry_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Due>(), 16);
    }

    #[test]
    fn later_deadlines_push_nothing_earlier_ones_do() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut scheduled = None;
        timers.schedule(
            &mut scheduled,
            Moment::of(t0 + Duration::from_secs(5)),
            1,
            7,
        );
        timers.schedule(
            &mut scheduled,
            Moment::of(t0 + Duration::from_secs(9)),
            1,
            7,
        );
        assert_eq!(
            timers.heap.len(),
            1,
            "a later deadline waits for the earlier one"
        );
        timers.schedule(
            &mut scheduled,
            Moment::of(t0 + Duration::from_secs(2)),
            1,
            7,
        );
        assert_eq!(scheduled, Some(Moment::of(t0 + Duration::from_secs(2))));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            timers.pop_due(t0 + Duration::from_secs(3)),
            Some((Moment::of(t0 + Duration::from_secs(2)), 1, 7))
        );
        // The entry for 5 s is stale now: the caller compares it with `scheduled`.
        assert_eq!(
            timers.pop_due(t0 + Duration::from_secs(6)).map(|d| d.0),
            Some(Moment::of(t0 + Duration::from_secs(5)))
        );
    }
}
