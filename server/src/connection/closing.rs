//! A TLS connection whose plugin is done while the peer has not yet taken all of its last
//! ciphertext: on a plain socket the kernel would send what was written after the close;
//! under TLS the last records (and `close_notify`) are still ours to write. They go out on
//! writable events, then the FIN; then, as an HTTP connection lingers (RFC 9112 §9.6),
//! what the peer still sends is read and dropped until its end, so that closing with
//! unread bytes does not reset the connection and discard what it has not yet taken; and
//! once it ended, until it has taken everything (the kernel's queue too). A peer that
//! takes nothing, or never ends, loses the rest at the deadline, with a reset, so that the
//! kernel keeps nothing for it either; one that sends more than [`DROP_LIMIT`] meanwhile
//! is not waiting for the end, and loses it at once.

use super::transport::{Transport, Wire};
use crate::daemon::state::Ticket;
use std::io::Read;
use std::time::Instant;

/// What a closing connection reads and drops at most on one event (an HTTP connection's
/// lingering reads as much in a turn): unbounded, 4 KiB reads of a client sending at
/// 2 GB/s held the event loop for up to 1.3 s a turn, its other connections waiting (an
/// attacker's review). What is left waits until the loop's other connections had their
/// turn ([`Closing::wants_again`]): a client still sending brings no event once our
/// receive buffer is full, and waited for the deadline then.
const DROP_PER_EVENT: usize = protocol_api::sizes::READ_BUDGET;
/// What a closing connection reads and drops at most in all: past it the connection is
/// closed, its unread bytes making the kernel reset it. Well above what a fast upload
/// has in flight when its session ends (625 KB at 100 Mbit/s and 50 ms), so that such a
/// client still gets our last records; a client that sends this much to a session that
/// has ended is not waiting for its end.
pub const DROP_LIMIT: usize = 16 << 20;

pub struct Closing {
    pub wire: Wire,
    /// Still an open connection for the limits, until its socket closes.
    _ticket: Ticket,
    pub deadline: Instant,
    /// Everything is out, the FIN too: only the peer's end is awaited.
    all_out: bool,
    /// Bytes read and dropped so far.
    dropped: usize,
    /// The last event's reading stopped at [`DROP_PER_EVENT`], the socket not drained.
    reading_paused: bool,
    /// The peer's end came: it shut its side (it may still read), so what waits still
    /// goes out, and the connection closes once it is (a flake audit: closing at the
    /// peer's FIN cut off the last 2.5 KB of 150 KB for a client that shut its side and
    /// read on, 3 times in 10, with an 8 KiB send buffer).
    peer_ended: bool,
}

impl Closing {
    pub fn new(wire: Wire, ticket: Ticket, deadline: Instant) -> Closing {
        Closing {
            wire,
            _ticket: ticket,
            deadline,
            all_out: false,
            dropped: 0,
            reading_paused: false,
            peer_ended: false,
        }
    }

    /// An event on its socket: true when it may close (the peer ended and everything is
    /// out, or it failed).
    pub fn on_event(&mut self, readable: bool, writable: bool, closed: bool) -> bool {
        if writable && !self.all_out {
            match self.wire.flush_pending() {
                Ok(all_out) => self.all_out = all_out,
                Err(_) => return true,
            }
        }
        if self.peer_ended {
            return self.all_taken();
        }
        if readable || closed {
            // Dropped unread (ciphertext of a session whose plugin is gone).
            let mut sink = [0u8; 16 * 1024];
            let mut this_event = 0;
            self.reading_paused = false;
            loop {
                if this_event >= DROP_PER_EVENT {
                    self.reading_paused = true;
                    break;
                }
                match (&self.wire.socket).read(&mut sink) {
                    Ok(0) => {
                        self.peer_ended = true;
                        return self.all_taken();
                    }
                    Ok(n) => {
                        this_event += n;
                        self.dropped += n;
                        if self.dropped > DROP_LIMIT {
                            log::debug!(
                                "closing connection: the peer sent over {DROP_LIMIT} bytes \
                                 after its session ended; closed"
                            );
                            return true;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return true,
                }
            }
        }
        false
    }

    /// Everything is out and acknowledged: closing now leaves the kernel nothing to hold
    /// (a review: closed with 12 KB still queued, an orphaned socket kept them for minutes
    /// for a peer that read nothing). Acknowledgements bring writable events.
    fn all_taken(&self) -> bool {
        self.all_out && crate::sys::tcp_unacked_bytes(&self.wire.socket).unwrap_or(0) == 0
    }

    /// Its reading stopped at its share of a turn with the socket not drained: the loop
    /// calls [`Closing::on_event`] again (as readable) after its other connections.
    pub fn wants_again(&self) -> bool {
        self.reading_paused
    }
}
