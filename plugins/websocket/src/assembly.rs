//! What the echo's connections hold, all together and per client, in messages not yet
//! whole and in echoes their clients have not taken yet (a whole message becomes its
//! echo: uncounted, 12 connections that sent one 16 MiB message each and read nothing held
//! 170 MB).
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
//! other client's large message was closed with 1013. So once all together hold more than
//! half the budget, a client (as the daemon counts clients, [`protocol_api::clients::key`])
//! that holds more than a quarter of it (one message of the largest size, in one connection
//! or spread over many) may not grow: one address takes at most half, and leaves the rest
//! to the others. Under half, nobody is held to a share, so users behind one address (an
//! office, a carrier's NAT) are not held back while the echo holds little. Routes take
//! messages in parts ([`crate::receiver::Delivery::Parts`]) and hold at most a part; what
//! a route's compressed message holds before it is inflated, and the decompressor of a
//! message being inflated (echo or route), count here too (see `Connection::holds`).

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

/// What one client's connections together may hold once all together hold more than
/// half the whole: a quarter of it.
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

    /// The client the connection is counted under.
    pub fn client(&self) -> u64 {
        self.client
    }

    /// Counts that the connection now holds `now` bytes of a message in assembly. False
    /// when they grew and all connections together hold more than `budget`, or more than
    /// half of it while the client's hold more than a quarter: close it.
    pub fn count(&mut self, now: usize, budget: usize) -> bool {
        let counted = std::mem::replace(&mut self.counted, now);
        if now > counted {
            let grown = now - counted;
            let total = HELD.fetch_add(grown, Ordering::Relaxed) + grown;
            let client = self.change(grown as isize);
            total <= budget && (total <= budget / 2 || client <= client_budget(budget))
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
    fn growth_past_the_whole_or_past_a_clients_quarter_under_pressure_is_refused() {
        assert_eq!(HELD.load(Ordering::Relaxed), 0);
        let budget = 400;
        // Under half the whole, one client may hold more than its quarter, on two
        // connections (users behind one address).
        let (mut a, mut a2) = (Share::new(1), Share::new(1));
        assert!(
            a.count(150, budget) && a2.count(50, budget),
            "200: half, exactly"
        );
        assert!(
            !a2.count(60, budget),
            "past half, a client over its quarter"
        );
        a2.count(0, budget);
        // Others, each within its quarter, up to the whole: 150 + 100 + 100 + 50 = 400.
        let (mut b, mut c, mut d) = (Share::new(2), Share::new(3), Share::new(4));
        assert!(b.count(100, budget) && c.count(100, budget) && d.count(50, budget));
        let mut e = Share::new(5);
        assert!(
            !e.count(1, budget),
            "past the whole, for a client within its quarter"
        );
        e.count(0, budget);
        assert!(a.count(140, budget), "shrinking is always fine");
        assert!(e.count(10, budget), "room again");
        drop((a, a2, b, c, d, e));
        assert_eq!(HELD.load(Ordering::Relaxed), 0);
        assert!(
            BY_CLIENT.lock().unwrap().is_empty(),
            "no client left counted"
        );
    }
}
