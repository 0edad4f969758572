//! The event loop's side of a switch: negotiate the readiness plugins' offers, start the
//! session of the one that accepts, or take a worker slot for the blocking plugins'. The
//! loop applies what this decides ([`OnLoop`]) to its connection table.

use super::negotiate::{negotiate, plugin_failed, Outcome};
use super::Side;
use crate::daemon::clients::Limit;
use crate::daemon::state::Shared;
use crate::daemon::worker_slots::{self, NoSlot, Slot};
use crate::http::response::Response;
use crate::http1::Upgrade;
use crate::plugin::{Handler, Negotiated};
use std::net::SocketAddr;
use std::time::Instant;

/// What the loop does with the connection next.
pub enum OnLoop {
    /// A readiness plugin accepted and was started: serve it on this loop.
    Serve(Started),
    /// Offer `offer` is a worker's: hand the connection over, holding `slot`.
    ToWorker { offer: usize, slot: Slot },
    /// Answer the request (a refusal, or the plain answer when every plugin declined) and
    /// go on as HTTP/1.1 or close, as the answer says.
    Answer(Response, Option<&'static str>),
}

/// A readiness plugin's session, started: send `switching` (the `101`; empty for HTTP/2
/// with prior knowledge), then call `handler` on readiness.
pub struct Started {
    pub offer: usize,
    pub handler: Handler<'static>,
    pub switching: Vec<u8>,
}

/// Negotiates `upgrade`'s offers from `from` on, for the plugins of the event loops. `now`
/// is the loop's clock, read again after each plugin call.
pub fn switch(
    shared: &'static Shared,
    upgrade: &Upgrade,
    peer: SocketAddr,
    from: usize,
    now: &mut Instant,
) -> OnLoop {
    let peer_text = peer.to_string();
    match negotiate(shared, upgrade, &peer_text, from, Side::Loop) {
        Outcome::Accept {
            offer,
            session,
            switching,
        } => start(shared, upgrade, &peer_text, offer, session, switching, now),
        Outcome::Answer(response, reason) => OnLoop::Answer(response, Some(reason)),
        Outcome::Declined => OnLoop::Answer(upgrade.plain_answer(), None),
        Outcome::Elsewhere(offer) => {
            match shared.worker_slots.try_reserve(&shared.clients, peer.ip()) {
                Ok(slot) => OnLoop::ToWorker { offer, slot },
                Err(no_slot) => {
                    let reason = no_slot.reason();
                    match no_slot {
                        NoSlot::Full => {
                            if let Some(unlogged) = worker_slots::FULL_LOGGED.admit() {
                                log::warn!("{peer}: {reason}; answered 503{unlogged}");
                            }
                        }
                        NoSlot::ClientLimit => shared.clients.warn_refused(
                            peer,
                            reason,
                            "SWITCHYARD_WORKERS_PER_CLIENT",
                            shared.config.workers_per_client,
                            shared
                                .clients
                                .most(Limit::Workers, shared.worker_slots.free_after_one()),
                        ),
                    }
                    OnLoop::Answer(Response::unavailable(reason), Some(reason))
                }
            }
        }
    }
}

/// Starts the readiness session a plugin accepted (on this loop, or on a worker it asked
/// for).
pub fn start(
    shared: &'static Shared,
    upgrade: &Upgrade,
    peer: &str,
    offer: usize,
    session: Negotiated<'static>,
    switching: Vec<u8>,
    now: &mut Instant,
) -> OnLoop {
    let plugin = upgrade.plugin(offer);
    let began = Instant::now();
    let started = plugin.start(session, &upgrade.parts(peer, offer));
    *now = shared.metrics.timed_call(plugin, "start", began);
    match started {
        Ok(handler) => OnLoop::Serve(Started {
            offer,
            handler,
            switching,
        }),
        Err(failure) => {
            plugin_failed(shared, plugin, "start", peer, &failure);
            OnLoop::Answer(
                Response::error(500, "internal error"),
                Some("plugin failed in start"),
            )
        }
    }
}
