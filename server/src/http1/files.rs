//! Answers a `GET` or `HEAD` for a static file ([`switchyard::files`] decides which): the
//! file is opened when asked, only if it lies under its route's folder once symbolic links
//! are resolved, and answered with its validators, `304` when the client has it, a byte
//! range when asked; its body follows the head from the file itself ([`FileBody`]), by
//! `sendfile` on a plain socket, never read whole into memory.

use super::read_ahead::ReadAhead;
use crate::http::head::Head;
use crate::http::response::Response;
use protocol_api::moment;
use protocol_api::path::RequestPath;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::files::{self, Ranged};

/// What of a file is still to be sent after the head.
#[derive(Debug)]
pub struct FileBody {
    pub file: Arc<File>,
    pub offset: u64,
    pub end: u64,
    /// Bytes up to here were read into the page cache off the loop: sent without asking.
    warm_until: u64,
    disk: Disk,
    /// The file is large enough to ask about ([`ASKED_FROM`]).
    ask: bool,
    /// Looked at once to go whole with its head (`conn::HttpConn::short_body_with_head`).
    pub started: bool,
}

/// Files shorter than this are sent without asking the kernel whether they are cached:
/// the question cost a 4 KiB file's answer 4-5% (one system call of six), and a file this
/// short is one read from the disk at most, like the folder lookups the open does on the
/// loop anyway. (Short parts of a large file are asked about: pipelined one-byte ranges at
/// random offsets of a cold file held a loop 0.7 s for 40 of them, a review found.) But
/// one read each still adds up: a client pipelining 300 cold 15 KB files held both loops
/// 4.6 s on a slow disk (another review), so once such a send is seen to wait for the
/// disk ([`DISK_WAIT`]), every file is asked about for [`ASK_ALL_FOR`].
const ASKED_FROM: usize = 16 * 1024;

/// A send of an unasked file this slow waited for the disk (from the page cache, a send of
/// 16 KiB takes microseconds).
const DISK_WAIT: Duration = Duration::from_millis(1);

/// How long every file is asked about after an unasked one waited for the disk.
const ASK_ALL_FOR: Duration = Duration::from_secs(10);

/// Until when every file is asked about, in nanoseconds past [`moment::epoch`] (0: none).
static ASK_ALL_UNTIL: AtomicU64 = AtomicU64::new(0);

fn nanos(at: Instant) -> u64 {
    at.saturating_duration_since(moment::epoch()).as_nanos() as u64
}

/// Where the next part of a body stands with the disk ([`super::read_ahead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disk {
    /// Nothing asked of it.
    Idle,
    /// This many bytes from `offset` are not in the page cache: to be read off the loop.
    Wanted(usize),
    /// Being read off the loop; nothing is sent meanwhile.
    Reading(usize),
}

impl FileBody {
    fn new(file: File, offset: u64, end: u64, file_len: u64) -> FileBody {
        FileBody {
            file: Arc::new(file),
            offset,
            end,
            warm_until: offset,
            disk: Disk::Idle,
            ask: file_len >= ASKED_FROM as u64
                || nanos(Instant::now()) < ASK_ALL_UNTIL.load(Relaxed),
            started: false,
        }
    }

    /// Whether its parts are asked about before they are sent (else
    /// [`FileBody::sent_unasked`] is told how long each send took).
    pub fn asks(&self) -> bool {
        self.ask
    }

    /// A send of an unasked part took `took`, ending `now`: if it waited for the disk,
    /// every file is asked about for a while.
    pub fn sent_unasked(took: Duration, now: Instant) {
        if took >= DISK_WAIT {
            ASK_ALL_UNTIL.fetch_max(nanos(now + ASK_ALL_FOR), Relaxed);
        }
    }

    pub fn remaining(&self) -> u64 {
        self.end - self.offset
    }

    /// How many of the next `chunk` bytes to send now, all in the page cache as far as
    /// the kernel says; `None` while they are to be read, or being read, off the loop.
    /// A file under [`ASKED_FROM`] is sent without asking.
    pub fn ready(&mut self, chunk: usize) -> Option<usize> {
        if self.disk != Disk::Idle {
            return None;
        }
        if self.offset < self.warm_until {
            return Some(chunk.min((self.warm_until - self.offset) as usize));
        }
        if !self.ask || crate::sys::in_page_cache(&self.file, self.offset, chunk) {
            // Not asked again for this part, whatever a send takes of it.
            self.warm_until = self.offset + chunk as u64;
            return Some(chunk);
        }
        self.disk = Disk::Wanted(chunk);
        None
    }

    /// The read [`FileBody::ready`] found wanted, now under way.
    pub fn read_ahead(&mut self) -> Option<ReadAhead> {
        let Disk::Wanted(len) = self.disk else {
            return None;
        };
        self.disk = Disk::Reading(len);
        Some(ReadAhead {
            file: Arc::downgrade(&self.file),
            offset: self.offset,
            len,
        })
    }

    /// The read under way is done (or could not start): its bytes are sent next, without
    /// asking the kernel again, so the body moves on even if they left the cache since.
    pub fn read_done(&mut self) {
        if let Disk::Reading(len) | Disk::Wanted(len) = self.disk {
            self.warm_until = self.offset + len as u64;
            self.disk = Disk::Idle;
        }
    }
}

