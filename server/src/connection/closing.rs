//! A TLS connection whose plugin is done while the peer has not yet taken all of its last
//! ciphertext: on a plain socket the kernel would send what was written after the close;
//! under TLS the last records (and `close_notify`) are still ours to write. They go out on
//! writable events, then the FIN; a peer that takes nothing loses them at the deadline.

use super::transport::{Transport, Wire};
use crate::daemon::state::Ticket;
use std::time::Instant;

pub struct Closing {
    pub wire: Wire,
    /// Still an open connection for the limits, until its socket closes.
    _ticket: Ticket,
    pub deadline: Instant,
}

impl Closing {
    pub fn new(wire: Wire, ticket: Ticket, deadline: Instant) -> Closing {
        Closing {
            wire,
            _ticket: ticket,
            deadline,
        }
    }

    /// A writable event: true when everything is out (or cannot be), so it may close.
    pub fn on_writable(&mut self) -> bool {
        self.wire.flush_pending().unwrap_or(true)
    }
}
