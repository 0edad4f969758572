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
//! clients that hold the most (more than the one whose message grows) are chosen to close
//! their connections' unfinished messages instead ([`Share::is_evicted`]), and what they
//! hold counts as free until they have. Under half, nobody is held to a share, so users behind one address (an
//! office, a carrier's NAT) are not held back while the echo holds little. Routes take
//! messages in parts ([`crate::receiver::Delivery::Parts`]) and hold at most a part; what
//! a route's compressed message holds before it is inflated, and the decompressor of a
//! message being inflated (echo or route), count here too (see `Connection::holds`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A client whose unfinished messages have not grown this long is quiet: chosen to close
/// before any that is sending, whatever either holds.
const QUIET: Duration = Duration::from_secs(2);
/// How long what a client chosen to close holds counts as free at most: by then its
/// connections have closed (they look once a second), or they are stuck, and their count
/// must not keep the room others need.
const CLOSING_COUNTS_AS_FREE: Duration = Duration::from_secs(5);

/// Bytes held in messages not yet whole, by every connection of the process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// The counts per client, behind one lock.
struct Registry {
    /// Per client with any held (by [`protocol_api::clients::key`]).
    clients: BTreeMap<u64, Held>,
    /// What the clients chosen to close their connections hold, until they have: counted
    /// as free meanwhile.
    evicting: usize,
}

struct Held {
    held: usize,
    /// When what it holds last grew.
    grew: Instant,
    /// Chosen to close what it holds ([`Share::is_evicted`]): when, and what of it counts
    /// as free meanwhile.
    evicted: Option<(Instant, usize)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    clients: BTreeMap::new(),
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

    /// Whether the connection holds anything: it is then to be called at least once a
    /// second to learn whether its client was chosen to close ([`Share::is_evicted`]).
    pub fn holds_any(&self) -> bool {
        self.counted > 0
    }

    /// Whether the connection holds something for a client chosen to close what its
    /// connections hold (1013), so that another could go on: it held the most, and all
    /// together held the whole budget.
    pub fn is_evicted(&self) -> bool {
        self.counted > 0
            && registry()
                .clients
                .get(&self.client)
                .is_some_and(|c| c.evicted.is_some())
    }

    /// Counts that the connection now holds `now` bytes of a message in assembly. False
    /// when it may not: close it. Growth is refused when all together hold more than half
    /// the budget and the client's connections more than a quarter (its own doing), and
    /// when all together would hold more than the budget and no client holding more than
    /// this one's can be chosen to make room. Otherwise such clients, the one holding the
    /// most first, are chosen to close what their connections hold ([`Share::is_evicted`]),
    /// and what they hold counts as free until they have (at most the budget's worth at
    /// once). Chosen by client, not by connection: four addresses that filled the budget
    /// with unfinished messages had every other client's large message closed (an
    /// attacker's review), and choosing the largest connection let them dodge it with
    /// many small ones (the next review).
    pub fn count(&mut self, now: usize, budget: usize) -> bool {
        // The usual call (an echo's every message, whole in one read, holds nothing before
        // or after) changes nothing, and reads no clock: a read a message was 6% of the
        // 16 KiB echo's time in user space.
        if now == self.counted {
            return true;
        }
        self.count_at(now, budget, Instant::now())
    }

    /// [`Share::count`] at the time `at`.
    fn count_at(&mut self, now: usize, budget: usize, at: Instant) -> bool {
        let counted = std::mem::replace(&mut self.counted, now);
        if now == counted {
            return true;
        }
        let mut registry = registry();
        if now < counted {
            HELD.fetch_sub(counted - now, Ordering::Relaxed);
            registry.shrink(self.client, counted - now);
            return true;
        }
        let client = registry.clients.entry(self.client).or_insert(Held {
            held: 0,
            grew: at,
            evicted: None,
        });
        if client.evicted.is_some() {
            self.counted = counted;
            return false; // to close: it grows no more
        }
        let grown = now - counted;
        client.held += grown;
        client.grew = at;
        let client_held = client.held;
        if registry.evicting > 0 {
            registry.forget_stale_choices(at);
        }
        let total = HELD.fetch_add(grown, Ordering::Relaxed) + grown;
        let free_of_evicted = total.saturating_sub(registry.evicting);
        if free_of_evicted <= budget / 2 {
            return true;
        }
        if client_held > client_budget(budget) {
            return false;
        }
        free_of_evicted <= budget
            || registry.evict_for(
                self.client,
                client_held,
                free_of_evicted - budget,
                budget,
                at,
            )
    }
}

impl Registry {
    /// What was chosen long ago and has not closed counts as free no longer.
    fn forget_stale_choices(&mut self, at: Instant) {
        for client in self.clients.values_mut() {
            if let Some((chosen, was)) = &mut client.evicted {
                if at.saturating_duration_since(*chosen) >= CLOSING_COUNTS_AS_FREE && *was > 0 {
                    self.evicting -= std::mem::take(was);
                }
            }
        }
    }

    /// Takes `by` off the client's count; a client that holds nothing is forgotten, and
    /// what it held when chosen to close is counted no more.
    fn shrink(&mut self, client: u64, by: usize) {
        let Some(held) = self.clients.get_mut(&client) else {
            return;
        };
        held.held = held.held.saturating_sub(by);
        if held.held == 0 {
            if let Some(Held {
                evicted: Some((_, was)),
                ..
            }) = self.clients.remove(&client)
            {
                self.evicting -= was;
            }
        }
    }

