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
//! to the others. Four addresses could still fill it, and keep it: past the whole, the
//! connections that hold the most (more than the one that grows) are chosen to close
//! instead ([`Share::is_evicted`]), and what they hold counts as free until they have. Under half, nobody is held to a share, so users behind one address (an
//! office, a carrier's NAT) are not held back while the echo holds little. Routes take
//! messages in parts ([`crate::receiver::Delivery::Parts`]) and hold at most a part; what
//! a route's compressed message holds before it is inflated, and the decompressor of a
//! message being inflated (echo or route), count here too (see `Connection::holds`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Bytes held in messages not yet whole, by every connection of the process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// What a connection must hold to be closed for another's room ([`Share::count`]), and to
/// be looked at for that at least once a second ([`Share::is_evicted`]).
pub const EVICTABLE_FROM: usize = 64 * 1024;

/// The counts behind one lock: per client, and the connections that hold
/// [`EVICTABLE_FROM`] or more.
struct Registry {
    /// Per client with any held (by [`protocol_api::clients::key`]).
    by_client: BTreeMap<u64, usize>,
    /// Connections holding [`EVICTABLE_FROM`] or more, by their number.
    large: BTreeMap<u32, Large>,
    /// The last number given to a large holder.
    last_id: u32,
    /// What the connections chosen to be closed hold, until they are: counted as free.
    evicting: usize,
}

struct Large {
    held: usize,
    /// Chosen to be closed for another's room: what it held then.
    evicted: Option<usize>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    by_client: BTreeMap::new(),
    large: BTreeMap::new(),
    last_id: 0,
    evicting: 0,
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// What all connections together may hold: four messages of the largest size allowed.
pub fn budget(max_message: usize) -> usize {
    max_message.saturating_mul(4)
}

/// What one client's connections together may hold once all together hold more than
/// half the whole: a quarter of it.
fn client_budget(budget: usize) -> usize {
    budget / 4
}

/// One connection's share of the counts, given back when it is dropped (16 bytes: every
/// connection carries one).
pub struct Share {
    client: u64,
    /// What it holds (a message is at most 1 GiB, see the plugin's configuration).
    counted: u32,
    /// Its number among the large holders, 0 while it is none.
    large: u32,
}

impl Share {
    /// A connection of the client under `client` ([`protocol_api::clients::key`]),
    /// holding nothing yet.
    pub fn new(client: u64) -> Share {
        Share {
            client,
            counted: 0,
            large: 0,
        }
    }

    /// The client the connection is counted under.
    pub fn client(&self) -> u64 {
        self.client
    }

    /// Whether the connection holds enough to be closed for another's room: it is then
    /// to be called at least once a second to learn of it ([`Share::is_evicted`]).
    pub fn is_large(&self) -> bool {
        self.large != 0
    }

    /// Whether the connection was chosen to be closed (1013) so that another could go on:
    /// it holds the most, and all together held the whole budget.
    pub fn is_evicted(&self) -> bool {
        self.large != 0
            && registry()
                .large
                .get(&self.large)
                .is_some_and(|l| l.evicted.is_some())
    }

    /// Counts that the connection now holds `now` bytes of a message in assembly. False
    /// when it may not: close it. Growth is refused when all together hold more than half
    /// the budget and the client's connections more than a quarter (its own doing), and
    /// when all together would hold more than the budget and no connection holding more
    /// than this one can be chosen to make room. Otherwise such connections, the largest
    /// first, are chosen to be closed ([`Share::is_evicted`]) until there is room, and
    /// what they hold counts as free meanwhile (at most the budget's worth at once): four
    /// addresses that filled the budget with unfinished messages and kept their
    /// connections quiet had every other client's large message closed for as long as
    /// they liked (an attacker's review).
    pub fn count(&mut self, now: usize, budget: usize) -> bool {
        let now = u32::try_from(now).unwrap_or(u32::MAX);
        let counted = std::mem::replace(&mut self.counted, now);
        if now == counted {
            return true;
        }
        let mut registry = registry();
        let (now, counted) = (now as usize, counted as usize);
        if now < counted {
            HELD.fetch_sub(counted - now, Ordering::Relaxed);
            registry.change(self.client, -((counted - now) as isize));
            self.note_large(&mut registry, now);
            return true;
        }
        if registry.evicted(self.large) {
            self.counted = counted as u32;
            return false; // to be closed: it grows no more
        }
        let grown = now - counted;
        let total = HELD.fetch_add(grown, Ordering::Relaxed) + grown;
        let client = registry.change(self.client, grown as isize);
        self.note_large(&mut registry, now);
        let free_of_evicted = total.saturating_sub(registry.evicting);
        if free_of_evicted <= budget / 2 {
            return true;
        }
        if client > client_budget(budget) {
            return false;
        }
        free_of_evicted <= budget
            || registry.evict_for(self.large, now, free_of_evicted - budget, budget)
    }

