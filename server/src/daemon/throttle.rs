//! Log lines a client can cause, one a second at most for each kind: a line per
//! connection would let one client write the log as fast as it connects (an attacker's
//! review measured 10,000 lines a second from one Python loop), filling disks and journald's
//! rate limit, and stalling the event loop that writes them once stderr's pipe is full.
//! The line that is written says how many like it were not.

use std::sync::atomic::{AtomicU64, Ordering};

/// One kind of line, as a `static` where it is logged.
pub struct Throttle {
    /// The second (on the monotonic clock, plus one) of the last line written.
    logged_at: AtomicU64,
    /// Lines not written since.
    unlogged: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            logged_at: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// `Some(note)` when a line may be written now: `note` tells how many were not since
    /// the last one (empty when none), to end the line with. `None`: this one is counted.
    pub fn admit(&self) -> Option<Unlogged> {
        let second = crate::sys::monotonic_usec() / 1_000_000 + 1;
        self.admit_at(second)
    }

    fn admit_at(&self, second: u64) -> Option<Unlogged> {
        let last = self.logged_at.load(Ordering::Relaxed);
        let turn = second > last
            && self
                .logged_at
                .compare_exchange(last, second, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if turn {
            Some(Unlogged(self.unlogged.swap(0, Ordering::AcqRel)))
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new()
    }
}

/// How many lines of a kind went unwritten before this one; displays as
/// ` (N more like it not logged)`, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unlogged(pub u64);

impl std::fmt::Display for Unlogged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more like it not logged since the last)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_then_the_count_of_the_rest() {
        let throttle = Throttle::new();
        assert_eq!(throttle.admit_at(5), Some(Unlogged(0)));
        assert_eq!(throttle.admit_at(5), None);
        assert_eq!(throttle.admit_at(5), None);
        assert_eq!(throttle.admit_at(6), Some(Unlogged(2)));
        assert_eq!(throttle.admit_at(6), None);
        assert_eq!(throttle.admit_at(9), Some(Unlogged(1)));
        assert_eq!(Unlogged(0).to_string(), "");
        assert_eq!(
            Unlogged(2).to_string(),
            " (2 more like it not logged since the last)"
        );
    }
}