    /// Chooses clients (not `grower`) to close what they hold until `needed` bytes are
    /// theirs, if there are enough of them and what is being closed stays within `budget`;
    /// true if so. Quiet ones first ([`QUIET`]: parked, whatever they hold), the one
    /// holding the most first among them; then those holding more than `held`, the
    /// grower's client, which sends. A client sending its message is not closed for
    /// another's that waits (a review: 18 addresses holding 190 KB each, quiet, had a
    /// 900 KB message sent 100 KB at a time closed, as the one holding the most).
    fn evict_for(
        &mut self,
        grower: u64,
        held: usize,
        needed: usize,
        budget: usize,
        at: Instant,
    ) -> bool {
        let mut candidates: Vec<(bool, usize, u64)> = (self.clients.iter())
            .filter(|(&other, c)| other != grower && c.evicted.is_none())
            .map(|(&other, c)| (at.saturating_duration_since(c.grew) >= QUIET, c.held, other))
            .filter(|&(quiet, size, _)| quiet || size > held)
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let mut chosen = Vec::new();
        let mut freed = 0;
        for (_, size, other) in candidates {
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
            if let Some(client) = self.clients.get_mut(&other) {
                client.evicted = Some((at, size));
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
        assert!(a.count(140, budget), "shrinking is always fine: 390");
        // Past the whole, a client within its quarter: the client holding the most (1,
        // with 140) is chosen to close, and the newcomer goes on.
        let mut e = Share::new(5);
        assert!(e.count(20, budget), "room made: 410");
        assert!(a.is_evicted() && !b.is_evicted() && !e.is_evicted());
        assert!(!a.count(141, budget), "what was chosen grows no more");
        assert!(
            !a2.count(1, budget),
            "nor does another connection of its client"
        );
        assert!(
            !a2.is_evicted(),
            "which holds nothing, so has nothing to close"
        );
        // Many small connections of one client are one client (the next review: 17
        // connections of 60 KB each dodged a choice by connection).
        let smalls: Vec<Share> = (0..9)
            .map(|_| {
                let mut small = Share::new(6);
                assert!(small.count(10, budget));
                small
            })
            .collect();
        // 500 held, 140 of it being closed: 360. Client 7 grows to 60: 420, over by 20;
        // clients holding more than 60 and not closing: 2 and 3 (100), 6 (90).
        let mut f = Share::new(7);
        assert!(f.count(60, budget));
        assert!(b.is_evicted() != c.is_evicted() && smalls.iter().all(|s| !s.is_evicted()));
        let mut g = Share::new(8);
        assert!(g.count(50, budget), "610 held, 240 of it being closed: 370");
        // With no client holding more than it left to choose, the one that grows is
        // refused: 710 - 240 = 470, and none holds more than 100 but those closing.
        let mut h = Share::new(9);
        assert!(!h.count(100, budget));
        h.count(0, budget);
        a.count(0, budget); // a closed: its client forgotten, its 140 no longer closing
        assert_eq!(registry().evicting, 100);
        drop((a, a2, b, c, d, e, f, g, h, smalls));
        assert_eq!(HELD.load(Ordering::Relaxed), 0);
        {
            let registry = registry();
            assert!(registry.clients.is_empty(), "no client left counted");
            assert_eq!(registry.evicting, 0);
        }

        // Quiet clients are chosen before one that sends, whatever they hold: four hold
        // 90 each since t0; at t0 + 3 s one sends its message to 100, past the whole:
        // one of the four closes, though none holds more than it.
        let t0 = Instant::now();
        let mut parked: Vec<Share> = (10..14)
            .map(|client| {
                let mut share = Share::new(client);
                assert!(share.count_at(90, budget, t0));
                share
            })
            .collect();
        let mut sending = Share::new(20);
        let later = t0 + QUIET + Duration::from_secs(1);
        assert!(sending.count_at(40, budget, later - Duration::from_millis(500)));
        assert!(sending.count_at(100, budget, later), "460 held: room made");
        assert_eq!(parked.iter().filter(|p| p.is_evicted()).count(), 1);
        // One sending now, holding less than the grower, is not chosen: only quiet ones.
        let mut busy = Share::new(21);
        assert!(busy.count_at(30, budget, later));
        let mut next = Share::new(22);
        assert!(
            next.count_at(60, budget, later),
            "a second quiet one closes"
        );
        assert_eq!(parked.iter().filter(|p| p.is_evicted()).count(), 2);
        assert!(!busy.is_evicted());
        // What was chosen and has not closed counts as free for a while only.
        let much_later = later + CLOSING_COUNTS_AS_FREE;
        let mut another = Share::new(23);
        assert!(another.count_at(60, budget, much_later));
        assert_eq!(
            registry().evicting,
            280,
            "610 held, the first two's 180 free no longer: all quiet now, the most first"
        );
        assert!(sending.is_evicted() && !another.is_evicted());
        for share in &mut parked {
            share.count_at(0, budget, much_later);
        }
        drop((parked, sending, busy, next, another));
        assert_eq!(HELD.load(Ordering::Relaxed), 0);
        let registry = registry();
        assert!(registry.clients.is_empty() && registry.evicting == 0);
    }
}
