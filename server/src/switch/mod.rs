//! The switch, from an upgrade request read whole to a plugin serving the connection, in
//! the order it happens:
//!
//! 1. [`on_loop`]: the event loop that read the request asks the readiness plugins among
//!    the client's offers ([`negotiate`], in the client's order). An accept starts the
//!    plugin's [`session`] on the loop; the first offer that belongs to a blocking plugin,
//!    or whose readiness plugin asks to negotiate where it may block
//!    ([`Negotiation::OnWorker`](crate::plugin::Negotiation): to dial a backend or start a
//!    program before the `101`), takes a worker slot and goes to a worker
//!    ([`transit::ToWorker`]).
//! 2. [`on_worker`]: the worker asks the blocking plugins from that offer on; an accept sends
//!    the `101` and runs `serve` until it returns. Anything else goes back to the loop at
//!    once ([`transit::ToLoop`]) with what it does next ([`transit::Resume`]): answer, go on
//!    negotiating, or start a readiness session a plugin accepted on the worker.
//! 3. [`session`]: a readiness plugin's connection on the loop, until it ends.
//!
//! A request no plugin takes is answered by the HTTP/1.1 connection it came from
//! ([`crate::http1`]), which reads on.

pub mod negotiate;
pub mod on_loop;
pub mod on_worker;
pub mod session;
pub mod transit;

/// Where a switch is being negotiated: each side asks the plugins that run on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// An event loop: readiness plugins, which must not block.
    Loop,
    /// A worker thread: blocking plugins, and a readiness plugin that asked to negotiate
    /// where it may block.
    Worker,
}

use crate::access::{self, Exchange};
use crate::daemon::state::Shared;
use crate::http1::Upgrade;
use crate::plugin::Plugin;
use protocol_api::moment::Moment;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// What a switched connection's access line says besides its own traffic, noted when the
/// switch happens (the request itself is not kept for the connection's life).
pub struct SwitchRecord {
    /// What the access line says of the request (nothing while that log is off).
    request: access::Request,
    /// The offer's product as the client spelled it (empty while the access log is off).
    protocol: Box<str>,
    /// `101`, or [`access::NO_STATUS`] for HTTP/2 with prior knowledge (no `101`).
    status: u16,
    /// Boxed: a cleartext connection then carries a pointer, not the summary.
    tls: Option<Box<crate::tls::Summary>>,
    started: Moment,
    /// Bytes in before the switch: the request, and what was read past it (far below
    /// 4 GiB: the request's limits, one read's budget).
    head_in: u32,
    /// The `101`'s bytes that went out.
    head_out: u32,
    /// The plugin serving it, whose open connections count this one until it is dropped.
    plugin: &'static Plugin,
}

impl Drop for SwitchRecord {
    fn drop(&mut self) {
        self.plugin.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SwitchRecord {
    /// Counts the switch (and its `101`) in the metrics and notes its access line's fields:
    /// `switching` is the `101` sent, `read_ahead` the bytes read past the request.
    pub fn switched(
        shared: &Shared,
        upgrade: &Upgrade,
        offer: usize,
        switching: &[u8],
        read_ahead: usize,
    ) -> SwitchRecord {
        let plugin = upgrade.plugin(offer);
        shared.metrics.switched(plugin);
        plugin.stats.open.fetch_add(1, Ordering::Relaxed);
        if !switching.is_empty() {
            shared.metrics.response(101);
        }
        let request = upgrade.access_request();
        let protocol: Box<str> = match access::enabled() {
            true => upgrade.product(offer).into(),
            false => Box::default(),
        };
        SwitchRecord {
            request,
            protocol,
            status: if switching.is_empty() {
                access::NO_STATUS
            } else {
                101
            },
            tls: upgrade
                .tls
                .as_ref()
                .map(|handshake| Box::new(handshake.summary)),
            started: Moment::of(upgrade.started),
            head_in: u32::try_from(upgrade.bytes_in() + read_ahead as u64).unwrap_or(u32::MAX),
            head_out: switching.len() as u32,
            plugin,
        }
    }

    /// The plugin serving the connection.
    pub fn plugin(&self) -> &'static Plugin {
        self.plugin
    }

    /// Part of the `101` never went out (the connection ended first).
    pub fn unsent(&mut self, bytes: usize) {
        self.head_out -= bytes as u32;
    }

    /// The connection ended: its access line, with what moved after the switch.
    pub fn log(&self, peer: SocketAddr, bytes_in: u64, bytes_out: u64, reason: Option<&str>) {
        access::log(&Exchange {
            peer,
            request: &self.request,
            status: self.status,
            protocol: Some(&self.protocol),
            tls: self.tls.as_deref().copied().map(Into::into),
            bytes_in: u64::from(self.head_in) + bytes_in,
            bytes_out: u64::from(self.head_out) + bytes_out,
            started: self.started.instant(),
            reason,
        });
    }
}
