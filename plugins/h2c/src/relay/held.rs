//! What the relay holds for one client address, over all its connections
//! (`SWITCHYARD_H2C_HELD_PER_CLIENT`): answers waiting for windows the client keeps shut,
//! its uploads waiting for a backend's, and output not yet taken by the sockets.
//!
//! Each connection is bounded by the windows it grants its peers, but one address may
//! hold 2,500 connections: with 1 MiB granted each, 2.5 GiB for 30 s, an attacker's
//! review found. So a peer is granted a window past the protocol's 64 KiB only from the
//! budget ([`ClientHeld::grant`], once it has used half of that), and once an address
//! holds its budget:
//! - its connections that hold their part (16 KiB or more) read their backends no further
//!   (the backends wait, as flow control makes them), unless uploads wait for a backend's
//!   windows; one holding less reads on, one read at a time, so a client behind the same
//!   NAT as one that takes nothing is still served;
//! - they give the client no window back for its uploads, and a new connection is granted
//!   none past the protocol's 64 KiB ([`super::Relay::follow_budget`]);
//! - a stream that moves less than a frame in a second is ended
//!   ([`super::Relay::expire`]), and that counts against the address's resets;
//! - a connection owing its client 16 KiB or more that the client takes less than a frame
//!   of in a second is reset ([`super::Relay`]'s `output_stalled`).
//!
//! So an address holds its budget, and 64 KiB a peer and a read (64 KiB) more a
//! connection at most.
//!
//! A connection holding under [`UNCOUNTED`] counts nothing, so the common case (answers
//! that leave in the call they came in) touches no shared counter.

use protocol_api::metrics::Gauge;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What a connection may hold and count nothing of: one address's untold bytes are at most
/// this much a connection (40 MiB over 2,500 connections).
pub const UNCOUNTED: usize = 16 * 1024;
/// The address map is swept of addresses no connection counts for once it is this long
/// (then twice what was left).
const SWEEP_FROM: usize = 64;

/// Every address's count.
pub struct Held {
    /// The budget of one address.
    per_client: usize,
    by_client: Mutex<ByClient>,
    /// `switchyard_h2c_held_bytes`: what every connection counts.
    gauge: Gauge,
}

struct ByClient {
    counts: HashMap<u64, Weak<Account>>,
    sweep_at: usize,
}

/// One address's count.
#[derive(Default)]
struct Account {
    /// Bytes its connections hold.
    held: AtomicUsize,
    /// Bytes of connection windows granted its connections' peers past the protocol's
    /// 64 KiB ([`ClientHeld::grant`]).
    granted: AtomicUsize,
}

/// One connection's part of its address's count.
pub struct ClientHeld {
    held: Arc<Held>,
    count: Arc<Account>,
    /// What this connection added to `count.held`.
    counted: usize,
    /// What this connection added to `count.granted`.
    granted: usize,
}

impl Held {
    pub fn new(per_client: usize, gauge: Gauge) -> Arc<Held> {
        Arc::new(Held {
            per_client,
            by_client: Mutex::new(ByClient {
                counts: HashMap::new(),
                sweep_at: SWEEP_FROM,
            }),
            gauge,
        })
    }

    /// A new connection's part of the count of the client `key`
    /// ([`protocol_api::clients::key`]).
    pub fn client(self: &Arc<Self>, key: u64) -> ClientHeld {
        let mut by_client = self.by_client.lock().unwrap_or_else(|e| e.into_inner());
        let count = match by_client.counts.get(&key).and_then(Weak::upgrade) {
            Some(count) => count,
            None => {
                if by_client.counts.len() >= by_client.sweep_at {
                    by_client.counts.retain(|_, count| count.strong_count() > 0);
                    by_client.sweep_at = (by_client.counts.len() * 2).max(SWEEP_FROM);
                }
                let count = Arc::new(Account::default());
                by_client.counts.insert(key, Arc::downgrade(&count));
                count
            }
        };
        ClientHeld {
            held: self.clone(),
            count,
            counted: 0,
            granted: 0,
        }
    }
}

