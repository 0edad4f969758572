//! A TLS connection whose plugin is done while the peer has not yet taken all of its last
//! ciphertext: on a plain socket the kernel would send what was written after the close;
//! under TLS the last records (and `close_notify`) are still ours to write. They go out on
//! writable events, then the FIN; then, as an HTTP connection lingers (RFC 9112 §9.6),
//! what the peer still sends is read and dropped until its end, so that closing with
//! unread bytes does not reset the connection and discard what it has not yet taken. A
//! peer that takes nothing, or never ends, loses the rest at the deadline.

use super::transport::{Transport, Wire};
use crate::daemon::state::Ticket;
use std::io::Read;
use std::time::Instant;

pub struct Closing {
    pub wire: Wire,
    /// Still an open connection for the limits, until its socket closes.
    _ticket: Ticket,
    pub deadline: Instant,
    /// Everything is out, the FIN too: only the peer's end is awaited.
    all_out: bool,
}

impl Closing {
    pub fn new(wire: Wire, ticket: Ticket, deadline: Instant) -> Closing {
        Closing {
            wire,
            _ticket: ticket,
            deadline,
            all_out: false,
        }
    }

    /// An event on its socket: true when it may close (the peer ended, or failed).
    pub fn on_event(&mut self, readable: bool, writable: bool, closed: bool) -> bool {
        if writable && !self.all_out {
            match self.wire.flush_pending() {
                Ok(all_out) => self.all_out = all_out,
                Err(_) => return true,
            }
        }
        if readable || closed {
            // Dropped unread (ciphertext of a session whose plugin is gone).
            let mut sink = [0u8; 4096];
            loop {
                match (&self.wire.socket).read(&mut sink) {
                    Ok(0) => return true,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return true,
                }
            }
        }
        false
    }
}
