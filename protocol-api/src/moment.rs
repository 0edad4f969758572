//! Points in time for what every connection carries for its whole life (its deadlines, when
//! it last moved, when it began), in the daemon and in plugins: 8 bytes where `Instant`
//! takes 16, and `Option<Moment>` still 8. At tens of thousands of idle connections the
//! difference is memory the daemon's users see (`bench/RESULTS.md`, the idle rows).
//! Arithmetic stays with `Instant`, but for a deadline's `Moment + Duration`
//! ([`Moment::after`]): integer nanoseconds, where going through `Instant` cost every
//! message of an echo three conversions (about 5% of the daemon's user time at 64 B).

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An `Instant` as nanoseconds past the process's epoch (plus one, so that `None` has a
/// place). 64 bits of nanoseconds last 584 years.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(NonZeroU64);

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process's epoch, which every `Moment` counts from (and the log throttle's seconds
/// and the daemon's note of slow plugin calls): set at start ([`start`]), or by the first
/// use (each plugin's copy of this crate has its own). A point before it is kept as the
/// epoch itself, which only the first microseconds of a process could meet.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Sets the epoch now, before any connection's time is taken.
pub fn start() {
    epoch();
}

impl Moment {
    /// `at`, kept in 8 bytes.
    pub fn of(at: Instant) -> Moment {
        let nanos = at.saturating_duration_since(epoch()).as_nanos();
        Moment(NonZeroU64::MIN.saturating_add(nanos.min(u128::from(u64::MAX - 1)) as u64))
    }

    /// `by` later (at the far end of the range at most: 584 years from the epoch).
    pub fn after(self, by: Duration) -> Moment {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        Moment(self.0.saturating_add(nanos.min(u64::MAX - 1)))
    }

    /// The `Instant` it keeps.
    pub fn instant(self) -> Instant {
        epoch() + Duration::from_nanos(self.0.get() - 1)
    }
}

/// The CPU time the calling thread has used: what a step of work cost, however long the
/// thread waited meanwhile for a core (wall-clock time charges a step for its preemption
/// too). A system call (about 0.5 µs here), not read from the vDSO as the clocks are: for
/// steps that cost a hundred times more. `None` where the clock cannot be read.
pub fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a `timespec` of ours for the kernel to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    let secs = u64::try_from(now.tv_sec).ok()?;
    let nanos = u32::try_from(now.tv_nsec).ok()?;
    (rc == 0).then(|| Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moment_later_is_the_instant_later() {
        start(); // points before the epoch are kept as the epoch itself
        let now = Instant::now();
        for by in [0, 1, 999_999_999, 1_000_000_000, 3_600_000_000_123] {
            let by = Duration::from_nanos(by);
            assert_eq!(Moment::of(now).after(by), Moment::of(now + by), "{by:?}");
        }
        let far = Moment::of(now).after(Duration::MAX);
        assert!(far > Moment::of(now + Duration::from_secs(100 * 365 * 86_400)));
        assert_eq!(far.after(Duration::from_secs(1)), far, "saturates");
    }

    #[test]
    fn the_threads_cpu_clock_counts_work_not_sleep() {
        let began = thread_cpu_time().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time().unwrap() - began;
        assert!(slept < Duration::from_millis(10), "{slept:?} asleep");
        // Work until the clock shows 10 ms of it, or 5 s pass: on a busy machine the
        // thread may get a third of the wall clock (a fixed 30 ms of wall clock counted
        // 8.7 ms in a CI run).
        let mut x = 1u64;
        let until = Instant::now() + Duration::from_secs(5);
        let mut worked = Duration::ZERO;
        while worked < Duration::from_millis(10) && Instant::now() < until {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            worked = thread_cpu_time().unwrap() - began - slept;
        }
        assert!(
            worked >= Duration::from_millis(10),
            "{worked:?} at work in 5 s"
        );
    }

    #[test]
    fn round_trips_to_the_nanosecond_and_keeps_order() {
        start();
        let now = Instant::now();
        let later = now + Duration::from_nanos(1);
        assert_eq!(Moment::of(now).instant(), now);
        assert_eq!(Moment::of(later).instant(), later);
        assert!(Moment::of(now) < Moment::of(later));
        let far = now + Duration::from_secs(3600 * 24 * 365 * 100);
        assert_eq!(Moment::of(far).instant(), far);
        assert_eq!(std::mem::size_of::<Option<Moment>>(), 8);
    }
}
