//! The kernel's share of a connection's output: how much of what we wrote it may hold
//! unsent for a peer that does not read.
//!
//! A socket's send buffer grows with use (`net.ipv4.tcp_wmem`, 4 MiB here), and the kernel
//! takes writes until it is full whatever our own output limits say: a client that sends
//! and never reads had the kernel hold megabytes of answers in each daemon socket, its
//! connections of one address this host's whole TCP memory (`tcp_mem`: every other
//! connection then slows), though every limit of ours held. So every
//! [`KERNEL_UNSENT_LIMIT`] bytes written the kernel is asked how many of ours wait unsent
//! behind the peer's receive window, (all but) shut because it does not read
//! ([`unsent_behind_window`]: bytes in flight, and bytes that wait for the
//! congestion window of a peer that reads, are not counted, so a bulk transfer to a fast
//! reader never meets it); past the limit, the socket's low-water mark is set to half of
//! it (`TCP_NOTSENT_LOWAT`): the kernel refuses writes (`WouldBlock`) while that many wait
//! unsent, and reports the socket writable once fewer than half of the mark (a quarter of
//! the limit) do. The writer waits for that writable event, as for any full socket, and
//! the mark is taken off again. One system call for each 64 KiB written.
//!
//! The daemon keeps one for each connection it writes to; a plugin that writes to the
//! socket itself (a tunnel's `splice`) keeps its own.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most bytes of our output the kernel may hold unsent before the writer waits for the
/// peer to take some: about what one write adds to it at most past that.
pub const KERNEL_UNSENT_LIMIT: usize = 64 * 1024;

/// Unsent bytes not counted while the peer's window is open: the kernel fills its send
/// buffer faster than a window closes, so a client that read fast and then stopped has
/// the buffer full (4 MiB) before its window shows it; this much is what it may leave.
pub const OPEN_WINDOW_ALLOWANCE: usize = 1024 * 1024 - KERNEL_UNSENT_LIMIT;

/// What a socket's kernel can be asked: a socket's descriptor has it ([`BorrowedFd`]).
pub trait KernelQueue {
    /// Bytes written that the kernel has not sent yet because the peer's window is (all
    /// but) shut; `None` where it cannot say.
    fn unsent(&self) -> Option<usize>;

    /// Has the socket report writable only while fewer than `bytes` wait unsent (`None`:
    /// as the system has it again); true when it is writable now (no event will come then).
    fn report_writable_below(&mut self, bytes: Option<u32>) -> bool;
}

impl KernelQueue for BorrowedFd<'_> {
    fn unsent(&self) -> Option<usize> {
        unsent_behind_window(*self).ok()
    }

    fn report_writable_below(&mut self, bytes: Option<u32>) -> bool {
        report_writable_below(*self, bytes.unwrap_or(0)).unwrap_or(true)
    }
}

/// Bytes written to the TCP socket `socket` that the kernel holds unsent, as they count
/// against [`KERNEL_UNSENT_LIMIT`]: all of them while the peer's receive window is (all
/// but) shut, because it does not read; past [`OPEN_WINDOW_ALLOWANCE`] while it is open,
/// for a reader's bytes also wait for the congestion window, which a bulk transfer fills
/// (a 64 KiB bound cost the tunnel's bulk transfers a quarter of their speed). From one
/// `TCP_INFO` (`tcpi_notsent_bytes`, `tcpi_snd_wnd`; a kernel that does not fill in the
/// window has it read as shut).
pub fn unsent_behind_window(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let info = tcp_info(socket)?;
    let unsent = info.tcpi_notsent_bytes as usize;
    match info.tcpi_snd_wnd as usize >= KERNEL_UNSENT_LIMIT {
        true => Ok(unsent.saturating_sub(OPEN_WINDOW_ALLOWANCE)),
        false => Ok(unsent),
    }
}

/// The kernel's `TCP_INFO` of TCP socket `socket`: fields a kernel older than the `libc`
/// crate's struct does not fill in read 0.
pub fn tcp_info(socket: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid descriptor, and an out-buffer of `len` bytes the kernel fills in part
    // or whole; zeroed first, so fields it leaves are 0.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised plain integers, partly filled by the kernel.
    Ok(unsafe { info.assume_init() })
}

/// Sets `TCP_NOTSENT_LOWAT` on `socket` to `bytes` (0: as the system's
/// `net.ipv4.tcp_notsent_lowat` has it): the kernel refuses writes while that many wait
/// unsent, and reports the socket writable once fewer than half of them do. Then polls it
/// once: the kernel wakes a waiter (an edge-triggered epoll's writable event) only for a
/// socket a poll or a write found full, so without the poll the event would never come.
/// True when it is writable now.
pub fn report_writable_below(socket: BorrowedFd<'_>, bytes: u32) -> io::Result<bool> {
    // SAFETY: an int-sized option value for a TCP socket option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&bytes as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd, a zero time-out.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    Ok(ready > 0 && poll.revents & libc::POLLOUT != 0)
}

