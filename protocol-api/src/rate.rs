//! How often, or how much, one client may do a costly thing (start a program, begin a TLS
//! handshake, inflate compressed bytes): a token bucket per client key
//! ([`crate::clients::key`]), shared by the daemon and plugins so that every such limit
//! counts clients and bursts the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Milliseconds since [`crate::moment::epoch`].
fn now_ms() -> u64 {
    crate::moment::epoch().elapsed().as_millis() as u64
}

/// Below this many clients tracked, none is forgotten.
const SWEEP_FROM: usize = 4096;

/// Clients' allowances of one thing: `per_sec` a second each, in bursts of twice as many.
/// A client whose allowance is whole again is as good as never seen, and is forgotten once
/// the table has doubled since it was last swept (so a sweep costs each entry O(1)).
pub struct PerClient {
    per_sec: f64,
    state: Mutex<State>,
    /// Until when (ms since [`crate::moment::epoch`]) some client may owe: before it, none
    /// does, and nobody need look.
    owed_until: AtomicU64,
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
            owed_until: AtomicU64::new(0),
        }
    }

    /// Whether the client `key` may do it now; counted if so.
    pub fn allow(&self, key: u64) -> bool {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: u64, now: Instant) -> bool {
        self.with_allowance(key, now, |left| match *left >= 1.0 {
            true => {
                *left -= 1.0;
                true
            }
            false => false,
        })
    }

    /// Counts `amount` the client `key` has done, which may leave it owing (work is
    /// counted once done: an inflation is not undone); then the wait until it owes
    /// nothing, if it owes.
    pub fn spend(&self, key: u64, amount: usize) -> Option<Duration> {
        self.spend_at(key, amount, Instant::now())
    }

    fn spend_at(&self, key: u64, amount: usize, now: Instant) -> Option<Duration> {
        let (rate, burst) = (self.per_sec, 2.0 * self.per_sec);
        let wait = self.with_allowance(key, now, |left| {
            // What is owed is at most a burst's worth (a wait of two seconds): a client
            // that spent far past it waits no longer, so users behind its address are
            // not held back for minutes.
            *left = (*left - amount as f64).max(-burst);
            (*left < 0.0).then(|| Duration::from_secs_f64(-*left / rate))
        });
        if let Some(wait) = wait {
            let until = now_ms() + wait.as_millis() as u64 + 1;
            self.owed_until.fetch_max(until, Ordering::Relaxed);
        }
        wait
    }

    /// Whether some client may owe now ([`PerClient::spend`]): false means none does.
    pub fn may_owe(&self) -> bool {
        // Until some client has owed, not even the clock is read.
        let until = self.owed_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// The wait until the client `key` owes nothing, if it owes now ([`PerClient::spend`]).
    pub fn owed(&self, key: u64) -> Option<Duration> {
        self.spend(key, 0)
    }

    /// Runs `f` on the client's allowance as it stands at `now`.
    fn with_allowance<R>(&self, key: u64, now: Instant, f: impl FnOnce(&mut f64) -> R) -> R {
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
        f(left)
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
    fn what_is_spent_past_the_allowance_is_owed_and_waited_for() {
        let rates = PerClient::new(1000);
        let start = Instant::now();
        assert_eq!(
            rates.spend_at(1, 1500, start),
            None,
            "within the burst of 2000"
        );
        let owed = rates.spend_at(1, 1000, start).expect("500 past it");
        assert_eq!(owed, Duration::from_millis(500), "at 1000 a second");
        assert!(
            rates.spend_at(2, 0, start).is_none(),
            "another client owes nothing"
        );
        let later = start + Duration::from_millis(400);
        assert_eq!(
            rates.spend_at(1, 0, later),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            rates.spend_at(1, 0, start + Duration::from_millis(500)),
            None
        );
        let deep = rates.spend_at(3, 1_000_000, start).expect("far past it");
        assert_eq!(deep, Duration::from_secs(2), "owed at most a burst's worth");
        assert!(rates.may_owe());
        assert!(!PerClient::new(1000).may_owe(), "nobody has spent");
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
