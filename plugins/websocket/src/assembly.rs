//! What the echo's connections hold, all together and per client, in messages not yet
//! whole.
//!
//! The echo answers a message with a message, so it holds each one until its last frame:
//! up to `SWITCHYARD_WEBSOCKET_MAX_MESSAGE` (16 MiB) a connection. A message's first frame
//! can be a deflate bomb (16 KiB that inflate to 16 MiB) whose last frame never comes: 40
//! connections sending 653 KB made the daemon hold 666 MB, and one address may hold 2,500
//! connections. So the bytes held this way are counted for the whole process, and a
//! connection whose message grows while the total is over [`budget`] is closed with 1013
//! (Try Again Later, RFC 6455 §7.4.1 as registered): the budget bounds what any number of
//! clients can make the echo hold, and under it every message up to the limit is echoed
//! as before.
//!
//! One address alone could fill that budget with four such connections, and then every
//! other client's large message was closed with 1013. So each client (as the daemon counts
//! clients, [`protocol_api::clients::key`]) may hold at most a quarter of it: one message
//! of the largest size, in one connection or spread over many. Routes take messages in
//! parts ([`crate::receiver::Delivery::Parts`]) and hold at most a part.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Bytes held in messages not yet whole, by every connection of the process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// The same, per client with any held (by [`protocol_api::clients::key`]).
static BY_CLIENT: Mutex<BTreeMap<u64, usize>> = Mutex::new(BTreeMap::new());

/// What all connections together may hold: four messages of the largest size allowed.
pub fn budget(max_message: usize) -> usize {
    max_message.saturating_mul(4)
}

/// What one client's connections together may hold: a quarter of the whole.
fn client_budget(budget: usize) -> usize {
    budget / 4
}

/// One connection's share of the counts, given back when it is dropped.
pub struct Share {
    counted: usize,
    client: u64,
}

impl Share {
    /// A connection of the client under `client` ([`protocol_api::clients::key`]),
    /// holding nothing yet.
    pub fn new(client: u64) -> Share {
        Share { counted: 0, client }
    }

    /// Counts that the connection now holds `now` bytes of a message in assembly. False
    /// when they grew and all connections together hold more than `budget`, or the
    /// client's more than its quarter of it: close it.
    pub fn count(&mut self, now: usize, budget: usize) -> bool {
        let counted = std::mem::replace(&mut self.counted, now);
        if now > counted {
            let grown = now - counted;
            let total = HELD.fetch_add(grown, Ordering::Relaxed) + grown;
            let client = self.change(grown as isize);
            total <= budget && client <= client_budget(budget)
        } else {
            if now < counted {
                HELD.fetch_sub(counted - now, Ordering::Relaxed);
                self.change(-((counted - now) as isize));
            }
            true
        }
    }

    /// Adds `by` to the client's count; returns the count.
    fn change(&self, by: isize) -> usize {
        let mut clients = BY_CLIENT.lock().unwrap_or_else(|e| e.into_inner());
        let held = clients.entry(self.client).or_insert(0);
        *held = held.saturating_add_signed(by);
        let now = *held;
        if now == 0 {
            clients.remove(&self.client);
        }
        now
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.count(0, usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, so that no other test of this module counts meanwhile (the counts are
    /// the process's).
    #[test]
    fn growth_past_the_whole_or_a_clients_quarter_is_refused_and_shares_are_given_back() {
        assert_eq!(HELD.load(Ordering::Relaxed), 0);
        let budget = 400;
        // One client: its quarter, over one connection or two.
        let mut a = Share::new(1);
        assert!(a.count(100, budget), "exactly its quarter");
        let mut a2 = Share::new(1);
        assert!(
            !a2.count(1, budget),
            "past its quarter, on another connection"
        );
        a2.count(0, budget);
        assert!(a.count(60, budget), "shrinking is always fine");
        assert!(a2.count(40, budget), "room again");
        drop(a2);
        // Others, up to the whole: 60 + 100 + 100 + 100 + 40 = 400.
        let (mut b, mut c, mut d) = (Share::new(2), Share::new(3), Share::new(4));
        assert!(b.count(100, budget) && c.count(100, budget) && d.count(100, budget));
        let mut e = Share::new(5);
        assert!(e.count(40, budget), "exactly the whole");
        let mut f = Share::new(6);
        assert!(
            !f.count(1, budget),
            "past the whole, for a client within its quarter"
        );
        drop((a, b, c, d, e, f));
        assert_eq!(HELD.load(Ordering::Relaxed), 0);
        assert!(
            BY_CLIENT.lock().unwrap().is_empty(),
            "no client left counted"
        );
    }
}
