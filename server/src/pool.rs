//! Worker threads: where blocking plugin code runs, one job per thread at a time. The pool
//! knows nothing of connections or of what a job does: it runs `run(job)` on a thread,
//! spawning one when none is idle. How many jobs may run at once is the caller's to count
//! ([`crate::daemon::worker_slots`]).
//!
//! Threads are spawned on demand, kept while jobs keep coming, and leave after
//! [`IDLE_EXIT`] without work. Jobs travel over a crossbeam channel; the pool never spawns a
//! thread for a job an idle thread will take (see [`Pool::dispatch`]). Idle threads park on
//! a condition variable and take jobs with `try_recv`: a blocking `recv` would spin and
//! `sched_yield` before parking, which on a busy core costs the thread that has work
//! (measured: five yields per WebSocket handshake).

use crossbeam_channel::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker thread waits for a job before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

pub struct Pool<J> {
    inner: Arc<PoolInner<J>>,
    stack_bytes: usize,
}

struct PoolInner<J> {
    /// Idle threads not yet promised a job. Claimed and sent under this lock, which is what
    /// keeps a job from waiting on a thread that just timed out.
    idle: Mutex<usize>,
    /// Wakes one idle thread per job sent.
    wake: Condvar,
    sender: Sender<J>,
    receiver: Receiver<J>,
    run: Box<dyn Fn(J) + Send + Sync>,
}

impl<J: Send + 'static> Pool<J> {
    /// A pool whose threads (`stack_bytes` of stack each) call `run` for every job.
    pub fn new(stack_bytes: usize, run: impl Fn(J) + Send + Sync + 'static) -> Pool<J> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        Pool {
            inner: Arc::new(PoolInner {
                idle: Mutex::new(0),
                wake: Condvar::new(),
                sender,
                receiver,
                run: Box::new(run),
            }),
            stack_bytes,
        }
    }

    /// Hands a job to an idle thread, or to a new one. When no thread can be started (the
    /// system's limit), the job comes back to the caller.
    pub fn dispatch(&self, job: J) -> Result<(), J> {
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
                    worker(&inner, job);
                }
            });
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                log::error!("cannot start a worker thread: {e}");
                let job = cell.lock().unwrap_or_else(|e| e.into_inner()).take();
                job.map_or(Ok(()), Err)
            }
        }
    }
}

fn worker<J>(pool: &PoolInner<J>, first: J) {
    let mut job = first;
    loop {
        (pool.run)(job);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_every_job_and_reuses_an_idle_thread() {
        let (done, finished) = mpsc::channel();
        let pool = Pool::new(64 * 1024, move |n: u32| {
            done.send((n, std::thread::current().id())).unwrap();
        });
        pool.dispatch(1).unwrap();
        let (first, thread) = finished.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, 1);
        // The thread is idle now (it sent before parking, so give it the moment to park).
        let until = Instant::now() + Duration::from_secs(5);
        while *pool.inner.idle.lock().unwrap() == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        pool.dispatch(2).unwrap();
        let (second, again) = finished.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(second, 2);
        assert_eq!(again, thread, "the idle thread took the second job");
    }
}
