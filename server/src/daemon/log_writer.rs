//! Where log lines go: to stderr from a thread of their own, so that a reader that does not
//! keep up (journald under load, a pipe nobody reads) never stalls an event loop. Each loop
//! writes an access line per exchange; written in place, a full pipe held every
//! connection of the loop until it drained.
//!
//! Lines are appended to one buffer that the writer thread takes whole and writes in one
//! go: no allocation, hand-over or wake-up a line (a client pipelining requests had its
//! access lines take three quarters of the daemon's CPU when each was a `Vec` sent to the
//! thread and written alone). Up to [`QUEUE`] lines, [`QUEUE_BYTES`] in all, wait (a line
//! may carry a client's 8 KiB request target); past that, lines are dropped and counted,
//! and the count is written once stderr takes lines again, as HAProxy's logs over UDP are
//! lost rather than slow it down. Warnings and errors have [`RESERVE`] more: a flood of
//! access lines does not push out the line that says what went wrong.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Lines that may wait for stderr.
pub const QUEUE: usize = 16_384;
/// Bytes those lines may hold together.
pub const QUEUE_BYTES: usize = 4 << 20;
/// How many lines, and bytes, warnings and errors may wait beyond the others.
pub const RESERVE: (usize, usize) = (1024, 1 << 20);

/// The lines waiting for the writer thread.
#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    lines: usize,
    /// Lines dropped since the last note of it.
    dropped: u64,
    /// Where the first of them would have been among the lines waiting, and when: the
    /// note goes there, with that time.
    first_dropped: Option<(usize, SystemTime)>,
    /// The writer thread sleeps until told ([`ARRIVED`]): only then is it told (a wake-up
    /// is a system call).
    writer_sleeps: bool,
}

static WAITING: Mutex<Waiting> = Mutex::new(Waiting {
    bytes: Vec::new(),
    lines: 0,
    dropped: 0,
    first_dropped: None,
    writer_sleeps: false,
});
/// Told when lines begin to wait.
static ARRIVED: Condvar = Condvar::new();
/// The writer thread runs (else lines are written in place).
static STARTED: AtomicBool = AtomicBool::new(false);
/// The writer thread holds lines it has not finished writing.
static WRITING: AtomicBool = AtomicBool::new(false);

/// Whether a line of `len` bytes may wait behind `lines` lines of `bytes` bytes;
/// `important` (a warning or an error) may use the [`RESERVE`].
fn admits(lines: usize, bytes: usize, len: usize, important: bool) -> bool {
    let (reserve_lines, reserve_bytes) = if important { RESERVE } else { (0, 0) };
    lines < QUEUE + reserve_lines && bytes + len <= QUEUE_BYTES + reserve_bytes
}

fn waiting() -> MutexGuard<'static, Waiting> {
    WAITING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the line that says how many lines were dropped, from when.
pub type DroppedLine = fn(u64, SystemTime) -> Vec<u8>;

/// Starts the writer thread, once; until then (or if it cannot start) lines are written
/// in place.
pub fn start(dropped_line: DroppedLine) {
    if STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let started = std::thread::Builder::new()
        .name("switchyard-log".into())
        .spawn(move || write_out(dropped_line));
    if let Err(e) = started {
        STARTED.store(false, Ordering::Release);
        eprintln!("switchyard: cannot start the log thread ({e}): logging in place");
    }
}

/// Hands `line` (whole, with its newline) to the writer thread, never waiting for stderr.
pub fn push(line: &[u8], important: bool) {
    if !STARTED.load(Ordering::Acquire) {
        let _ = io::stderr().write_all(line);
        return;
    }
    let mut waiting = waiting();
    if !admits(waiting.lines, waiting.bytes.len(), line.len(), important) {
        waiting.dropped += 1;
        let at = waiting.bytes.len();
        waiting
            .first_dropped
            .get_or_insert_with(|| (at, SystemTime::now()));
        return;
    }
    waiting.bytes.extend_from_slice(line);
    waiting.lines += 1;
    let wake = std::mem::take(&mut waiting.writer_sleeps);
    drop(waiting);
    if wake {
        ARRIVED.notify_one();
    }
}

/// Most capacity a buffer keeps between writes (one burst's room is given back).
const KEEP: usize = 256 * 1024;
/// After a write of less than this, the writer lets lines gather for [`GATHER`] before it
/// takes them: lines come out that much later at most, and a flood of them is written in
/// a few large writes rather than many small ones, each with a wake-up.
const GATHER_BELOW: usize = 64 * 1024;
const GATHER: Duration = Duration::from_millis(1);

/// Takes what waits, whole, and writes it in one go; again and again. A note of lines
/// dropped goes where they would have been, with the time the first was.
fn write_out(dropped_line: DroppedLine) {
    let mut taken: Vec<u8> = Vec::new();
    loop {
        let (dropped, first_dropped) = {
            let mut waiting = waiting();
            while waiting.lines == 0 && waiting.dropped == 0 {
                waiting.writer_sleeps = true;
                waiting = ARRIVED.wait(waiting).unwrap_or_else(|e| e.into_inner());
            }
            waiting.writer_sleeps = false;
            WRITING.store(true, Ordering::Release);
            std::mem::swap(&mut taken, &mut waiting.bytes);
            waiting.lines = 0;
            (
                std::mem::take(&mut waiting.dropped),
                waiting.first_dropped.take(),
            )
        };
        // Locked for the batch only: another thread's write to stderr (a panic's message
        // is unlocked, but an `eprintln!` is not) waits for one batch at most.
        let mut stderr = io::stderr().lock();
        match first_dropped {
            Some((at, when)) if dropped > 0 => {
                let _ = stderr.write_all(&taken[..at]);
                let _ = stderr.write_all(&dropped_line(dropped, when));
                let _ = stderr.write_all(&taken[at..]);
            }
            _ => {
                let _ = stderr.write_all(&taken);
            }
        }
        drop(stderr);
        let gather = taken.len() < GATHER_BELOW;
        taken.clear();
        if taken.capacity() > KEEP {
            taken = Vec::new();
        }
        WRITING.store(false, Ordering::Release);
        if gather {
            std::thread::sleep(GATHER);
        }
    }
}

/// Waits until the lines handed over so far are written, for at most `limit`: before the
/// process exits, so that its last lines (why it stopped) are not lost.
pub fn drain(limit: Duration) {
    if !STARTED.load(Ordering::Acquire) {
        return;
    }
    let until = Instant::now() + limit;
    while (waiting().lines > 0 || WRITING.load(Ordering::Acquire)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_and_errors_have_a_reserve_past_the_others_limits() {
        assert!(admits(0, 0, 100, false));
        assert!(!admits(QUEUE, 0, 100, false), "lines");
        assert!(!admits(10, QUEUE_BYTES - 99, 100, false), "bytes");
        assert!(admits(QUEUE, 0, 100, true));
        assert!(admits(10, QUEUE_BYTES, 100, true));
        assert!(!admits(QUEUE + RESERVE.0, 0, 100, true));
        assert!(!admits(10, QUEUE_BYTES + RESERVE.1, 1, true));
    }
}
