//! Capacity for blocking plugin code, counted in slots: `SWITCHYARD_WORKERS` in all and
//! `SWITCHYARD_WORKERS_PER_CLIENT` for one client address.
//!
//! The event loop takes a slot when it hands a connection to a worker (after the request
//! body is read, so a slow body holds no slot) and answers `503` when none is left, so a
//! client never gets a `101` that then waits for a thread. The slot travels with the
//! connection and is released when its job ends. The threads themselves are
//! [`crate::pool`]'s; this is only the count.

use crate::daemon::clients::{Clients, Hold, Limit};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct WorkerSlots {
    max: usize,
    busy: Arc<AtomicUsize>,
}

/// A reserved unit of capacity; dropping it frees it (and its client's share of it).
pub struct Slot {
    busy: Arc<AtomicUsize>,
    _client: Hold,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no slot could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Every slot is taken.
    Full,
    /// This client holds its most (`SWITCHYARD_WORKERS_PER_CLIENT`).
    ClientLimit,
}

/// The "no capacity" line, logged where either side of the switch refuses.
pub static FULL_LOGGED: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();

impl NoSlot {
    /// What the client is told, and the access line's reason.
    pub fn reason(self) -> &'static str {
        match self {
            NoSlot::Full => "no capacity for another upgraded connection",
            NoSlot::ClientLimit => "this client holds its most worker slots",
        }
    }
}

impl WorkerSlots {
    pub fn new(max: usize) -> WorkerSlots {
        WorkerSlots {
            max,
            busy: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Upgraded connections on workers (being negotiated or served).
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// True when a slot is free now (it may be gone by the time one is asked for).
    pub fn has_room(&self) -> bool {
        self.busy() < self.max
    }

    /// Slots free once one more is taken: what a client's share is judged by
    /// ([`crate::daemon::clients::Share::most`]) when it asks for one.
    pub fn free_after_one(&self) -> usize {
        self.max.saturating_sub(self.busy() + 1)
    }

    /// Takes a slot for the client at `client`, if one is free and the client has not
    /// its most already.
    pub fn try_reserve(&self, clients: &'static Clients, client: IpAddr) -> Result<Slot, NoSlot> {
        let busy = self
            .busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| NoSlot::Full)?;
        let free = self.max - busy - 1;
        match clients.take(client, Limit::Workers, free) {
            Some(hold) => Ok(Slot {
                busy: self.busy.clone(),
                _client: hold,
            }),
            None => {
                self.busy.fetch_sub(1, Ordering::AcqRel);
                Err(NoSlot::ClientLimit)
            }
        }
    }
}
