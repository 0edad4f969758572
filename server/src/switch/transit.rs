//! The two hand-offs of a switch, each a [`Transit`] with the upgrade request and what the
//! other side does next: to a worker when the next offer is a blocking plugin's (or a
//! readiness plugin's that negotiates where it may block), and back to the connection's
//! event loop when the worker did not keep it.

use crate::connection::Transit;
use crate::daemon::worker_slots::Slot;
use crate::http::response::Response;
use crate::http1::Upgrade;
use crossbeam_channel::Sender;
use std::net::TcpStream;
use std::sync::Arc;

/// An upgrade request on its way to a worker, holding the worker slot it runs in.
pub struct ToWorker {
    pub transit: Transit<TcpStream>,
    pub upgrade: Box<Upgrade>,
    /// The first offer to negotiate (the earlier ones were the loop's).
    pub from: usize,
    pub slot: Slot,
    /// The event loop the connection came from, and goes back to if it does not switch.
    pub home: LoopHandle,
}

/// A connection a worker gives back to its event loop, with what the loop does next.
pub struct ToLoop {
    pub transit: Transit<TcpStream>,
    pub upgrade: Box<Upgrade>,
    pub next: Resume,
}

/// What the event loop does with a connection a worker gave back.
pub enum Resume {
    /// Send this answer to the upgrade request (a refusal, or the plain answer when every
    /// plugin declined), then go on as HTTP/1.1 or close, as the answer says.
    Answer(Response, Option<&'static str>),
    /// Go on negotiating the client's offers from this one, on the loop (readiness plugins).
    Negotiate(usize),
    /// A readiness plugin accepted on the worker (it asked to negotiate there): start its
    /// session on the loop and send `switching`.
    Start {
        offer: usize,
        session: crate::plugin::Negotiated<'static>,
        switching: Vec<u8>,
    },
}

impl ToWorker {
    /// The job goes back to its loop unserved, with `answer` for the client.
    pub fn refuse(self, answer: Response, reason: &'static str) -> ToLoop {
        ToLoop {
            transit: self.transit,
            upgrade: self.upgrade,
            next: Resume::Answer(answer, Some(reason)),
        }
    }
}

/// How to reach an event loop from another thread.
#[derive(Clone)]
pub struct LoopHandle {
    sender: Sender<ToLoop>,
    /// Connections (slot and id) whose static file's next part was read into the page
    /// cache ([`crate::http1::read_ahead`]).
    read_done: Sender<(usize, u32)>,
    waker: Arc<mio::Waker>,
}

impl LoopHandle {
    pub fn new(
        sender: Sender<ToLoop>,
        read_done: Sender<(usize, u32)>,
        waker: Arc<mio::Waker>,
    ) -> LoopHandle {
        LoopHandle {
            sender,
            read_done,
            waker,
        }
    }

    pub fn waker(&self) -> Arc<mio::Waker> {
        self.waker.clone()
    }

    /// Tells the loop that the connection in `slot` (if still the one with `id`) may send
    /// its static file's body on.
    pub fn read_ahead_done(&self, slot: usize, id: u32) {
        if self.read_done.send((slot, id)).is_ok() {
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake an event loop: {e}");
            }
        }
    }

    /// Gives a connection back to the loop; it is closed if that loop has ended.
    pub fn hand_back(&self, returned: ToLoop) {
        if self.sender.send(returned).is_ok() {
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake an event loop: {e}");
            }
        }
    }
}
