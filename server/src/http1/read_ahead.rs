//! Static files' bytes that are not in the page cache are read from the disk here, on
//! reader threads, never on an event loop: a `sendfile` of pages the kernel must first read
//! waits for the disk, and every other connection of that loop with it (a cold file on a
//! slow disk, or many cold ranges asked by one client, would stall thousands of
//! WebSockets). nginx has the same choice as `aio threads`.
//!
//! Before each send the connection asks the kernel whether the next part is cached
//! ([`crate::sys::in_page_cache`]); when it is not, the part is read here (sent to
//! `/dev/null`, which copies nothing: the point is the page cache), the loop is told, and
//! the send goes on from the cache. One read at a time per connection, clients served in
//! turn; [`READERS`] threads in all, started when first needed. A disk that hangs holds
//! those threads, not the loops: the connections waiting on it meet their write time-out
//! as before.

use crate::daemon::clients::ClientKey;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

/// Reader threads: reads a disk serves at once, enough to keep a device's queue busy
/// without a thread per waiting connection.
const READERS: usize = 4;
/// A reader's stack: it calls `pread` and sends a message.
const STACK_BYTES: usize = 64 * 1024;

/// A part of a file to bring into the page cache. The file is its connection's: a
/// connection closed while its read waits closes the file then, not when a reader comes
/// to the read (on a hung disk, an address's connections closed by their write time-out
/// left 200 open files a round behind them, 1,601 after eight, a review measured).
pub struct ReadAhead {
    pub file: Weak<File>,
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

/// The reads waiting, taken in turn by client: one client's hundred cold requests make
/// another's one read wait for one of theirs, not for all of them (a FIFO made it wait
/// behind all, up to its write time-out on a slow disk).
#[derive(Default)]
struct Queue {
    by_client: HashMap<ClientKey, Waiting>,
    /// Clients with reads waiting, each once, in the order they are served.
    turns: VecDeque<ClientKey>,
}

/// One client's reads waiting.
struct Waiting {
    jobs: VecDeque<Job>,
    /// When this many wait, those of connections closed since are dropped: a client's
    /// queue holds about as many reads as it has connections waiting, however many it
    /// opened and closed while a disk hung (each drop looks at twice as many as the last).
    shed_at: usize,
}

/// Reads of one client waiting before the first shedding of closed connections' reads.
const SHED_FROM: usize = 64;

impl Queue {
    fn push(&mut self, client: ClientKey, job: Job) {
        let waiting = self.by_client.entry(client).or_insert_with(|| Waiting {
            jobs: VecDeque::new(),
            shed_at: SHED_FROM,
        });
        if waiting.jobs.is_empty() {
            self.turns.push_back(client);
        }
        waiting.jobs.push_back(job);
        if waiting.jobs.len() >= waiting.shed_at {
            waiting.jobs.retain(|job| job.read.file.strong_count() > 0);
            waiting.shed_at = (2 * waiting.jobs.len()).max(SHED_FROM);
        }
    }

