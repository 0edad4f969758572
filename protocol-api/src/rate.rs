//! How often one client may do a costly thing (start a program, begin a TLS handshake):
//! a token bucket per client key ([`crate::clients::key`]), shared by the daemon and
//! plugins so that every such limit counts clients and bursts the same way.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Below this many clients tracked, none is forgotten.
const SWEEP_FROM: usize = 4096;

/// Clients' allowances of one thing: `per_sec` a second each, in bursts of twice as many.
/// A client whose allowance is whole again is as good as never seen, and is forgotten once
/// the table has doubled since it was last swept (so a sweep costs each entry O(1)).
pub struct PerClient {
    per_sec: f64,
    state: Mutex<State>,
}

struct State {
    /// Per client key: what it may do now, and when that was worked out.
    buckets: HashMap<u64, (f64, Instant)>,
    /// The size at which the next sweep is due.
    sweep_at: usize,
}

impl PerClient {
    /// Every client with its whole allowance.
    pub fn new(per_sec: u32) -> PerClient {
        PerClient {
            per_sec: f64::from(per_sec),
            state: Mutex::new(State {
                buckets: HashMap::new(),
                sweep_at: SWEEP_FROM,
            }),
        }
    }

    /// Whether the client `key` may do it now; counted if so.
    pub fn allow(&self, key: u64) -> bool {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: u64, now: Instant) -> bool {
        let (rate, burst) = (self.per_sec, 2.0 * self.per_sec);
        let refilled = |left: f64, at: Instant| {
            (left + now.saturating_duration_since(at).as_secs_f64() * rate).min(burst)
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.buckets.len() >= state.sweep_at {
            state
                .buckets
                .retain(|_, (left, at)| refilled(*left, *at) < burst);
            state.sweep_at = (state.buckets.len() * 2).max(SWEEP_FROM);
        }
        let (left, at) = state.buckets.entry(key).or_insert((burst, now));
        *left = refilled(*left, *at);
        *at = now;
        if *left < 1.0 {
            return false;
        }
        *left -= 1.0;
        true
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_client_gets_a_burst_then_its_rate_and_others_are_not_touched() {
        let rates = PerClient::new(10);
        let start = Instant::now();
        let allowed = (0..25).filter(|_| rates.allow_at(1, start)).count();
        assert_eq!(allowed, 20, "a burst of twice the rate");
        assert!(rates.allow_at(2, start), "another client has its own");
        let later = start + Duration::from_millis(500);
        let allowed = (0..25).filter(|_| rates.allow_at(1, later)).count();
        assert_eq!(allowed, 5, "ten a second");
    }

    #[test]
    fn clients_whose_allowance_is_whole_are_forgotten_in_sweeps() {
        let rates = PerClient::new(1);
        let start = Instant::now();
        for key in 0..SWEEP_FROM as u64 {
            assert!(rates.allow_at(key, start));
        }
        assert_eq!(rates.tracked(), SWEEP_FROM);
        // One spent its burst just now; the rest are whole again two seconds on.
        assert!(rates.allow_at(0, start + Duration::from_secs(2)));
        assert!(rates.allow_at(0, start + Duration::from_secs(2)));
        assert!(rates.allow_at(7, start + Duration::from_secs(2)));
        assert_eq!(rates.tracked(), 2, "client 0 (spent) and the one asking");
    }
}
