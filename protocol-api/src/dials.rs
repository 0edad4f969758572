//! Dials under way to backends, for plugins that dial one before the `101` (on a worker,
//! which the dial holds until the backend answers or the time-out passes). At most `max`
//! go to one backend at once, so a backend that does not answer (dead, or its listen queue
//! full) holds that many workers and not all of them; and of those one client
//! ([`crate::clients::key`]) holds at most a quarter, so that one client cannot keep every
//! other from a backend, nor one backend that is down keep clients from the others (a
//! route of many backends, such as one chosen by token, counts each apart).

use std::collections::HashMap;
use std::sync::Mutex;

/// The dials under way, by backend (its address as configured).
pub struct Dials {
    max: usize,
    per_client: usize,
    backends: Mutex<HashMap<String, Backend>>,
}

#[derive(Default)]
struct Backend {
    dials: usize,
    by_client: HashMap<u64, usize>,
}

/// Why a dial may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The backend has its most dials under way.
    Backend,
    /// The client has its share of the backend's dials under way.
    Client,
}

/// One dial under way, counted until dropped.
pub struct Dial<'a> {
    dials: &'a Dials,
    backend: String,
    client: u64,
}

impl Dials {
    /// At most `max` dials to one backend (at least 1), a quarter of them (at least 1) for
    /// one client.
    pub fn new(max: usize) -> Dials {
        let max = max.max(1);
        Dials {
            max,
            per_client: (max / 4).max(1),
            backends: Mutex::new(HashMap::new()),
        }
    }

    /// The most dials one client may have under way to one backend.
    pub fn per_client(&self) -> usize {
        self.per_client
    }

    /// Counts a dial by `client` to `backend`, if both have room.
    pub fn start(&self, backend: &str, client: u64) -> Result<Dial<'_>, Busy> {
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = backends.get(backend) {
            if counts.dials >= self.max {
                return Err(Busy::Backend);
            }
            if counts.by_client.get(&client).copied().unwrap_or(0) >= self.per_client {
                return Err(Busy::Client);
            }
        }
        let counts = backends.entry(backend.to_string()).or_default();
        counts.dials += 1;
        *counts.by_client.entry(client).or_default() += 1;
        Ok(Dial {
            dials: self,
            backend: backend.to_string(),
            client,
        })
    }
}

impl Drop for Dial<'_> {
    fn drop(&mut self) {
        let mut backends = self
            .dials
            .backends
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(counts) = backends.get_mut(&self.backend) else {
            return;
        };
        counts.dials -= 1;
        if let Some(held) = counts.by_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                counts.by_client.remove(&self.client);
            }
        }
        if counts.dials == 0 {
            backends.remove(&self.backend);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_takes_its_most_and_a_client_its_share() {
        let dials = Dials::new(8);
        let mine: Vec<_> = (0..2).map(|_| dials.start("a:1", 1).unwrap()).collect();
        assert_eq!(
            dials.start("a:1", 1).err(),
            Some(Busy::Client),
            "a quarter of 8"
        );
        assert!(
            dials.start("b:1", 1).is_ok(),
            "another backend counts apart"
        );
        let others: Vec<_> = (2..8).map(|c| dials.start("a:1", c).unwrap()).collect();
        assert_eq!(dials.start("a:1", 9).err(), Some(Busy::Backend), "8 in all");
        drop(mine);
        assert!(dials.start("a:1", 1).is_ok(), "given back");
        drop(others);
        assert!(dials.backends.lock().unwrap().is_empty(), "nothing kept");
    }
}
