//! Counts of backend connections shared by every client connection, in all and for one
//! client address: the HTTP/1.1 backend connections carrying a stream (the hyper engine's
//! `http1://` routes: `SWITCHYARD_H2C_HTTP1_MAX`, `SWITCHYARD_H2C_HTTP1_PER_CLIENT`), and
//! HTTP/2 backend connections, each client connection's own (the relay's one per route it
//! uses, hyper's one per backend: [`crate::counted`])
//! (`SWITCHYARD_H2C_BACKENDS_MAX`, `SWITCHYARD_H2C_BACKENDS_PER_CLIENT`: an address within
//! its share of connections, each using ten routes, took every descriptor of a daemon
//! whose limit allowed two a connection, an attacker's review found).
//!
//! An HTTP/1.1 backend connection carries one request at a time, so each stream routed to
//! one holds a descriptor for as long as it runs. `SWITCHYARD_H2C_HTTP1_PER_CONNECTION`
//! bounds that per client connection only: 70 client connections whose streams wait for
//! bodies that never come took 1,120 descriptors, every one a daemon at the common
//! 1,024-descriptor limit had, and it stopped accepting anyone. Past either count a stream
//! is answered `503` with `Retry-After` at once, as the daemon answers a client past its
//! worker slots; clients are told apart as the daemon tells them
//! ([`protocol_api::clients::key`]), so one address (an IPv6 client: its /64) cannot hold
//! every slot; nor can four, each within its share: the last quarter goes to clients
//! holding few ([`Share::most`]).

use protocol_api::clients::Share;
use protocol_api::metrics::Gauge;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct Slots {
    max: usize,
    per_client: usize,
    /// Why a stream got none, by [`NoSlot`]: the 503's text and the log line.
    reasons: [&'static str; 2],
    taken: Mutex<Taken>,
    /// `switchyard_h2c_http1_backend_streams`.
    gauge: Gauge,
}

#[derive(Default)]
struct Taken {
    all: usize,
    by_client: HashMap<u64, usize>,
}

/// Why a stream got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// `SWITCHYARD_H2C_HTTP1_MAX` streams are at HTTP/1.1 backends.
    Full,
    /// This client has `SWITCHYARD_H2C_HTTP1_PER_CLIENT` there.
    ClientLimit,
}

/// The reasons of the hyper engine's HTTP/1.1 slots.
pub const HTTP1_REASONS: [&str; 2] = [
    "every HTTP/1.1 backend connection is taken (SWITCHYARD_H2C_HTTP1_MAX)",
    "this client holds its most HTTP/1.1 backend connections (SWITCHYARD_H2C_HTTP1_PER_CLIENT)",
];

/// The reasons of the relay's HTTP/2 backend connections.
pub const RELAY_REASONS: [&str; 2] = [
    "every backend connection is taken (SWITCHYARD_H2C_BACKENDS_MAX)",
    "this client holds its most backend connections (SWITCHYARD_H2C_BACKENDS_PER_CLIENT)",
];

/// The reasons of hyper's HTTP/2 backend connections, which its budget of held bytes
/// bounds too ([`crate::proxy`]).
pub const HYPER_REASONS: [&str; 2] = [
    RELAY_REASONS[0],
    "this client holds its most backend connections (SWITCHYARD_H2C_BACKENDS_PER_CLIENT, \
     or on hyper's engine a connection per MiB of SWITCHYARD_H2C_HELD_PER_CLIENT)",
];

/// One stream's HTTP/1.1 backend connection, counted until dropped (its response ended,
/// or the stream was reset).
pub struct Slot {
    slots: Arc<Slots>,
    client: u64,
}

impl Slots {
    pub fn new(
        max: usize,
        per_client: usize,
        gauge: Gauge,
        reasons: [&'static str; 2],
    ) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            per_client,
            reasons,
            taken: Mutex::new(Taken::default()),
            gauge,
        })
    }

    /// For the `503`'s text and the log line.
    pub fn reason(&self, no: NoSlot) -> &'static str {
        match no {
            NoSlot::Full => self.reasons[0],
            NoSlot::ClientLimit => self.reasons[1],
        }
    }

    /// A slot for a stream of the client at `ip`, if both counts allow one.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, NoSlot> {
        let client = protocol_api::clients::key(ip);
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.all >= self.max {
            return Err(NoSlot::Full);
        }
        let held = taken.by_client.get(&client).copied().unwrap_or(0);
        let share = Share {
            total: self.max,
            per_client: self.per_client,
        };
        if held >= share.most(self.max - taken.all - 1) {
            return Err(NoSlot::ClientLimit);
        }
        taken.all += 1;
        taken.by_client.insert(client, held + 1);
        self.gauge.inc();
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.slots;
        let mut taken = slots.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.all -= 1;
        if let Some(held) = taken.by_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                taken.by_client.remove(&self.client);
            }
        }
        slots.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize, per_client: usize) -> Arc<Slots> {
        let gauge = protocol_api::metrics::gauge("test_streams", "In the plugin only.", &[]);
        Slots::new(max, per_client, gauge.unwrap().with(&[]), HTTP1_REASONS)
    }

    #[test]
    fn one_client_is_held_to_its_share_and_the_rest_to_the_whole() {
        let slots = slots(10, 2);
        let client = |n: u8| IpAddr::from([192, 0, 2, n]);
        let first = slots.take(client(1)).unwrap();
        let _second = slots.take(client(1)).unwrap();
        assert_eq!(slots.take(client(1)).err(), Some(NoSlot::ClientLimit));
        let _others: Vec<Slot> = (2..=9).map(|n| slots.take(client(n)).unwrap()).collect();
        assert_eq!(slots.take(client(10)).err(), Some(NoSlot::Full));
        drop(first);
        assert!(
            slots.take(client(10)).is_ok(),
            "a slot given back is taken again"
        );
    }

    #[test]
    fn four_clients_do_not_take_every_slot() {
        let slots = slots(100, 25);
        let client = |n: u8| IpAddr::from([192, 0, 2, n]);
        let mut held: Vec<Slot> = Vec::new();
        for n in 1..=3 {
            held.extend((0..25).map(|_| slots.take(client(n)).unwrap()));
        }
        // 25 free, then fewer: a client may hold 25 / 16 = 1.
        held.push(slots.take(client(4)).unwrap());
        assert_eq!(slots.take(client(4)).err(), Some(NoSlot::ClientLimit));
        assert_eq!(slots.take(client(1)).err(), Some(NoSlot::ClientLimit));
        for n in 5..=10 {
            held.push(slots.take(client(n)).expect("a client holding none"));
        }
    }

    #[test]
    fn one_ipv6_host_is_one_client_across_its_64() {
        let slots = slots(10, 1);
        let _held = slots.take("2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(
            slots.take("2001:db8::ffff".parse().unwrap()).err(),
            Some(NoSlot::ClientLimit)
        );
        assert!(slots.take("2001:db8:0:1::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn every_slot_dropped_leaves_no_count() {
        let slots = slots(4, 4);
        let held: Vec<Slot> = (0..4)
            .map(|_| slots.take("192.0.2.1".parse().unwrap()).unwrap())
            .collect();
        drop(held);
        let taken = slots.taken.lock().unwrap();
        assert_eq!((taken.all, taken.by_client.len()), (0, 0));
    }
}
