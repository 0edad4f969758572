//! A connection to a backend, made by one client connection for its own streams: dialled
//! without blocking, watched by the daemon's event loop, closed when it has carried no
//! stream for a while.
//!
//! One client connection's streams to one backend share one backend connection, with the
//! client's stream identifiers (they only grow, as the backend requires); a client whose
//! streams outnumber the backend's stream limit waits in line for its own connection's
//! slots, never for another client's.

use super::peer::Peer;
use crate::frame::{self, setting};
use crate::slots::Slot;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// Where a backend connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting { deadline: Instant },
    Open,
}

pub struct Backend {
    /// The route (index in the configuration) it serves.
    pub route: usize,
    pub address: SocketAddr,
    pub socket: TcpStream,
    pub peer: Peer,
    pub state: State,
    /// The backend's SETTINGS_MAX_CONCURRENT_STREAMS: 100 until it says (the RFC's "no
    /// limit" would send a whole queue that a smaller limit then refuses).
    pub max_streams: u32,
    /// Streams open on it.
    pub open: u32,
    /// Streams waiting to be sent, in the order their identifiers grow.
    pub waiting: VecDeque<u32>,
    /// It sent GOAWAY: no new stream goes to it.
    pub going_away: bool,
    /// It failed; it is let go at the end of the call.
    pub dead: bool,
    /// It may have bytes to read (edge-triggered: true until a read would block, or reads
    /// short while its end is not reported).
    pub readable: bool,
    /// The loop reported a watched descriptor's end while this one was open: it is read to
    /// its end, not to a short read.
    pub peer_closed: bool,
    pub watched: bool,
    /// Since when it carries no stream.
    pub idle_since: Option<Instant>,
    /// Its count against the client's share of backend connections ([`crate::slots`]).
    _held: Slot,
    /// It was granted [`super::peer::CONN_WINDOW`] from the client address's budget.
    pub granted: bool,
}

impl Backend {
    /// Starts a non-blocking connect and queues the connection preface, sent once it is up.
    pub fn dial(
        route: usize,
        address: SocketAddr,
        deadline: Instant,
        held: Slot,
    ) -> io::Result<Backend> {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        match socket.connect(&address.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut peer = Peer::new();
        let out = peer.out.queue();
        out.extend_from_slice(crate::upgrade::PREFACE);
        // No push (RFC 9113 §8.4); everything else at its initial value.
        frame::write_settings(out, &[(setting::ENABLE_PUSH, 0)]);
        // Its connection window past the protocol's comes from the client address's budget
        // once it needs it (`Relay::follow_budget`).
        Ok(Backend {
            route,
            address,
            socket: socket.into(),
            peer,
            state: State::Connecting { deadline },
            max_streams: 100,
            open: 0,
            waiting: VecDeque::new(),
            going_away: false,
            dead: false,
            readable: false,
            peer_closed: false,
            watched: false,
            idle_since: None,
            _held: held,
            granted: false,
        })
    }

    /// After the socket was reported ready: whether the connect is done (`Ok(true)`), still
    /// on its way, or failed.
    pub fn connected(&mut self) -> io::Result<bool> {
        if self.state == State::Open {
            return Ok(true);
        }
        if let Some(e) = self.socket.take_error()? {
            return Err(e);
        }
        match self.socket.peer_addr() {
            Ok(_) => {
                self.state = State::Open;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A new stream may go out on it now.
    pub fn has_room(&self) -> bool {
        self.state == State::Open && !self.going_away && !self.dead && self.open < self.max_streams
    }

    /// Carries nothing and waits for nothing.
    pub fn is_unused(&self) -> bool {
        self.open == 0 && self.waiting.is_empty()
    }
}
