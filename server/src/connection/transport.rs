//! The byte stream under a connection: what the HTTP/1.1 connection reads requests from and
//! writes answers to. A TCP socket today; a TLS session over one is the next, and unit tests
//! script one byte by byte.

use std::io::{self, Read, Write};
use std::net::Shutdown;

/// A non-blocking, ordered byte stream in both directions: reads and writes return
/// `WouldBlock` when they cannot go on, and a read of 0 is the peer's end. A write that
/// takes less than offered means the stream is full until its next writable event, and a
/// read that returns less than asked means it is drained until its next readable event:
/// the connection stops there rather than spend a call on `WouldBlock`. (A TLS stream must
/// keep that promise about the socket under it.)
pub trait Transport: Read + Write {
    /// Ends our direction (after the last answer), keeping the other open to drain.
    fn shutdown_write(&mut self) -> io::Result<()>;
}

impl Transport for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}
