//! The worker's side of a switch: ask the blocking plugins among the client's offers, in
//! order; on an accept send the `101` and run the plugin's `serve` until it returns. Any
//! other outcome (a refusal, every plugin declining, or an offer a readiness plugin serves)
//! goes back to the event loop at once with what it should do next, so a worker is held only
//! while a blocking plugin has the connection.

use crate::access::{self, Exchange};
use crate::http::response::Response;
use crate::negotiation::{negotiate, plugin_failed, Outcome, Upgrade};
use crate::plugin::{BlockingConn, Failure, ReadAhead, Session};
use crate::shared::{LiveConn, Resume, Returned, Shared, Ticket};
use crate::workers::Slot;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An upgrade request, read whole by an event loop, on its way to a worker.
pub struct Job {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub ticket: Ticket,
    pub upgrade: Box<Upgrade>,
    /// Bytes the client sent after the request: the new protocol's, served first.
    pub read_ahead: Vec<u8>,
    /// The first offer to negotiate (the earlier ones were the loop's).
    pub from: usize,
    pub slot: Slot,
    /// The event loop the connection came from, and goes back to if it does not switch.
    pub home: usize,
}

impl Job {
    /// Sends the job back to its loop unserved, with `answer` for the client.
    pub fn refuse(self, answer: Response) -> Returned {
        Returned {
            stream: self.stream,
            peer: self.peer,
            ticket: self.ticket,
            input: self.read_ahead,
            upgrade: self.upgrade,
            next: Resume::Answer(answer, Some("no worker")),
        }
    }
}

pub fn run(job: Job, shared: &'static Shared) {
    let Job {
        stream,
        peer,
        ticket,
        upgrade,
        read_ahead,
        from,
        slot,
        home,
    } = job;
    if let Err(e) = stream.set_nonblocking(false) {
        log::debug!("{peer}: connection lost before the switch: {e}");
        return;
    }
    let peer_text = peer.to_string();
    let next = match negotiate(shared, &upgrade, &peer_text, from, false) {
        Outcome::Accept {
            offer,
            session,
            switching,
        } if upgrade.plugin(offer).is_readiness() => Resume::Start {
            offer,
            session,
            switching,
        },
        Outcome::Accept {
            offer,
            session,
            switching,
        } => {
            let accepted = Accepted {
                offer,
                session,
                switching,
                read_ahead,
            };
            return serve(shared, stream, peer, *upgrade, accepted, slot, ticket);
        }
        Outcome::Answer(response, reason) => Resume::Answer(response, Some(reason)),
        Outcome::Declined => Resume::Answer(upgrade.plain_answer(), None),
        Outcome::Elsewhere(offer) => Resume::Negotiate(offer),
    };
    drop(slot); // the worker is free the moment the connection leaves it
    shared.hand_back(
        home,
        Returned {
            stream,
            peer,
            ticket,
            input: read_ahead,
            upgrade,
            next,
        },
    );
}

struct Accepted {
    offer: usize,
    session: Session<'static>,
    switching: Vec<u8>,
    read_ahead: Vec<u8>,
}

fn serve(
    shared: &'static Shared,
    stream: TcpStream,
    peer_addr: SocketAddr,
    mut upgrade: Upgrade,
    accepted: Accepted,
    _slot: Slot,
    _ticket: Ticket,
) {
    let Accepted {
        offer,
        session,
        switching,
        read_ahead,
    } = accepted;
    let peer = &peer_addr.to_string();
    let plugin = upgrade.plugin(offer);
    let write_timeout = shared.config.write_timeout;
    let sent = stream
        .set_write_timeout(Some(write_timeout))
        .and_then(|()| (&stream).write_all(&switching));
    if let Err(e) = sent {
        log::debug!("{peer}: connection lost sending 101: {e}");
        return; // dropping `session` hands it back to the plugin
    }
    if !switching.is_empty() {
        shared.metrics.response(101);
    }
    shared.metrics.switched(plugin);
    let head_in = upgrade.bytes_in() + read_ahead.len() as u64;
    // The body was the plugin's in negotiate; it does not live on through `serve`.
    upgrade.body = Vec::new();
    let live = Arc::new(LiveConn {
        stream,
        idled: AtomicBool::new(false),
    });
    let live_key = shared.live.add(live.clone());
    let mut connection = BlockingConn {
        stream: &live.stream,
        read_ahead: ReadAhead::new(read_ahead),
        bytes_in: 0,
        bytes_out: 0,
        stopping: shared.stopping_flag(),
        default_write_timeout: write_timeout,
        write_timed_out: false,
    };
    let served = plugin.serve(session, &upgrade.parts(peer, offer), &mut connection);
    shared.live.remove(live_key);
    let mut reason = None;
    match served {
        Ok(()) => {}
        Err(Failure::Error(message)) => {
            log::debug!(
                "plugin {}: serve for {peer} ended with an error: {message}",
                plugin.name
            );
        }
        Err(failure) => {
            plugin_failed(shared, plugin, "serve", peer, &failure);
            reason = Some("plugin panicked");
        }
    }
    if connection.write_timed_out {
        shared.metrics.ended_write_timeout();
        reason = Some("write time-out: the peer took nothing");
    } else if live.idled.load(Ordering::Relaxed) {
        reason = Some("idle");
    }
    access::log(&Exchange {
        peer: peer_addr,
        request: &upgrade.request_line(),
        status: if switching.is_empty() {
            access::NO_STATUS
        } else {
            101
        },
        protocol: Some(upgrade.product(offer)),
        bytes_in: head_in + connection.bytes_in,
        bytes_out: switching.len() as u64 + connection.bytes_out,
        started: upgrade.started,
        reason,
    });
    // Dropping `live` here closes the socket, whatever the plugin left behind.
}