    /// Enters or leaves the large holders as `now` says; leaving, an eviction's count is
    /// given back.
    fn note_large(&mut self, registry: &mut Registry, now: usize) {
        match (self.large, now >= EVICTABLE_FROM) {
            (0, true) => {
                registry.last_id = registry.last_id.wrapping_add(1).max(1);
                while registry.large.contains_key(&registry.last_id) {
                    registry.last_id = registry.last_id.wrapping_add(1).max(1);
                }
                self.large = registry.last_id;
                let held = now;
                registry.large.insert(
                    self.large,
                    Large {
                        held,
                        evicted: None,
                    },
                );
            }
            (0, false) => {}
            (id, true) => {
                if let Some(large) = registry.large.get_mut(&id) {
                    large.held = now;
                }
            }
            (id, false) if now == 0 || !registry.evicted(id) => {
                if let Some(Large {
                    evicted: Some(held),
                    ..
                }) = registry.large.remove(&id)
                {
                    registry.evicting -= held;
                }
                self.large = 0;
            }
            // An evicted connection stays one until it holds nothing (it is closing).
            (_, false) => {}
        }
    }
}

impl Registry {
    /// Adds `by` to the client's count; returns the count.
    fn change(&mut self, client: u64, by: isize) -> usize {
        let held = self.by_client.entry(client).or_insert(0);
        *held = held.saturating_add_signed(by);
        let now = *held;
        if now == 0 {
            self.by_client.remove(&client);
        }
        now
    }

    fn evicted(&self, id: u32) -> bool {
        id != 0 && self.large.get(&id).is_some_and(|l| l.evicted.is_some())
    }

    /// Chooses connections holding more than `held` (not `id`), the largest first, to be
    /// closed until `needed` bytes are theirs, if there are enough of them and what is
    /// being closed stays within `budget`; true if so.
    fn evict_for(&mut self, id: u32, held: usize, needed: usize, budget: usize) -> bool {
        let mut larger: Vec<(usize, u32)> = (self.large.iter())
            .filter(|(&other, l)| other != id && l.evicted.is_none() && l.held > held)
            .map(|(&other, l)| (l.held, other))
            .collect();
        larger.sort_unstable_by(|a, b| b.cmp(a));
        let mut chosen = Vec::new();
        let mut freed = 0;
        for (size, other) in larger {
            if freed >= needed {
                break;
            }
            chosen.push((other, size));
            freed += size;
        }
        if freed < needed || self.evicting + freed > budget {
            return false;
        }
        for (other, size) in chosen {
            if let Some(large) = self.large.get_mut(&other) {
                large.evicted = Some(size);
            }
        }
        self.evicting += freed;
        true
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
    /// the process's). Sizes in units of [`EVICTABLE_FROM`], so that every holder here may
    /// be chosen to close.
    #[test]
    fn growth_past_the_whole_or_past_a_clients_quarter_under_pressure_is_refused() {
        const U: usize = EVICTABLE_FROM;
        assert_eq!(HELD.load(Ordering::Relaxed), 0);
        let budget = 400 * U;
        // Under half the whole, one client may hold more than its quarter, on two
        // connections (users behind one address).
        let (mut a, mut a2) = (Share::new(1), Share::new(1));
        assert!(
            a.count(150 * U, budget) && a2.count(50 * U, budget),
            "200: half, exactly"
        );
        assert!(
            !a2.count(60 * U, budget),
            "past half, a client over its quarter"
        );
        a2.count(0, budget);
        // Others, each within its quarter, up to the whole: 150 + 100 + 100 + 50 = 400.
        let (mut b, mut c, mut d) = (Share::new(2), Share::new(3), Share::new(4));
        assert!(b.count(100 * U, budget) && c.count(100 * U, budget) && d.count(50 * U, budget));
        assert!(a.count(140 * U, budget), "shrinking is always fine: 390");
        // Past the whole, a client within its quarter: the largest holder larger than it
        // (a, 140) is chosen to close, and the newcomer goes on.
        let mut e = Share::new(5);
        assert!(e.count(20 * U, budget), "room made: 410");
        assert!(a.is_evicted() && !b.is_evicted() && !e.is_evicted());
        assert!(!a.count(141 * U, budget), "the one chosen grows no more");
        // What is being closed counts as free (410 - 140 = 270), and more is chosen as
        // needed, the largest first, up to the budget's worth at once.
        let (mut f, mut g) = (Share::new(6), Share::new(7));
        assert!(f.count(90 * U, budget), "360");
        assert!(g.count(60 * U, budget), "420: b or c (100) chosen");
        assert!(b.is_evicted() != c.is_evicted() && !f.is_evicted() && !g.is_evicted());
        let mut h = Share::new(8);
        assert!(
            !h.count(100 * U, budget),
            "420 - 240 + 100 = 420 with none larger than h left to choose"
        );
        h.count(0, budget);
        a.count(0, budget); // a closed
        assert!(!a.is_evicted(), "it holds nothing now");
        // Holders under EVICTABLE_FROM are never chosen.
        let mut small = Share::new(7);
        assert!(small.count(U - 1, budget));
        assert!(!small.is_large());
        drop((a, a2, b, c, d, e, f, g, h, small));
        assert_eq!(HELD.load(Ordering::Relaxed), 0);
        let registry = registry();
        assert!(registry.by_client.is_empty(), "no client left counted");
        assert!(registry.large.is_empty() && registry.evicting == 0);
    }
}
