//! What the echo's connections hold, all together, in messages not yet whole.
//!
//! The echo answers a message with a message, so it holds each one until its last frame:
//! up to `SWITCHYARD_WEBSOCKET_MAX_MESSAGE` (16 MiB) a connection. A message's first frame
//! can be a deflate bomb (16 KiB that inflate to 16 MiB) whose last frame never comes: 40
//! connections sending 653 KB made the daemon hold 666 MB, and one address may hold 2,500
//! connections. So the bytes held this way are counted for the whole process, and a
//! connection whose message grows while the total is over [`budget`] is closed with 1013
//! (Try Again Later, RFC 6455 §7.4.1 as registered): the budget bounds what any number of
//! clients can make the echo hold, and under it every message up to the limit is echoed
//! as before. Routes take messages in parts ([`crate::receiver::Delivery::Parts`]) and
//! hold at most a part.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held in messages not yet whole, by every connection of the process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// What all connections together may hold: four messages of the largest size allowed.
pub fn budget(max_message: usize) -> usize {
    max_message.saturating_mul(4)
}

/// One connection's share of the count, given back when it is dropped.
#[derive(Default)]
pub struct Share {
    counted: usize,
}

impl Share {
    /// Counts that the connection now holds `now` bytes of a message in assembly. False
    /// when they grew and all connections together hold more than `budget`: close it.
    pub fn count(&mut self, now: usize, budget: usize) -> bool {
        let counted = std::mem::replace(&mut self.counted, now);
        if now > counted {
            let total = HELD.fetch_add(now - counted, Ordering::Relaxed) + (now - counted);
            total <= budget
        } else {
            if now < counted {
                HELD.fetch_sub(counted - now, Ordering::Relaxed);
            }
            true
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        HELD.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_budget_is_refused_and_shares_are_given_back() {
        // HELD is the process's: other tests' connections may count too, so the budget
        // here is measured from what is held now.
        let base = HELD.load(Ordering::Relaxed);
        let budget = base + 100;
        let (mut a, mut b) = (Share::default(), Share::default());
        assert!(a.count(60, budget));
        assert!(b.count(40, budget), "exactly at the budget");
        assert!(!b.count(41, budget), "growing past it");
        assert!(a.count(10, budget), "shrinking is always fine");
        assert!(b.count(90, budget), "room again");
        drop(a);
        drop(b);
        assert_eq!(HELD.load(Ordering::Relaxed), base);
    }
}
