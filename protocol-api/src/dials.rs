//! Dials under way to backends, for plugins that dial one before the `101` (on a worker,
//! which the dial holds until the backend answers or the time-out passes). At most `max`
//! go to one backend at once, so a backend that does not answer (dead, or its listen queue
//! full) holds that many workers and not all of them, nor keeps clients from the others (a
//! route of many backends, such as one chosen by token, counts each apart); and one client
//! ([`crate::clients::key`]) has at most a quarter of that under way in all, so that it can
//! neither keep every other client from a backend nor, with many dead backends, hold more
//! than a few workers.

use std::collections::HashMap;
use std::sync::Mutex;

/// The dials under way, by backend (its address as configured) and by client.
pub struct Dials {
    max: usize,
    per_client: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    by_backend: HashMap<String, usize>,
    by_client: HashMap<u64, usize>,
}

/// Why a dial may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The backend has its most dials under way.
    Backend,
    /// The client has its most dials under way (to any backends).
    Client,
}

/// One dial under way, counted until dropped.
pub struct Dial<'a> {
    dials: &'a Dials,
    backend: String,
    client: u64,
}

impl Dials {
    /// At most `max` dials to one backend (at least 1), and a quarter of it (at least 1)
    /// for one client in all.
    pub fn new(max: usize) -> Dials {
        let max = max.max(1);
        Dials {
            max,
            per_client: (max / 4).max(1),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// The most dials one client may have under way.
    pub fn per_client(&self) -> usize {
        self.per_client
    }

    /// Counts a dial by `client` to `backend`, if both have room. While the backend's free
    /// dials are fewer than a client's share, a client with a dial under way already gets
    /// no more ([`crate::clients::Share::most`]): four clients, each within its quarter,
    /// could otherwise hold every dial to a backend that is slow to answer, and everyone
    /// else got `503` (an attacker's review).
    pub fn start(&self, backend: &str, client: u64) -> Result<Dial<'_>, Busy> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        self.room(&counts, backend, client)?;
        *counts.by_backend.entry(backend.to_string()).or_default() += 1;
        *counts.by_client.entry(client).or_default() += 1;
        Ok(Dial {
            dials: self,
            backend: backend.to_string(),
            client,
        })
    }

    /// Whether [`Dials::start`] would refuse now, without counting a dial: for a plugin
    /// that negotiates on an event loop, to answer `503` there rather than hand the request
    /// to a worker only to refuse it (74 µs a refusal against 52 for `/healthz`, an
    /// attacker's review). The answer may change before the dial starts.
    pub fn check(&self, backend: &str, client: u64) -> Result<(), Busy> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        self.room(&counts, backend, client)
    }

    fn room(&self, counts: &Counts, backend: &str, client: u64) -> Result<(), Busy> {
        let to_backend = counts.by_backend.get(backend).copied().unwrap_or(0);
        if to_backend >= self.max {
            return Err(Busy::Backend);
        }
        let share = crate::clients::Share {
            total: self.max,
            per_client: self.per_client,
        };
        let most = share.most(self.max - to_backend - 1);
        if counts.by_client.get(&client).copied().unwrap_or(0) >= most {
            return Err(Busy::Client);
        }
        Ok(())
    }
}

/// Takes one from `key`'s count, forgetting it at zero.
fn give_back<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(held) = map.get_mut(key) {
        *held -= 1;
        if *held == 0 {
            map.remove(key);
        }
    }
}

impl Drop for Dial<'_> {
    fn drop(&mut self) {
        let mut counts = self.dials.counts.lock().unwrap_or_else(|e| e.into_inner());
        give_back(&mut counts.by_backend, &self.backend);
        give_back(&mut counts.by_client, &self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_takes_its_most_and_a_client_its_share_in_all() {
        let dials = Dials::new(8);
        let mine = [
            dials.start("a:1", 1).unwrap(),
            dials.start("b:1", 1).unwrap(),
        ];
        assert_eq!(
            dials.start("c:1", 1).err(),
            Some(Busy::Client),
            "a quarter of 8"
        );
        let others: Vec<_> = (2..9).map(|c| dials.start("a:1", c).unwrap()).collect();
        assert_eq!(
            dials.start("a:1", 9).err(),
            Some(Busy::Backend),
            "8 to it in all"
        );
        assert!(
            dials.start("b:1", 9).is_ok(),
            "another backend counts apart"
        );
        drop(mine);
        assert!(dials.start("c:1", 1).is_ok(), "given back");

        drop(others);
        let counts = dials.counts.lock().unwrap();
        assert!(
            counts.by_backend.is_empty() && counts.by_client.is_empty(),
            "nothing kept"
        );
    }

    /// While fewer than a client's share of a backend's dials are free, a client with a
    /// dial under way gets no more: four clients, each within its quarter, no longer hold
    /// every dial to a backend slow to answer.
    #[test]
    fn a_check_says_what_a_start_would_and_counts_nothing() {
        let dials = Dials::new(4);
        assert_eq!(dials.check("a:1", 1), Ok(()));
        let mine = dials.start("a:1", 1).unwrap();
        assert_eq!(dials.check("a:1", 1), Err(Busy::Client), "a quarter of 4");
        assert_eq!(dials.check("b:1", 1), Err(Busy::Client), "in all");
        let others: Vec<_> = (2..5).map(|c| dials.start("a:1", c).unwrap()).collect();
        assert_eq!(dials.check("a:1", 5), Err(Busy::Backend));
        drop((mine, others));
        assert_eq!(dials.check("a:1", 1), Ok(()), "none counted by the checks");
    }

    #[test]
    fn a_crowded_backend_keeps_its_last_dials_for_clients_with_none() {
        let dials = Dials::new(64);
        let held: Vec<_> = (0..48)
            .map(|i| dials.start("slow:1", i / 16).unwrap())
            .collect();
        let fourth = dials.start("slow:1", 3).unwrap();
        assert_eq!(
            dials.start("slow:1", 3).err(),
            Some(Busy::Client),
            "crowded (15 free), a fourth client holds one"
        );
        let others: Vec<_> = (4..19).map(|c| dials.start("slow:1", c).unwrap()).collect();
        assert_eq!(
            dials.start("slow:1", 99).err(),
            Some(Busy::Backend),
            "64 in all"
        );
        drop((held, fourth, others));
    }
}
