//! Static files' bytes that are not in the page cache are read from the disk here, on
//! reader threads, never on an event loop: a `sendfile` of pages the kernel must first read
//! waits for the disk, and every other connection of that loop with it (a cold file on a
//! slow disk, or many cold ranges asked by one client, would stall thousands of
//! WebSockets). nginx has the same choice as `aio threads`.
//!
//! Before each send the connection asks the kernel whether the next part is cached
//! ([`crate::sys::in_page_cache`]); when it is not, the part is read here (sent to
//! `/dev/null`, which copies nothing: the point is the page cache), the loop is told, and
//! the send goes on from the cache. One read at a time per connection; [`READERS`] threads in all, started when
//! first needed. A disk that hangs holds those threads, not the loops: the connections
//! waiting on it meet their write time-out as before.

use crossbeam_channel::{Receiver, Sender};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};

/// Reader threads: reads a disk serves at once, enough to keep a device's queue busy
/// without a thread per waiting connection.
const READERS: usize = 4;
/// A reader's stack: it calls `pread` and sends a message.
const STACK_BYTES: usize = 64 * 1024;

/// A part of a file to bring into the page cache.
pub struct ReadAhead {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: usize,
}

/// What a reader does with a read done: tells the connection's loop that the connection
/// may send again. (The loop names it by its slot and id, so a connection closed meanwhile,
/// its slot since taken by another, only makes the loop look.)
pub type Done = Box<dyn FnOnce() + Send>;

struct Job {
    read: ReadAhead,
    done: Done,
}

/// Brings `read` into the page cache off the loop, then calls `done`. When no reader
/// thread can be started, both come back: the caller sends from the disk as before.
pub fn start(read: ReadAhead, done: Done) -> Result<(), (ReadAhead, Done)> {
    static JOBS: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let started = (0..READERS)
            .filter(|_| spawn_reader(receiver.clone()))
            .count();
        (started > 0).then_some(sender)
    });
    match jobs {
        Some(jobs) => jobs.send(Job { read, done }).map_err(|e| {
            let Job { read, done } = e.into_inner();
            (read, done)
        }),
        None => Err((read, done)),
    }
}

fn spawn_reader(jobs: Receiver<Job>) -> bool {
    let spawned = std::thread::Builder::new()
        .name("switchyard-disk".into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let null = File::options().write(true).open("/dev/null").ok();
            let mut buffer = Vec::new();
            for Job { read, done } in jobs.iter() {
                // Its connection closed meanwhile (nothing else holds the file): nothing
                // to read for, and the others' reads wait less.
                if Arc::strong_count(&read.file) > 1 {
                    fill_cache(&read, null.as_ref(), &mut buffer);
                }
                done();
            }
        });
    if let Err(e) = &spawned {
        log::error!("cannot start a thread to read static files from disk: {e}");
    }
    spawned.is_ok()
}

/// Reads the part (to its end, or the file's if it shrank) into the page cache; an error
/// is for the send to find again and report. Sent to `/dev/null` with `sendfile`, which
/// reads the pages and copies nothing; where that cannot be opened, read into `buffer`.
fn fill_cache(read: &ReadAhead, null: Option<&File>, buffer: &mut Vec<u8>) {
    let end = read.offset + read.len as u64;
    let mut at = read.offset;
    while at < end {
        let left = (end - at) as usize;
        let result = match null {
            Some(null) => crate::sys::sendfile(null, &read.file, &mut at, left),
            None => {
                buffer.resize(left, 0);
                let result = read.file.read_at(buffer, at);
                if let Ok(n) = result {
                    at += n as u64;
                }
                result
            }
        };
        match result {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("reading a static file ahead of its send: {e}");
                break;
            }
        }
    }
}
