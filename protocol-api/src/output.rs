//! Writing to a non-blocking socket or pipe: the one "write until it would block" loop the
//! daemon and readiness plugins share, and the bytes still owed when it blocked.
//!
//! A write that takes less than offered means the socket (or pipe) is full: the loop stops
//! there rather than spend a system call on `WouldBlock`, and the next writable event says
//! when to go on. That is also the daemon's rule for the readiness it tells plugins.

use std::io::{self, IoSlice, Write};

/// What one round of writing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes the writer took.
    pub bytes: usize,
    /// It took less than offered (full) or said `WouldBlock`: wait for it to be writable.
    pub blocked: bool,
}

/// Writes `bytes` until all are taken or the writer is full. `Interrupted` is retried; a
/// writer that takes 0 bytes of a non-empty buffer is an error (`WriteZero`).
pub fn write_until_blocked(to: &mut impl Write, bytes: &[u8]) -> io::Result<Written> {
    write_parts_until_blocked(to, &[bytes])
}

/// As [`write_until_blocked`], for bytes in several parts (a frame header and its payload,
/// say), gathered into vectored writes so that none is copied. The writer's
/// `write_vectored` must gather (sockets and pipes do): std's default writes only the first
/// slice, which would read here as "full".
pub fn write_parts_until_blocked(to: &mut impl Write, parts: &[&[u8]]) -> io::Result<Written> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        let (result, offered) = match parts {
            [one] => (to.write(&one[written..]), total - written),
            _ => {
                // Up to eight parts a call, with no allocation; the loop goes on with the rest.
                let mut slices = [IoSlice::new(&[]); 8];
                let mut count = 0;
                let mut offered = 0;
                for (slot, part) in slices.iter_mut().zip(rest(parts, written)) {
                    *slot = IoSlice::new(part);
                    count += 1;
                    offered += part.len();
                }
                (to.write_vectored(&slices[..count]), offered)
            }
        };
        match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written += n;
                if n < offered {
                    return Ok(Written {
                        bytes: written,
                        blocked: true,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(Written {
                    bytes: written,
                    blocked: true,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Written {
        bytes: written,
        blocked: false,
    })
}

/// The non-empty rest of `parts` after the first `skip` bytes.
pub fn rest<'a, 'p: 'a>(
    parts: &'a [&'p [u8]],
    mut skip: usize,
) -> impl Iterator<Item = &'p [u8]> + 'a {
    parts.iter().filter_map(move |part| {
        if skip >= part.len() {
            skip -= part.len();
            None
        } else {
            let tail = &part[skip..];
            skip = 0;
            Some(tail)
        }
    })
}

/// Bytes written to the TCP socket `socket` that its peer has not acknowledged yet
/// (`SIOCOUTQ`): what the kernel still holds of them. What a peer took since a mark is
/// what was written since, less what this grew by: the kernel's send buffer, which grows
/// for a slow reader, is not the peer's doing.
pub fn unacked(socket: std::os::fd::BorrowedFd<'_>) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int, which `queued` is.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(queued.max(0) as usize)
}

/// Bytes owed to a writer, and how many of them are out. Once everything is out the
/// buffer is emptied; a quiet connection keeps none (or up to a capacity the owner
/// chooses, to spare reallocating on a busy one).
#[derive(Debug, Default)]
pub struct Output {
    bytes: Vec<u8>,
    written: usize,
}

impl Output {
    /// Owes `bytes`.
    pub fn new(bytes: Vec<u8>) -> Output {
        Output { bytes, written: 0 }
    }

    /// Bytes queued and not yet written.
    pub fn owed(&self) -> usize {
        self.bytes.len() - self.written
    }

    /// Nothing is owed.
    pub fn is_done(&self) -> bool {
        self.owed() == 0
    }

    /// Where more is queued, after what is owed.
    pub fn queue(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Bytes of memory it holds: its buffer, what is out of it included.
    pub fn held(&self) -> usize {
        self.bytes.capacity()
    }

    /// Writes what is owed until the writer is full. When everything is out the buffer is
    /// emptied, and freed if its capacity is past `keep` bytes. A large buffer that is
    /// mostly out is cut to what is owed: a reader that takes all but the tail of a 16 MiB
    /// answer, then a byte now and then, held the whole 16 MiB for it (an attacker's
    /// review: 12 MiB a connection). Each byte is moved at most once on average.
    pub fn flush(&mut self, to: &mut impl Write, keep: usize) -> io::Result<Written> {
        /// A buffer is cut once this much of it is out, and half of it or more.
        const CUT_FROM: usize = 1024 * 1024;
        let written = write_until_blocked(to, &self.bytes[self.written..])?;
        self.written += written.bytes;
        if self.written == self.bytes.len() {
            self.written = 0;
            if self.bytes.capacity() > keep {
                self.bytes = Vec::new();
            } else {
                self.bytes.clear();
            }
        } else if self.written >= CUT_FROM && self.written >= self.bytes.capacity() / 2 {
            self.bytes.drain(..self.written);
            self.bytes.shrink_to_fit();
            self.written = 0;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `room` bytes in all, `per_call` per write; then `WouldBlock`.
    struct Socket {
        taken: Vec<u8>,
        room: usize,
        per_call: usize,
        calls: usize,
    }

    impl Socket {
        fn new(room: usize, per_call: usize) -> Socket {
            Socket {
                taken: Vec::new(),
                room,
                per_call,
                calls: 0,
            }
        }
    }

    impl Write for Socket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.room).min(self.per_call - n);
                self.taken.extend_from_slice(&buf[..take]);
                self.room -= take;
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_short_write_means_full_and_costs_no_further_call() {
        let mut socket = Socket::new(10, usize::MAX);
        let written = write_until_blocked(&mut socket, b"0123456789abcdef").unwrap();
        assert_eq!(
            written,
            Written {
                bytes: 10,
                blocked: true
            }
        );
        assert_eq!(
            socket.calls, 1,
            "no write spent on WouldBlock after a short one"
        );
    }

    #[test]
    fn parts_go_out_in_order_across_writes_that_take_whole_parts_or_pieces() {
        let parts: [&[u8]; 3] = [b"ab", b"", b"cdefg"];
        for room in 0..=8 {
            let mut socket = Socket::new(room, usize::MAX);
            let written = write_parts_until_blocked(&mut socket, &parts).unwrap();
            assert_eq!(written.bytes, room.min(7));
            assert_eq!(written.blocked, room < 7);
            assert_eq!(socket.taken, &b"abcdefg"[..room.min(7)]);
            let left: Vec<u8> = rest(&parts, written.bytes).flatten().copied().collect();
            assert_eq!(left, &b"abcdefg"[room.min(7)..]);
        }
    }

    #[test]
    fn output_owes_what_was_not_taken_and_frees_its_buffer_when_done() {
        let mut output = Output::new(b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec());
        let mut socket = Socket::new(10, usize::MAX);
        assert!(output.flush(&mut socket, 0).unwrap().blocked);
        assert_eq!(output.owed(), 26);
        output.queue().extend_from_slice(b"more");
        socket.room = 100;
        let written = output.flush(&mut socket, 0).unwrap();
        assert_eq!(
            written,
            Written {
                bytes: 30,
                blocked: false
            }
        );
        assert!(output.is_done());
        assert_eq!(
            socket.taken,
            b"HTTP/1.1 101 Switching Protocols\r\n\r\nmore"
        );
        assert_eq!(output.queue().capacity(), 0);

        let mut kept = Output::new(Vec::with_capacity(64));
        kept.queue().extend_from_slice(b"x");
        kept.flush(&mut socket, 64).unwrap();
        assert_eq!(kept.queue().capacity(), 64, "kept up to `keep`");
    }

    /// An attacker's review: a reader that takes all but the tail of a large answer kept
    /// the whole buffer held for that tail. Once a mebibyte and half of it are out, the
    /// buffer is cut to what is owed, and what is owed still goes out in order.
    #[test]
    fn a_large_buffer_mostly_out_holds_only_what_is_owed() {
        let answer: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut output = Output::new(answer.clone());
        let mut socket = Socket::new(3_500_000, usize::MAX);
        assert!(output.flush(&mut socket, 0).unwrap().blocked);
        assert_eq!(output.owed(), 500_000);
        assert!(
            output.held() < 600_000,
            "holds {} for 500,000 owed",
            output.held()
        );
        socket.room = 300_000;
        output.flush(&mut socket, 0).unwrap();
        assert_eq!(output.owed(), 200_000);
        assert_eq!(
            output.held(),
            500_000,
            "under a mebibyte out: not cut again"
        );
        socket.room = usize::MAX;
        assert!(!output.flush(&mut socket, 0).unwrap().blocked);
        assert!(socket.taken == answer, "every byte, in order");
        assert_eq!(output.held(), 0);
    }

    #[test]
    fn more_parts_than_one_call_gathers_go_out_whole_when_there_is_room() {
        let parts: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 3]).collect();
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let mut socket = Socket::new(usize::MAX, usize::MAX);
        let written = write_parts_until_blocked(&mut socket, &parts).unwrap();
        assert_eq!(
            written,
            Written {
                bytes: 60,
                blocked: false
            },
            "a full gather of the first eight parts is not a full socket"
        );
        assert_eq!(socket.calls, 3);
        assert_eq!(socket.taken, parts.concat());
    }

    #[test]
    fn a_writer_that_takes_nothing_is_an_error() {
        let mut socket = Socket::new(5, 0);
        let error = write_until_blocked(&mut socket, b"x").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WriteZero);
    }
}
