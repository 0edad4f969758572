//! Asking plugins, in the client's order, whether to switch (RFC 9110 §7.8): the decision
//! both the event loops and the workers make, each for the plugins that run on it.
//! Readiness plugins negotiate on an event loop, blocking ones on a worker; when the next
//! offer belongs to the other side, the caller hands the connection over
//! ([`Outcome::Elsewhere`]).

use super::Side;
use crate::daemon::state::Shared;
use crate::http::response::{
    is_field_value, is_token, write_header, write_status_line, ExtraFor, Response,
};
use crate::http1::Upgrade;
use crate::plugin::{Failure, Negotiated, Negotiation, Plugin, Registry};
use std::borrow::Cow;
use std::time::Instant;

/// What the offers from one point on came to.
pub enum Outcome {
    /// Offer `offer`'s plugin accepts: send `switching` (the `101`; empty for a
    /// prior-knowledge connection), then serve `session`.
    Accept {
        offer: usize,
        session: Negotiated<'static>,
        switching: Vec<u8>,
    },
    /// Answer with this instead (a plugin's refusal, an error, or `503` while stopping);
    /// the reason goes on the access line.
    Answer(Response, &'static str),
    /// Offer `index` runs on the other side (a worker, or an event loop): hand over. A
    /// readiness plugin's offer handed to a worker is one that asked for it
    /// ([`Negotiation::OnWorker`]); the worker negotiates it there first.
    Elsewhere(usize),
    /// Every plugin declined: answer as if there had been no `Upgrade`.
    Declined,
}

/// Negotiates the offers of `upgrade` from `from` on, for the plugins that run on `side`
/// (readiness plugins on an event loop, blocking ones on a worker).
pub fn negotiate(
    shared: &'static Shared,
    upgrade: &Upgrade,
    peer: &str,
    from: usize,
    side: Side,
) -> Outcome {
    let on_loop = side == Side::Loop;
    for index in from..upgrade.offers.len() {
        if shared.is_stopping() {
            let answer = Response::unavailable("the server is stopping");
            return Outcome::Answer(answer, "stopping");
        }
        let plugin = upgrade.plugin(index);
        if upgrade.tls.is_some() && !plugin.serves_tls() {
            too_old_for_tls(plugin);
            continue;
        }
        // On a worker, the first offer may be a readiness plugin's that asked to be
        // negotiated where it may block.
        let asked_for_worker = !on_loop && index == from && plugin.is_readiness();
        if plugin.is_readiness() != on_loop && !asked_for_worker {
            return Outcome::Elsewhere(index);
        }
        let mut parts = upgrade.parts(peer, index);
        parts.may_block = !on_loop;
        let began = on_loop.then(Instant::now);
        let negotiation = plugin.negotiate(&parts);
        if let Some(began) = began {
            shared.metrics.timed_call(plugin, "negotiate", began);
        }
        match negotiation {
            Negotiation::Decline => continue,
            Negotiation::OnWorker if on_loop => return Outcome::Elsewhere(index),
            Negotiation::OnWorker => {
                log::error!(
                    "plugin {}: negotiate asked for a worker while on one",
                    plugin.name
                );
                return Outcome::Answer(
                    Response::error(500, "internal error"),
                    "plugin asked for a worker on a worker",
                );
            }
            Negotiation::Accept { session, headers } => {
                if upgrade.prior_knowledge {
                    // No 101: the connection is in the plugin's protocol already.
                    return Outcome::Accept {
                        offer: index,
                        session,
                        switching: Vec::new(),
                    };
                }
                let product = upgrade.product(index);
                let extra = ExtraFor::new(&shared.config.response_headers, upgrade.tls.is_some());
                return match switching_protocols(product, &headers, extra) {
                    Some(switching) => Outcome::Accept {
                        offer: index,
                        session,
                        switching,
                    },
                    None => {
                        log::error!(
                            "plugin {}: negotiate gave a header that is not valid HTTP: {headers:?}",
                            plugin.name
                        );
                        Outcome::Answer(
                            Response::error(500, "internal error"),
                            "plugin sent an invalid header",
                        )
                    }
                };
            }
            Negotiation::Reject {
                status,
                headers,
                body,
            } => {
                let response = rejection(upgrade.registry, plugin, status, headers, body);
                return Outcome::Answer(response, "refused by plugin");
            }
            Negotiation::Failed(failure) => {
                plugin_failed(shared, plugin, "negotiate", peer, &failure);
                return Outcome::Answer(
                    Response::error(500, "internal error"),
                    "plugin failed in negotiate",
                );
            }
        }
    }
    Outcome::Declined
}

/// A TLS connection's offer skipped because its plugin predates ABI 1.5 (it would not know
/// that the socket it is lent carries ciphertext): said at most once a minute.
fn too_old_for_tls(plugin: &Plugin) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let minute = crate::sys::monotonic_usec() / 60_000_000 + 1;
    if LAST.swap(minute, Ordering::Relaxed) != minute {
        log::warn!(
            "plugin {} is built for ABI 1.{}, which cannot be handed TLS connections (1.5 or \
             later can): its offers on TLS connections are skipped; rebuild it against a newer \
             protocol-api",
            plugin.name,
            plugin.abi_minor()
        );
    }
}

