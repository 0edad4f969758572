//! Where log lines go: to stderr from a thread of their own, so that a reader that does not
//! keep up (journald under load, a pipe nobody reads) never stalls an event loop. Each loop
//! writes an access line per exchange; written in place, a full pipe held every
//! connection of the loop until it drained. Up to [`QUEUE`] lines, [`QUEUE_BYTES`] in
//! all, wait (a line may carry a client's 8 KiB request target); past that, lines are
//! dropped and counted, and the count is written once stderr takes lines again, as
//! HAProxy's logs over UDP are lost rather than slow it down.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lines that may wait for stderr.
pub const QUEUE: usize = 16_384;
/// Bytes those lines may hold together.
pub const QUEUE_BYTES: usize = 4 << 20;

/// Bytes of the lines waiting now.
static QUEUED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Lines dropped since the last note of it.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// The writer thread holds a line it has not finished writing.
static WRITING: AtomicBool = AtomicBool::new(false);
static QUEUED: OnceLock<Sender<Vec<u8>>> = OnceLock::new();

/// The logger's target: hands each line to the writer thread, never waiting.
pub struct LogWriter {
    lines: Sender<Vec<u8>>,
}

impl LogWriter {
    /// Starts the writer thread (once) and returns a target for the logger.
    pub fn start() -> LogWriter {
        let lines = QUEUED
            .get_or_init(|| {
                let (lines, queued) = bounded(QUEUE);
                let started = std::thread::Builder::new()
                    .name("switchyard-log".into())
                    .spawn(move || write_out(queued));
                if let Err(e) = started {
                    eprintln!("switchyard: cannot start the log thread ({e}): logging in place");
                }
                lines
            })
            .clone();
        LogWriter { lines }
    }
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let queued = QUEUED_BYTES.fetch_add(line.len(), Ordering::Relaxed);
        if queued + line.len() > QUEUE_BYTES {
            QUEUED_BYTES.fetch_sub(line.len(), Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        match self.lines.try_send(line.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                QUEUED_BYTES.fetch_sub(line.len(), Ordering::Relaxed);
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            // No writer thread: in place, as before.
            Err(TrySendError::Disconnected(line)) => {
                QUEUED_BYTES.fetch_sub(line.len(), Ordering::Relaxed);
                io::stderr().write_all(&line)?
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_out(queued: Receiver<Vec<u8>>) {
    let mut stderr = io::stderr().lock();
    for line in queued {
        WRITING.store(true, Ordering::Release);
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                stderr,
                "[switchyard::log] {dropped} log lines dropped: stderr did not keep up"
            );
        }
        let _ = stderr.write_all(&line);
        QUEUED_BYTES.fetch_sub(line.len(), Ordering::Relaxed);
        WRITING.store(false, Ordering::Release);
    }
}

/// Waits until the lines queued so far are written, for at most `limit`: before the
/// process exits, so that its last lines (why it stopped) are not lost.
pub fn drain(limit: Duration) {
    let Some(queued) = QUEUED.get() else {
        return;
    };
    let until = Instant::now() + limit;
    while (!queued.is_empty() || WRITING.load(Ordering::Acquire)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
}