/// The answer to a request for `relative` under its route's folder `root`: a response,
/// and for a `200` or `206` to a `GET`, the body to send after it.
pub fn answer(
    root: Option<&File>,
    relative: &Path,
    path: &RequestPath<'_>,
    head: &Head,
    bytes: &[u8],
) -> (Response, Option<FileBody>) {
    let not_found = || Response::error(404, "not found").header("Cache-Control", "no-store");
    let opened = root.and_then(|root| open_beneath(root, relative));
    let Some((file, found, meta)) = opened else {
        let mut response = not_found();
        response.close = false;
        return (response, None);
    };
    // A folder named without its slash: its page's relative links would resolve against
    // the parent, so the client is sent to the folder's own path first, as nginx does.
    if found != relative && !path.path().ends_with('/') {
        // From the normalised path, one leading slash: the target as sent could name
        // another host (`//host/../app`, `http://host/app`).
        let mut location = format!("/{}/", path.path().trim_start_matches('/'));
        if let Some(query) = path.query() {
            location = format!("{location}?{query}");
        }
        let response = Response::new(301, &b""[..]).header("Location", location);
        return (response, None);
    }
    let relative = found;
    let (len, modified) = (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
    let etag = files::etag(modified, len);
    // A field of one value sent on more lines than one is not valid, and ignored; a list
    // (`If-Match`, `If-None-Match`) may come on several lines, read as one joined with
    // commas (RFC 9110 §5.3: a review found a second line's entity-tag not seen).
    let field = |name| {
        let mut lines = head.values(bytes, name);
        match (lines.next(), lines.next()) {
            (Some(value), None) => std::str::from_utf8(value).ok(),
            _ => None,
        }
    };
    // A line that is not UTF-8 stays in it, as what matches no entity-tag (a review:
    // dropping the whole list for it turned an If-Match's 412 into a 200).
    let list = |name| -> Option<String> {
        let lines: Vec<_> = head
            .values(bytes, name)
            .map(String::from_utf8_lossy)
            .collect();
        (!lines.is_empty()).then(|| lines.join(", "))
    };
    let validators = |response: Response| {
        response
            .header("ETag", etag.clone())
            .header("Last-Modified", files::last_modified(modified))
    };
    // RFC 9110 §13.2.2: If-Match, else If-Unmodified-Since; then If-None-Match, else
    // If-Modified-Since; then If-Range.
    if files::precondition_failed(
        list("if-match").as_deref(),
        field("if-unmodified-since"),
        &etag,
        modified,
    ) {
        return (validators(Response::new(412, &b""[..])), None);
    }
    if files::not_modified(
        list("if-none-match").as_deref(),
        field("if-modified-since"),
        &etag,
        modified,
    ) {
        return (validators(Response::new(304, &b""[..])), None);
    }
    // Range is for GET alone (RFC 9110 §14.2): a HEAD is answered as its GET without one.
    let range = field("range").filter(|_| head.method(bytes) == "GET");
    let (status, start, end) = match files::range(range, field("if-range"), &etag, len) {
        Ranged::Whole => (200, 0, len),
        Ranged::Part { start, end } => (206, start, end),
        Ranged::Unsatisfiable => {
            let response =
                Response::new(416, &b""[..]).header("Content-Range", format!("bytes */{len}"));
            return (validators(response), None);
        }
    };
    let mut response = validators(Response::new(status, &b""[..]))
        .header("Content-Type", files::content_type(&relative))
        .header("Accept-Ranges", "bytes")
        .header("X-Content-Type-Options", "nosniff");
    if status == 206 {
        let last = end - 1;
        response = response.header("Content-Range", format!("bytes {start}-{last}/{len}"));
    }
    response.sent_apart = Some(end - start);
    let body =
        (head.method(bytes) != "HEAD" && end > start).then(|| FileBody::new(file, start, end, len));
    (response, body)
}

/// Opens `relative` under the folder `root` (its descriptor) without leaving it
/// ([`crate::sys::open_beneath`]), a folder's `index.html` for a folder; `None` when it is
/// not there, not a regular file, or resolves outside the folder. With the path it was found
/// at and what the opened file says of itself.
fn open_beneath(
    root: &File,
    relative: &Path,
) -> Option<(File, std::path::PathBuf, std::fs::Metadata)> {
    let mut wanted = relative.to_path_buf();
    for _ in 0..2 {
        let file = match crate::sys::open_beneath(root, &wanted) {
            Ok(file) => file,
            Err(e) => {
                if e.raw_os_error() == Some(libc::EXDEV) {
                    log::debug!(
                        "static file {} resolves outside its folder: not served",
                        wanted.display()
                    );
                }
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        if meta.is_dir() {
            wanted.push("index.html"); // no listings
            continue;
        }
        return meta.is_file().then_some((file, wanted, meta));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_are_asked_about_once_one_waited_for_the_disk() {
        let small = || FileBody::new(File::open("/dev/null").unwrap(), 0, 4096, 4096);
        let large = FileBody::new(File::open("/dev/null").unwrap(), 0, 1, 1 << 20);
        assert!(large.asks());
        let now = Instant::now();
        FileBody::sent_unasked(Duration::from_micros(20), now);
        assert!(!small().asks(), "a send from the page cache");
        FileBody::sent_unasked(Duration::from_millis(5), now);
        assert!(small().asks(), "a send that waited for the disk");
        assert!(nanos(now + ASK_ALL_FOR) <= ASK_ALL_UNTIL.load(Relaxed));
    }
}
