//! Bytes owed to a peer, written as its socket takes them: the one "write until
//! `WouldBlock`" loop of the daemon's connections (HTTP answers, and the `101` ahead of a
//! readiness plugin).

use std::io::{self, Write};

/// What is owed, and how much of it is out. The buffer is freed once everything is out, so
/// a quiet connection holds none.
#[derive(Debug, Default)]
pub struct Output {
    bytes: Vec<u8>,
    written: usize,
}

impl Output {
    /// Owes `bytes` (the `101` of a switch).
    pub fn new(bytes: Vec<u8>) -> Output {
        Output { bytes, written: 0 }
    }

    /// Bytes queued and not yet written.
    pub fn owed(&self) -> usize {
        self.bytes.len() - self.written
    }

    pub fn is_done(&self) -> bool {
        self.owed() == 0
    }

    /// Where more is queued (after what is owed).
    pub fn queue(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Writes what is owed while `writable`: a short write or `WouldBlock` clears it (the
    /// socket is full; its next writable event sets it again). Returns the bytes written.
    pub fn flush(&mut self, to: &mut impl Write, writable: &mut bool) -> io::Result<usize> {
        let mut total = 0;
        while *writable && self.written < self.bytes.len() {
            match to.write(&self.bytes[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    *writable = self.written + n == self.bytes.len();
                    self.written += n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.written == self.bytes.len() {
            *self = Output::default();
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `room` bytes, then `WouldBlock`.
    struct Socket {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Socket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_socket_keeps_the_rest_owed_and_clears_writable() {
        let mut output = Output::new(b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec());
        let mut socket = Socket {
            taken: Vec::new(),
            room: 10,
        };
        let mut writable = true;
        assert_eq!(output.flush(&mut socket, &mut writable).unwrap(), 10);
        assert!(!writable, "a short write means the socket is full");
        assert_eq!(output.owed(), 26);
        // Nothing is tried until the socket says it takes more.
        assert_eq!(output.flush(&mut socket, &mut writable).unwrap(), 0);
        socket.room = 100;
        writable = true;
        output.queue().extend_from_slice(b"more");
        assert_eq!(output.flush(&mut socket, &mut writable).unwrap(), 30);
        assert!(output.is_done());
        assert_eq!(
            socket.taken,
            b"HTTP/1.1 101 Switching Protocols\r\n\r\nmore"
        );
        assert_eq!(
            output.queue().capacity(),
            0,
            "no buffer held once all is out"
        );
    }

    #[test]
    fn a_socket_that_takes_nothing_is_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut writable = true;
        let err = Output::new(b"x".to_vec()).flush(&mut Closed, &mut writable);
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::WriteZero);
    }
}
