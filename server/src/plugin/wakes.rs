//! The daemon's side of readiness connections' wakers (ABI 1.10): a plugin's thread, or
//! another of its connections, asks a connection's event loop to call `on_ready` with
//! `READY_WOKEN`.
//!
//! Each loop has one [`Wakes`]: the connections woken since it last looked, by slot and
//! id. A connection has at most one [`WakeTarget`], made on the plugin's first
//! `waker` call and shared by every handle the plugin holds, so that:
//! - a wake costs a flag while one is already queued: a thread that wakes a connection a
//!   million times before the loop looks queues it once, and the queue never holds more
//!   entries than there are connections;
//! - a wake after the connection ended does nothing and says so (`ESRCH`), and one queued
//!   just before is dropped by the loop, which matches the id as well as the slot (a later
//!   connection in the same slot is not called for it);
//! - a wake from the loop's own thread (one connection handing bytes to another) costs no
//!   system call: the loop looks at the queue before it sleeps. Only the first wake from
//!   another thread into an empty queue writes to the loop's `eventfd`.

use protocol_api::hosting::HostWaker;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

thread_local! {
    /// The [`Wakes`] of the loop running on this thread (its address; 0 on other threads).
    static THIS_LOOP: Cell<usize> = const { Cell::new(0) };
}

/// One event loop's woken connections.
pub struct Wakes {
    /// `(slot, id)` of each connection woken since the loop last took them.
    woken: Mutex<Vec<(usize, u32)>>,
    /// `woken` holds some (set and cleared under its lock): the loop's turns, nearly all
    /// with no wake, look here and take no lock.
    pending: AtomicBool,
    /// Wakes the loop's `poll` from another thread.
    poll: Arc<mio::Waker>,
}

impl Wakes {
    pub fn new(poll: Arc<mio::Waker>) -> Arc<Wakes> {
        Arc::new(Wakes {
            woken: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            poll,
        })
    }

    /// Called by the loop on its own thread before it runs: wakes from this thread need no
    /// system call.
    pub fn enter(self: &Arc<Wakes>) {
        THIS_LOOP.with(|this| this.set(Arc::as_ptr(self) as usize));
    }

    /// The connections woken since the last call, in `into` (cleared first).
    pub fn take(&self, into: &mut Vec<(usize, u32)>) {
        into.clear();
        if !self.any() {
            return;
        }
        let mut woken = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *woken, into);
        self.pending.store(false, Ordering::Relaxed);
    }

    /// Whether any connection waits for its call.
    pub fn any(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    fn push(&self, slot: usize, id: u32) {
        let first = {
            let mut woken = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
            woken.push((slot, id));
            self.pending.store(true, Ordering::Release);
            woken.len() == 1
        };
        let on_loop = THIS_LOOP.with(Cell::get) == self as *const Wakes as usize;
        if first && !on_loop {
            // A failed write leaves the wake for the loop's next turn (any event, or a
            // timer: a loop with connections has the idle limit's at least).
            let _ = self.poll.wake();
        }
    }
}

/// What every waker of one connection points at.
pub struct WakeTarget {
    wakes: Arc<Wakes>,
    slot: usize,
    id: u32,
    /// A wake waits in the loop's queue.
    queued: AtomicBool,
    /// The connection ended: wakes do nothing.
    ended: AtomicBool,
}

impl WakeTarget {
    pub fn new(wakes: Arc<Wakes>, slot: usize, id: u32) -> Arc<WakeTarget> {
        Arc::new(WakeTarget {
            wakes,
            slot,
            id,
            queued: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        })
    }

    /// The loop took this connection's wake: the next one queues it again. (Before the
    /// call, so that a wake during it brings another.)
    pub fn taken(&self) {
        // Acquires what a wake that found it queued wrote before it (that wake relies on
        // this call to see it).
        self.queued.swap(false, Ordering::AcqRel);
    }

    /// A wake may still come: the plugin holds a handle (each holds a count of this), or
    /// one is queued.
    pub fn may_wake(self: &Arc<WakeTarget>) -> bool {
        if Arc::strong_count(self) > 1 {
            return true;
        }
        // The count is read relaxed: a handle that woke, then was released, must have its
        // `queued` seen (on a weak-memory machine too).
        std::sync::atomic::fence(Ordering::Acquire);
        self.queued.load(Ordering::Acquire)
    }

    /// The connection ended.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
    }
}

impl HostWaker for WakeTarget {
    fn wake(&self) -> bool {
        if self.ended.load(Ordering::Acquire) {
            return false;
        }
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.wakes.push(self.slot, self.id);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wakes() -> (mio::Poll, Arc<Wakes>) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        (poll, Wakes::new(waker))
    }

    #[test]
    fn a_connection_is_queued_once_until_the_loop_takes_it() {
        let (_poll, wakes) = wakes();
        let target = WakeTarget::new(wakes.clone(), 7, 42);
        for _ in 0..1000 {
            assert!(target.wake());
        }
        let mut woken = Vec::new();
        wakes.take(&mut woken);
        assert_eq!(woken, [(7, 42)]);
        assert!(target.wake(), "still queued: not taken yet");
        wakes.take(&mut woken);
        assert!(woken.is_empty(), "{woken:?}");
        target.taken();
        assert!(target.wake());
        wakes.take(&mut woken);
        assert_eq!(woken, [(7, 42)]);
    }

    #[test]
    fn a_wake_may_come_while_a_handle_is_held_or_one_is_queued() {
        let (_poll, wakes) = wakes();
        let target = WakeTarget::new(wakes.clone(), 1, 1);
        assert!(!target.may_wake(), "no handle: nothing can wake it");
        // A handle owns a count of the target (`protocol_api::hosting::raw_waker`).
        let handle = target.clone();
        assert!(target.may_wake(), "the plugin holds a handle");
        assert!(handle.wake());
        drop(handle);
        assert!(target.may_wake(), "its wake is queued");
        target.taken();
        assert!(!target.may_wake());
    }

    #[test]
    fn an_ended_connection_is_not_woken_and_says_so() {
        let (_poll, wakes) = wakes();
        let target = WakeTarget::new(wakes.clone(), 1, 1);
        target.end();
        assert!(!target.wake());
        assert!(!wakes.any());
    }

    #[test]
    fn a_wake_from_another_thread_wakes_the_poll_and_one_on_the_loop_does_not() {
        let (mut poll, wakes) = wakes();
        let mut events = mio::Events::with_capacity(4);
        wakes.enter(); // this thread is the loop
        let target = WakeTarget::new(wakes.clone(), 3, 9);
        target.wake();
        poll.poll(&mut events, Some(std::time::Duration::ZERO))
            .unwrap();
        assert!(
            events.is_empty(),
            "no eventfd write on the loop's own thread"
        );
        assert!(wakes.any());
        let mut woken = Vec::new();
        wakes.take(&mut woken);
        target.taken();
        let other = target.clone();
        std::thread::spawn(move || other.wake()).join().unwrap();
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert!(!events.is_empty(), "another thread's wake reaches the poll");
        wakes.take(&mut woken);
        assert_eq!(woken, [(3, 9)]);
    }
}