impl ClientHeld {
    /// The connection holds `bytes` now (under [`UNCOUNTED`] counts as none); whether its
    /// address holds more than its budget, all its connections together.
    pub fn holds(&mut self, bytes: usize) -> bool {
        let bytes = if bytes < UNCOUNTED { 0 } else { bytes };
        if bytes == self.counted {
            return self.over();
        }
        let before = if bytes > self.counted {
            (self.count.held).fetch_add(bytes - self.counted, Ordering::Relaxed)
        } else {
            (self.count.held).fetch_sub(self.counted - bytes, Ordering::Relaxed)
        };
        self.held.gauge.add(bytes as i64 - self.counted as i64);
        let now = before + bytes - self.counted;
        self.counted = bytes;
        now > self.held.per_client
    }

    /// Whether its address holds more than its budget.
    pub fn over(&self) -> bool {
        self.count.held.load(Ordering::Relaxed) > self.held.per_client
    }

    /// `bytes` more of connection window for one of the connection's peers, if its address's
    /// grants stay within its budget: what a peer was granted it may send at any time, and
    /// a window cannot be taken back, so windows past the protocol's are granted from the
    /// budget (granted at once to every connection, 300 connections opened first, then
    /// uploading together to a backend that took nothing, held 281 MiB over a budget of 64,
    /// a review found).
    pub fn grant(&mut self, bytes: usize) -> bool {
        let granted = &self.count.granted;
        let mut now = granted.load(Ordering::Relaxed);
        loop {
            let Some(after) = now
                .checked_add(bytes)
                .filter(|&a| a <= self.held.per_client)
            else {
                return false;
            };
            match granted.compare_exchange_weak(now, after, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    self.granted += bytes;
                    return true;
                }
                Err(actual) => now = actual,
            }
        }
    }

    /// `bytes` of what [`ClientHeld::grant`] gave are given back (their peer is gone).
    pub fn release(&mut self, bytes: usize) {
        let bytes = bytes.min(self.granted);
        self.granted -= bytes;
        self.count.granted.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Drop for ClientHeld {
    fn drop(&mut self) {
        self.holds(0);
        self.release(self.granted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(per_client: usize) -> Arc<Held> {
        let gauge = protocol_api::metrics::gauge("test_held", "In the plugin only.", &[]);
        Held::new(per_client, gauge.unwrap().with(&[]))
    }

    #[test]
    fn an_address_is_over_once_its_connections_together_hold_its_budget() {
        let held = held(100 * 1024);
        let mut first = held.client(1);
        let mut second = held.client(1);
        let mut other = held.client(2);
        assert!(!first.holds(60 * 1024));
        assert!(second.holds(60 * 1024), "120 KiB of a 100 KiB budget");
        assert!(first.over());
        assert!(!other.holds(90 * 1024), "another address has its own");
        assert!(!second.holds(0));
        assert!(!first.over());
    }

    #[test]
    fn a_connection_holding_little_counts_nothing() {
        let held = held(UNCOUNTED);
        let mut first = held.client(1);
        assert!(!first.holds(UNCOUNTED - 1));
        assert_eq!(first.count.held.load(Ordering::Relaxed), 0);
        assert!(first.holds(UNCOUNTED + 1));
    }

    #[test]
    fn a_connection_gone_gives_back_what_it_counted() {
        let held = held(100);
        let mut first = held.client(1);
        assert!(first.holds(UNCOUNTED * 2));
        let second = held.client(1);
        assert!(second.over());
        drop(first);
        assert!(!second.over());
    }

    #[test]
    fn windows_past_the_protocols_are_granted_within_the_budget_and_come_back() {
        let held = held(3 << 20);
        let mut first = held.client(1);
        let mut second = held.client(1);
        assert!(first.grant(1 << 20));
        assert!(first.grant(1 << 20));
        assert!(second.grant(1 << 20));
        assert!(!second.grant(1 << 20), "3 MiB of a 3 MiB budget");
        assert!(held.client(2).grant(1 << 20), "another address has its own");
        first.release(1 << 20);
        assert!(second.grant(1 << 20));
        drop(first);
        assert!(
            second.grant(1 << 20),
            "a connection gone gives back its grants"
        );
    }

    #[test]
    fn addresses_no_connection_counts_for_are_swept() {
        let held = held(100);
        for key in 0..(SWEEP_FROM as u64 * 3) {
            drop(held.client(key));
        }
        let kept = held.by_client.lock().unwrap().counts.len();
        assert!(kept <= SWEEP_FROM, "{kept} addresses kept");
    }
}
