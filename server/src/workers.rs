//! Worker threads: where plugin code runs, blocking, one upgraded connection per thread.
//!
//! Capacity is counted in slots: the event loop reserves a slot *before* it sends `100
//! Continue` or reads an upgrade's body, and answers `503` when none is left, so a client
//! never gets a `101` that then waits for a thread. A slot is released when its job ends.
//!
//! Threads are spawned on demand up to the slot count, kept while jobs keep coming, and
//! leave after [`IDLE_EXIT`] without work. Jobs travel over a crossbeam channel; the pool
//! never spawns a thread for a job an idle thread will take (see [`Pool::dispatch`]).

use crate::shared::Shared;
use crate::switch::{self, Job};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an idle worker thread waits for a job before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    slots: usize,
    busy: AtomicUsize,
    /// Idle threads not yet promised a job. Claimed and sent under this lock, which is what
    /// keeps a job from waiting on a thread that just timed out.
    idle: Mutex<usize>,
    sender: Sender<Job>,
    receiver: Receiver<Job>,
    shared: Arc<Shared>,
}

/// A reserved unit of capacity; dropping it frees it.
pub struct Slot {
    pool: Arc<PoolInner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    pub fn new(shared: Arc<Shared>) -> Pool {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let slots = shared.config.workers;
        Pool {
            inner: Arc::new(PoolInner {
                slots,
                busy: AtomicUsize::new(0),
                idle: Mutex::new(0),
                sender,
                receiver,
                shared,
            }),
        }
    }

    /// Upgraded connections in hand (reserved, queued or being served).
    pub fn busy(&self) -> usize {
        self.inner.busy.load(Ordering::Acquire)
    }

    /// Takes a slot if one is free.
    pub fn try_reserve(&self) -> Option<Slot> {
        let busy = &self.inner.busy;
        let mut current = busy.load(Ordering::Acquire);
        while current < self.inner.slots {
            match busy.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Slot {
                        pool: self.inner.clone(),
                    })
                }
                Err(seen) => current = seen,
            }
        }
        None
    }

    /// Hands a job (holding its slot) to an idle thread, or to a new one.
    pub fn dispatch(&self, job: Job) {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        if *idle > 0 {
            *idle -= 1;
            // Cannot fail: the pool holds a receiver for as long as it holds the sender.
            let _ = self.inner.sender.send(job);
            return;
        }
        drop(idle);
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("switchyard-worker".into())
            .stack_size(inner.shared.config.worker_stack_bytes)
            .spawn(move || worker(inner, job));
        if let Err(e) = spawned {
            // The job (and its socket and slot) went down with the closure.
            log::error!("cannot start a worker thread: {e}; one upgrade request dropped");
        }
    }
}

fn worker(pool: Arc<PoolInner>, first: Job) {
    let mut job = first;
    loop {
        switch::run(job, &pool.shared);
        *pool.idle.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        job = loop {
            match pool.receiver.recv_timeout(IDLE_EXIT) {
                Ok(next) => break next,
                Err(RecvTimeoutError::Timeout) => {
                    let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                    // Every claim on an idle thread is sent under this lock, so an empty
                    // channel here means no job counts on us.
                    if pool.receiver.is_empty() {
                        *idle -= 1;
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
    }
}
