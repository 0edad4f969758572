//! Moving bytes one way between two sockets until the source ends: `splice(2)` through a
//! pipe on Linux, so the bytes never enter user space; a buffered copy elsewhere, or if
//! the kernel refuses to splice these descriptors.
//!
//! All of the plugin's `unsafe` is here.

use std::io::{self, ErrorKind, Read, Write};
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How one direction ended.
#[derive(Debug)]
pub enum Ended {
    /// The source finished sending (FIN).
    Eof,
    /// The source reset the connection.
    SourceReset,
    /// The destination went away (reset, or closed while we wrote).
    DestinationGone,
    /// No bytes either way for the idle time.
    Idle,
    Failed(io::Error),
}

/// Activity shared by both directions, for the idle time-out.
pub struct Activity {
    start: Instant,
    last_millis: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_millis
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A socket the host owns (the client's, lent by `Connection`) seen as a `TcpStream` for
/// std's API, for as long as the borrow lasts; never closed by us.
pub struct BorrowedStream<'a> {
    stream: ManuallyDrop<TcpStream>,
    _borrow: PhantomData<BorrowedFd<'a>>,
}

impl std::ops::Deref for BorrowedStream<'_> {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

/// Views a lent socket as a `TcpStream` that cannot outlive the loan.
pub fn borrow_socket(fd: BorrowedFd<'_>) -> BorrowedStream<'_> {
    // SAFETY: `BorrowedFd` guarantees the descriptor stays open for its lifetime, which the
    // returned view cannot outlive; `ManuallyDrop` keeps us from closing it, and only shared
    // references to the stream are ever given out.
    let stream = unsafe { TcpStream::from_raw_fd(fd.as_raw_fd()) };
    BorrowedStream {
        stream: ManuallyDrop::new(stream),
        _borrow: PhantomData,
    }
}

/// Waits until the daemon shuts `socket` both ways (which it does when the grace period of
/// a stop ends: `POLLHUP`), or `done` is set; looks every 100 ms.
pub fn wait_for_hangup(socket: &TcpStream, done: &AtomicBool) {
    while !done.load(Ordering::Acquire) {
        let mut poll = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: 0, // POLLHUP and POLLERR are always reported
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, 100) };
        if ready > 0 && poll.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
    }
}

/// Makes the next close of `socket` send a reset instead of a FIN (SO_LINGER with time 0).
pub fn reset_on_close(socket: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn classify(error: io::Error, reading: bool) -> Ended {
    match error.kind() {
        ErrorKind::ConnectionReset if reading => Ended::SourceReset,
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            Ended::DestinationGone
        }
        _ => Ended::Failed(error),
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Copies from `from` to `to` until `from` ends; returns how, and the bytes moved.
pub fn pump(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    idle: Option<Duration>,
) -> (Ended, u64) {
    let mut moved = 0;
    #[cfg(target_os = "linux")]
    {
        match splice::Pipe::new() {
            Ok(pipe) => return pipe.pump(from, to, activity, idle, &mut moved),
            Err(e) => log::debug!("no pipe for splice ({e}); copying through a buffer"),
        }
    }
    let ended = copy(from, to, activity, idle, &mut moved);
    (ended, moved)
}

fn copy(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    idle: Option<Duration>,
    moved: &mut u64,
) -> Ended {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match (&mut &*from).read(&mut buffer) {
            Ok(0) => return Ended::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => match idle {
                Some(idle) if activity.quiet_for() >= idle => return Ended::Idle,
                _ => continue,
            },
            Err(e) => return classify(e, true),
        };
        activity.touch();
        if let Err(e) = (&mut &*to).write_all(&buffer[..n]) {
            return classify(e, false);
        }
        *moved += n as u64;
    }
}

#[cfg(target_os = "linux")]
mod splice {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    /// Most bytes asked of one splice; the pipe is grown to match where the kernel allows.
    const CHUNK: usize = 1 << 20;

    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    fn check(result: libc::ssize_t) -> io::Result<usize> {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result as usize)
        }
    }

    /// Splices up to `len` bytes. `flags` is `SPLICE_F_MOVE`, plus `SPLICE_F_MORE` only
    /// into the pipe: on the way out to a socket it corks a small write until the kernel's
    /// cork timer (about 200 ms), which an interactive protocol feels on every exchange.
    fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> io::Result<usize> {
        loop {
            // SAFETY: plain descriptors and null offsets (sockets and pipes have none).
            let result = unsafe {
                libc::splice(
                    from,
                    std::ptr::null_mut(),
                    to,
                    std::ptr::null_mut(),
                    len,
                    flags,
                )
            };
            match check(result) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    impl Pipe {
        pub fn new() -> io::Result<Pipe> {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors pipe2 writes.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 just opened both; each gets one owner.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // SAFETY: F_SETPIPE_SZ on our own pipe; failure (a lower limit) only costs speed.
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
            Ok(Pipe { read, write })
        }

        pub fn pump(
            &self,
            from: &TcpStream,
            to: &TcpStream,
            activity: &Activity,
            idle: Option<Duration>,
            moved: &mut u64,
        ) -> (Ended, u64) {
            loop {
                let into_pipe = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE;
                let n = match splice(from.as_raw_fd(), self.write.as_raw_fd(), CHUNK, into_pipe) {
                    Ok(0) => return (Ended::Eof, *moved),
                    Ok(n) => n,
                    Err(e) if is_timeout(&e) => match idle {
                        Some(idle) if activity.quiet_for() >= idle => return (Ended::Idle, *moved),
                        _ => continue,
                    },
                    // Descriptors splice cannot take: fall back, nothing was moved by this call.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        return (copy(from, to, activity, idle, moved), *moved);
                    }
                    Err(e) => return (classify(e, true), *moved),
                };
                activity.touch();
                let mut left = n;
                while left > 0 {
                    match splice(
                        self.read.as_raw_fd(),
                        to.as_raw_fd(),
                        left,
                        libc::SPLICE_F_MOVE,
                    ) {
                        Ok(0) => return (Ended::DestinationGone, *moved),
                        Ok(sent) => {
                            left -= sent;
                            *moved += sent as u64;
                        }
                        Err(e) => return (classify(e, false), *moved),
                    }
                }
            }
        }
    }
}