/// Logs (and counts, for a panic) a plugin call that failed; the connection is lost.
pub fn plugin_failed(shared: &Shared, plugin: &Plugin, call: &str, peer: &str, failure: &Failure) {
    let name = &plugin.name;
    match failure {
        Failure::Panicked(message) => {
            shared.metrics.panicked(plugin);
            log::error!(
                "plugin {name} panicked in {call}: {message}; connection from {peer} closed"
            );
            let limit = shared.config.plugin_panic_limit;
            if plugin.note_panic(limit, Instant::now()) {
                log::error!(
                    "plugin {name} panicked more than {limit} times within a minute \
                     (SWITCHYARD_PLUGIN_PANIC_LIMIT): out of service until the daemon restarts; \
                     its tokens ({}) are no longer offered, and requests that ask only for them \
                     get 503",
                    plugin.tokens.join(", ")
                );
            }
        }
        Failure::Error(message) => {
            log::error!("plugin {name} failed in {call}: {message}; connection from {peer} closed");
        }
    }
}

/// A field a plugin may put on its `101` or its refusal: valid HTTP, and not one that frames
/// the message, which the daemon writes (a plugin's `Content-Length` beside the daemon's
/// would make two, a review noted).
fn is_plugins_field(name: &str, value: &str) -> bool {
    let framing = ["content-length", "transfer-encoding"]
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name));
    is_token(name) && is_field_value(value) && !framing
}

/// The `101` (RFC 9110 §15.2.2): `Upgrade` names the protocol as the client spelled it,
/// `Connection: upgrade`, then the plugin's headers, then the operator's (`extra`) the
/// plugin did not write; `None` if the plugin's are not valid HTTP.
fn switching_protocols(
    product: &str,
    headers: &[(String, String)],
    extra: ExtraFor<'_>,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    write_status_line(&mut out, 101);
    write_header(&mut out, "Upgrade", product);
    write_header(&mut out, "Connection", "upgrade");
    for (name, value) in headers {
        if !is_plugins_field(name, value) {
            return None;
        }
        write_header(&mut out, name, value);
    }
    extra.write_beside(&mut out, 101, headers.iter().map(|(name, _)| name.as_str()));
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// A plugin's refusal as a response, checked: a status outside 300–599 or a header that is
/// not valid HTTP becomes a `500`. A `426` without `Upgrade` gets the daemon's list, which
/// RFC 9110 §15.5.22 requires on every `426`.
fn rejection(
    registry: &Registry,
    plugin: &Plugin,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Response {
    let valid =
        (300..=599).contains(&status) && headers.iter().all(|(n, v)| is_plugins_field(n, v));
    if !valid {
        log::error!(
            "plugin {}: rejection with status {status} or headers {headers:?} is not valid HTTP",
            plugin.name
        );
        return Response::error(500, "internal error");
    }
    let mut response = Response::new(status, body).closing();
    let names_upgrade = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("upgrade"));
    response.headers = headers
        .into_iter()
        .map(|(n, v)| (Cow::Owned(n), Cow::Owned(v)))
        .collect();
    if status == 426 && !names_upgrade {
        response = response
            .header(
                "Upgrade",
                registry
                    .tokens
                    .advertised(&|plugin| registry.in_service(plugin)),
            )
            .header("Connection", "upgrade");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_15_2_2_switching_protocols_names_the_protocol() {
        let extra =
            crate::http::response::ExtraFields::parse("X-Session: 8\nX-Frame-Options: DENY");
        let ours = [("X-Session".into(), "7".into())];
        let extra = extra.unwrap();
        let out = switching_protocols("Echo/1", &ours, ExtraFor::new(&extra, false)).unwrap();
        assert!(out.starts_with(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: Echo/1\r\nConnection: upgrade\r\n"
        ));
        assert!(out.ends_with(b"X-Session: 7\r\nX-Frame-Options: DENY\r\n\r\n"));
        let smuggled = [("X".into(), "a\r\nSet-Cookie: x".into())];
        assert!(switching_protocols("echo", &smuggled, ExtraFor::NONE).is_none());
        let framing = [("Content-Length".into(), "5".into())];
        assert!(switching_protocols("echo", &framing, ExtraFor::NONE).is_none());
    }
}