/// One connection's count of bytes written since the kernel was last asked, and whether
/// it holds too many of them (8 bytes a connection).
#[derive(Debug, Default)]
pub struct KernelShare {
    unlooked: u32,
    full: bool,
}

impl KernelShare {
    /// Counts `written` bytes; once [`KERNEL_UNSENT_LIMIT`] of them were written since the
    /// last look, asks the kernel. True when the kernel has just been found holding more
    /// than the limit: the socket will report writable once it holds less than a quarter
    /// of it, and the writer waits for that ([`Self::writable`]). A look that finds the
    /// peer took them down below half takes the mark off (a blocking writer gets no event
    /// to do it).
    pub fn wrote(&mut self, written: usize, queue: &mut impl KernelQueue) -> bool {
        self.count(written);
        if (self.unlooked as usize) < KERNEL_UNSENT_LIMIT {
            return false;
        }
        self.unlooked = 0;
        const HALF: usize = KERNEL_UNSENT_LIMIT / 2;
        match queue.unsent() {
            Some(unsent) if unsent > KERNEL_UNSENT_LIMIT && !self.full => {
                // Taken down below half already if writable now: on as before.
                self.full = !queue.report_writable_below(Some(HALF as u32));
                if !self.full {
                    queue.report_writable_below(None);
                }
                self.full
            }
            Some(unsent) if unsent < HALF && self.full => {
                self.writable(queue);
                false
            }
            _ => false,
        }
    }

    /// Counts `written` bytes without asking the kernel now (the next look counts them).
    pub fn count(&mut self, written: usize) {
        self.unlooked = self
            .unlooked
            .saturating_add(written.min(u32::MAX as usize) as u32);
    }

    /// The kernel held more than the limit when last asked, and the socket has not
    /// reported writable since.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// The socket reported writable (or the connection goes to a writer that must not
    /// inherit the mark): the mark is taken off. True if it was on.
    pub fn writable(&mut self, queue: &mut impl KernelQueue) -> bool {
        let was = std::mem::take(&mut self.full);
        if was {
            queue.report_writable_below(None);
        }
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel queue that holds what it is told, and is writable below its mark.
    struct Queue {
        unsent: usize,
        mark: Option<u32>,
    }

    impl KernelQueue for Queue {
        fn unsent(&self) -> Option<usize> {
            Some(self.unsent)
        }

        fn report_writable_below(&mut self, bytes: Option<u32>) -> bool {
            self.mark = bytes;
            bytes.is_none_or(|below| self.unsent < below as usize)
        }
    }

    #[test]
    fn a_look_every_limit_of_bytes_finds_the_kernel_full_and_the_event_ends_it() {
        let mut queue = Queue {
            unsent: 200_000,
            mark: None,
        };
        let mut share = KernelShare::default();
        // Not asked before the limit's worth was written.
        assert!(!share.wrote(KERNEL_UNSENT_LIMIT - 1, &mut queue));
        assert_eq!(queue.mark, None);
        assert!(share.wrote(1, &mut queue));
        assert!(share.is_full());
        assert_eq!(queue.mark, Some(KERNEL_UNSENT_LIMIT as u32 / 2));
        // Still full at the next look: not news.
        assert!(!share.wrote(KERNEL_UNSENT_LIMIT, &mut queue));
        assert!(share.is_full());
        // The writable event takes the mark off.
        queue.unsent = 1_000;
        assert!(share.writable(&mut queue));
        assert_eq!(queue.mark, None);
        assert!(!share.is_full());
        assert!(!share.writable(&mut queue));
    }

    #[test]
    fn a_reading_peer_never_meets_the_mark() {
        let mut queue = Queue {
            unsent: KERNEL_UNSENT_LIMIT,
            mark: None,
        };
        let mut share = KernelShare::default();
        for _ in 0..100 {
            assert!(!share.wrote(16 * 1024, &mut queue));
        }
        assert_eq!(queue.mark, None);
        assert!(!share.is_full());
    }

    #[test]
    fn a_look_that_finds_the_queue_taken_down_takes_the_mark_off() {
        let mut queue = Queue {
            unsent: 1 << 20,
            mark: None,
        };
        let mut share = KernelShare::default();
        assert!(share.wrote(KERNEL_UNSENT_LIMIT, &mut queue));
        // A blocking writer's next write waited in the kernel until below the mark.
        queue.unsent = 10_000;
        assert!(!share.wrote(KERNEL_UNSENT_LIMIT, &mut queue));
        assert!(!share.is_full());
        assert_eq!(queue.mark, None);
    }

    #[test]
    fn taken_down_between_the_look_and_the_mark_is_not_full() {
        // Over the limit when asked, writable when the mark is set: no event would come.
        struct Racing;
        impl KernelQueue for Racing {
            fn unsent(&self) -> Option<usize> {
                Some(1 << 20)
            }
            fn report_writable_below(&mut self, _: Option<u32>) -> bool {
                true
            }
        }
        let mut share = KernelShare::default();
        assert!(!share.wrote(KERNEL_UNSENT_LIMIT, &mut Racing));
        assert!(!share.is_full());
    }
}
