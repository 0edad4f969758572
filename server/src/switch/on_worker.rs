//! The worker's side of a switch: ask the blocking plugins among the client's offers, in
//! order; on an accept send the `101` and run the plugin's `serve` until it returns. Any
//! other outcome (a refusal, every plugin declining, or an offer a readiness plugin serves)
//! goes back to the event loop at once with what it should do next, so a worker is held only
//! while a blocking plugin has the connection.

use super::negotiate::{negotiate, plugin_failed, Outcome};
use super::transit::{Resume, ToLoop, ToWorker};
use super::{Side, SwitchRecord};
use crate::connection::Transit;
use crate::daemon::live::LiveConn;
use crate::daemon::state::Shared;
use crate::daemon::worker_slots::Slot;
use crate::http1::Upgrade;
use crate::plugin::{BlockingConn, Failure, Negotiated, ReadAhead};
use crate::tls::layer::TlsLayer;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Runs on a worker thread: negotiates the job's offers, then serves or hands back.
pub fn run(job: ToWorker, shared: &'static Shared) {
    let ToWorker {
        transit,
        upgrade,
        from,
        slot,
        home,
    } = job;
    let peer_text = transit.peer.to_string();
    let next = match negotiate(shared, &upgrade, &peer_text, from, Side::Worker) {
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
            };
            return serve(shared, transit, *upgrade, accepted, slot);
        }
        Outcome::Answer(response, reason) => Resume::Answer(response, Some(reason)),
        Outcome::Declined => Resume::Answer(upgrade.plain_answer(), None),
        Outcome::Elsewhere(offer) => Resume::Negotiate(offer),
    };
    drop(slot); // the worker is free the moment the connection leaves it
    home.hand_back(ToLoop {
        transit,
        upgrade,
        next,
    });
}

struct Accepted {
    offer: usize,
    session: Negotiated<'static>,
    switching: Vec<u8>,
}

fn serve(
    shared: &'static Shared,
    transit: Transit<TcpStream>,
    mut upgrade: Upgrade,
    accepted: Accepted,
    _slot: Slot,
) {
    let Accepted {
        offer,
        session,
        switching,
    } = accepted;
    let Transit {
        stream,
        mut tls,
        peer: peer_addr,
        ticket: _ticket,
        read_ahead,
    } = transit;
    let peer = &peer_addr.to_string();
    let plugin = upgrade.plugin(offer);
    let write_timeout = shared.config.write_timeout;
    let sent = stream
        .set_write_timeout(Some(write_timeout))
        .and_then(|()| send_all(tls.as_deref_mut(), &stream, &switching));
    if let Err(e) = sent {
        log::debug!("{peer}: connection lost sending 101: {e}");
        return; // dropping `session` hands it back to the plugin
    }
    let record = SwitchRecord::switched(shared, &upgrade, offer, &switching, read_ahead.len());
    // The body was the plugin's in negotiate; it does not live on through `serve`.
    upgrade.body = Vec::new();
    let live = Arc::new(LiveConn::new(stream));
    let live_key = shared.live.add(live.clone());
    let mut connection = BlockingConn {
        stream: &live.stream,
        tls: tls.as_deref_mut(),
        read_ahead: ReadAhead::new(read_ahead),
        bytes_in: 0,
        bytes_out: 0,
        stopping: shared.stopping_flag(),
        default_write_timeout: write_timeout,
        write_timed_out: false,
        kernel: Default::default(),
        acked_mark: None,
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
    let no_data = crate::access::tls_without_data(connection.tls.as_deref(), &peer);
    if no_data.is_some() {
        reason = no_data;
    } else if connection.write_timed_out {
        shared.metrics.ended_write_timeout();
        reason = Some("write time-out: the peer took nothing");
    } else if live.idled.load(Ordering::Relaxed) {
        reason = Some("idle");
    }
    let (bytes_in, bytes_out, timed_out) = (
        connection.bytes_in,
        connection.bytes_out,
        connection.write_timed_out,
    );
    record.log(peer_addr, bytes_in, bytes_out, reason);
    if let (Some(tls), false) = (tls.as_deref_mut(), timed_out) {
        // close_notify (a no-op if the plugin shut its side), within the write time-out.
        let _ = tls.close(&mut &live.stream);
    }
    if timed_out || live.idled.load(Ordering::Relaxed) {
        // Ended for a peer that took nothing: what still waits for it is dropped with a
        // reset, not kept by the kernel for minutes after us.
        crate::sys::reset_if_unsent(&live.stream);
    }
    // Dropping `live` here closes the socket, whatever the plugin left behind.
}

/// Writes all of `bytes` on a blocking socket, through its TLS session if it has one (and
/// what the session held from the event loop first).
fn send_all(tls: Option<&mut TlsLayer>, stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let Some(tls) = tls else {
        return (&*stream).write_all(bytes);
    };
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = tls.write(&mut &*stream, rest)?;
        rest = &rest[n..];
    }
    match tls.flush(&mut &*stream)? {
        true => Ok(()),
        false => Err(io::ErrorKind::TimedOut.into()),
    }
}
