//! Worker threads: where blocking plugin code runs, one upgraded connection per thread.
//!
//! Capacity is counted in slots: the event loop takes a slot when it hands a connection to
//! a worker (after the request body is read, so a slow body holds no slot) and answers `503`
//! when none is left, so a client never gets a `101` that then waits for a thread. A slot is
//! released when its job ends.
//!
//! Threads are spawned on demand up to the slot count, kept while jobs keep coming, and
//! leave after [`IDLE_EXIT`] without work. Jobs travel over a crossbeam channel; the pool
//! never spawns a thread for a job an idle thread will take (see [`Pool::dispatch`]).
//! Idle threads park on a condition variable and take jobs with `try_recv`: a blocking
//! `recv` would spin and `sched_yield` before parking, which on a busy core costs the
//! thread that has work (measured: five yields per WebSocket handshake).

use crate::clients::{Clients, Hold, Limit};
use crate::shared::Shared;
use crate::switch::{self, Job};
use crossbeam_channel::{Receiver, Sender};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker thread waits for a job before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

pub struct Pool {
    inner: Arc<PoolInner>,
    stack_bytes: usize,
}

struct PoolInner {
    slots: usize,
    busy: AtomicUsize,
    /// Idle threads not yet promised a job. Claimed and sent under this lock, which is what
    /// keeps a job from waiting on a thread that just timed out.
    idle: Mutex<usize>,
    /// Wakes one idle thread per job sent.
    wake: Condvar,
    sender: Sender<Job>,
    receiver: Receiver<Job>,
}

/// A reserved unit of capacity; dropping it frees it (and its client's share of it).
pub struct Slot {
    pool: Arc<PoolInner>,
    _client: Hold,
}

/// Why no slot could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Every slot is taken.
    Full,
    /// This client holds its most (`SWITCHYARD_WORKERS_PER_CLIENT`).
    ClientLimit,
}

impl NoSlot {
    /// What the client is told, and the access line's reason.
    pub fn reason(self) -> &'static str {
        match self {
            NoSlot::Full => "no capacity for another upgraded connection",
            NoSlot::ClientLimit => "this client holds its most worker slots",
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    pub fn new(slots: usize, stack_bytes: usize) -> Pool {
        let (sender, receiver) = crossbeam_channel::unbounded();
        Pool {
            inner: Arc::new(PoolInner {
                slots,
                busy: AtomicUsize::new(0),
                idle: Mutex::new(0),
                wake: Condvar::new(),
                sender,
                receiver,
            }),
            stack_bytes,
        }
    }

    /// Upgraded connections on workers (being negotiated or served).
    pub fn busy(&self) -> usize {
        self.inner.busy.load(Ordering::Acquire)
    }

    /// True when a slot is free now (it may be gone by the time one is asked for).
    pub fn has_room(&self) -> bool {
        self.busy() < self.inner.slots
    }

    /// Takes a slot for the client at `client`, if one is free and the client has not
    /// its most already.
    pub fn try_reserve(&self, clients: &'static Clients, client: IpAddr) -> Result<Slot, NoSlot> {
        let busy = &self.inner.busy;
        busy.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < self.inner.slots).then_some(n + 1)
        })
        .map_err(|_| NoSlot::Full)?;
        match clients.take(client, Limit::Workers) {
            Some(hold) => Ok(Slot {
                pool: self.inner.clone(),
                _client: hold,
            }),
            None => {
                busy.fetch_sub(1, Ordering::AcqRel);
                Err(NoSlot::ClientLimit)
            }
        }
    }

    /// Hands a job (holding its slot) to an idle thread, or to a new one. When no thread
    /// can be started (the system's limit), the job comes back to the caller.
    pub fn dispatch(&self, job: Job, shared: &'static Shared) -> Result<(), Box<Job>> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        if *idle > 0 {
            *idle -= 1;
            // Cannot fail: the pool holds a receiver for as long as it holds the sender.
            let _ = self.inner.sender.send(job);
            drop(idle);
            self.inner.wake.notify_one();
            return Ok(());
        }
        drop(idle);
        // The job waits in a cell the new thread empties, so that a failed spawn (which
        // drops the closure) still leaves it to us.
        let cell = Arc::new(Mutex::new(Some(job)));
        let handed = cell.clone();
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("switchyard-worker".into())
            .stack_size(self.stack_bytes)
            .spawn(move || {
                let job = handed.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(job) = job {
                    worker(&inner, shared, job);
                }
            });
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                log::error!("cannot start a worker thread: {e}");
                let job = cell.lock().unwrap_or_else(|e| e.into_inner()).take();
                job.map_or(Ok(()), |job| Err(Box::new(job)))
            }
        }
    }
}

fn worker(pool: &PoolInner, shared: &'static Shared, first: Job) {
    let mut job = first;
    loop {
        switch::run(job, shared);
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        *idle += 1;
        let until = Instant::now() + IDLE_EXIT;
        job = loop {
            // Every job is sent under this lock, so what is in the channel is what idle
            // threads were promised; whichever idle thread looks first takes it.
            if let Ok(next) = pool.receiver.try_recv() {
                break next;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                *idle -= 1;
                return;
            }
            idle = pool
                .wake
                .wait_timeout(idle, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
    }
}