    /// The next client's first read; that client goes to the back of the turns.
    fn pop(&mut self) -> Option<Job> {
        let client = self.turns.pop_front()?;
        let waiting = self.by_client.get_mut(&client)?;
        let job = waiting.jobs.pop_front();
        if waiting.jobs.is_empty() {
            self.by_client.remove(&client);
        } else {
            self.turns.push_back(client);
        }
        job
    }
}

struct Readers {
    queue: Mutex<Queue>,
    waiting: Condvar,
}

/// Brings `read` into the page cache off the loop, then calls `done`; `client` takes its
/// turn with the others'. When no reader thread can be started, both come back: the caller
/// sends from the disk as before.
pub fn start(client: ClientKey, read: ReadAhead, done: Done) -> Result<(), (ReadAhead, Done)> {
    static READERS_STARTED: OnceLock<Option<Arc<Readers>>> = OnceLock::new();
    let readers = READERS_STARTED.get_or_init(|| {
        let readers = Arc::new(Readers {
            queue: Mutex::default(),
            waiting: Condvar::new(),
        });
        let started = (0..READERS)
            .filter(|_| spawn_reader(readers.clone()))
            .count();
        (started > 0).then_some(readers)
    });
    let Some(readers) = readers else {
        return Err((read, done));
    };
    lock(&readers.queue).push(client, Job { read, done });
    readers.waiting.notify_one();
    Ok(())
}

/// The queue, even if a reader panicked holding it (its state is whole between calls).
fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

fn spawn_reader(readers: Arc<Readers>) -> bool {
    let spawned = std::thread::Builder::new()
        .name("switchyard-disk".into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let null = File::options().write(true).open("/dev/null").ok();
            let mut buffer = Vec::new();
            loop {
                let Job { read, done } = {
                    let mut queue = lock(&readers.queue);
                    loop {
                        match queue.pop() {
                            Some(job) => break job,
                            None => {
                                queue = (readers.waiting.wait(queue))
                                    .unwrap_or_else(PoisonError::into_inner)
                            }
                        }
                    }
                };
                // Its connection closed meanwhile (and the file with it): nothing to read
                // for, and the others' reads wait less.
                if let Some(file) = read.file.upgrade() {
                    fill_cache(&file, read.offset, read.len, null.as_ref(), &mut buffer);
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
fn fill_cache(file: &File, offset: u64, len: usize, null: Option<&File>, buffer: &mut Vec<u8>) {
    let end = offset + len as u64;
    let mut at = offset;
    while at < end {
        let left = (end - at) as usize;
        let result = match null {
            Some(null) => crate::sys::sendfile(null, file, &mut at, left),
            None => {
                buffer.resize(left, 0);
                let result = file.read_at(buffer, at);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tag: u64, file: &Arc<File>) -> Job {
        Job {
            read: ReadAhead {
                file: Arc::downgrade(file),
                offset: tag,
                len: 1,
            },
            done: Box::new(|| {}),
        }
    }

    fn order(queue: &mut Queue) -> Vec<u64> {
        std::iter::from_fn(|| queue.pop().map(|job| job.read.offset)).collect()
    }

    #[test]
    fn clients_take_turns_however_many_reads_one_has_waiting() {
        let file = Arc::new(File::open("/dev/null").unwrap());
        let (greedy, other, third) = (
            ClientKey::of("192.0.2.1".parse().unwrap()),
            ClientKey::of("192.0.2.2".parse().unwrap()),
            ClientKey::of("2001:db8::1".parse().unwrap()),
        );
        let mut queue = Queue::default();
        for tag in 0..50 {
            queue.push(greedy, job(tag, &file));
        }
        queue.push(other, job(1000, &file));
        queue.push(third, job(2000, &file));
        queue.push(third, job(2001, &file));
        let order = order(&mut queue);
        assert_eq!(order[..6], [0, 1000, 2000, 1, 2001, 2]);
        assert_eq!(order[6..], (3..50).collect::<Vec<_>>()[..]);
        assert!(queue.by_client.is_empty() && queue.turns.is_empty());
    }

    #[test]
    fn reads_of_connections_closed_meanwhile_are_shed_and_hold_no_file() {
        let client = ClientKey::of("192.0.2.1".parse().unwrap());
        let live = Arc::new(File::open("/dev/null").unwrap());
        let mut queue = Queue::default();
        for tag in 0..10_000 {
            let file = match tag % 1000 {
                0 => live.clone(),
                _ => Arc::new(File::open("/dev/null").unwrap()), // closed when the loop ends
            };
            queue.push(client, job(tag, &file));
            let waiting = queue.by_client[&client].jobs.len();
            assert!(waiting <= 2 * SHED_FROM, "{waiting} reads wait after {tag}");
        }
        let left = order(&mut queue);
        assert!(left.iter().all(|tag| tag % 1000 == 0 || *tag > 9_900));
        assert_eq!(
            (left.iter().filter(|tag| *tag % 1000 == 0).count()),
            10,
            "the live connections' reads are all kept: {left:?}"
        );
    }
}
