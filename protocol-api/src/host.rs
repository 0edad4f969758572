//! What the plugin knows of the daemon that loaded it: the minor ABI version it speaks,
//! learnt once in `init`, (1.6) its metric functions and (1.8, 1.9) its access log. The safe layer reads the version
//! before using a host field or callback of a later minor; [`crate::metrics`] goes through
//! [`declare`] and [`series`] here, the only calls into the host outside [`crate::export`].

use crate::abi::{
    HostApi, MessageSink, RawBytes, RawExchange, RawMetric, RawRequestNames, STATUS_OK,
};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

/// The host's minor ABI version, learnt in `init` (0 until then).
static HOST_MINOR: AtomicU32 = AtomicU32::new(0);

/// Records the host's minor version (`init` does; so does [`crate::testing`]).
pub(crate) fn note_host_minor(minor: u32) {
    HOST_MINOR.store(minor, Ordering::Relaxed);
}

/// The minor ABI version of the daemon that loaded this plugin.
pub fn host_minor() -> u32 {
    HOST_MINOR.load(Ordering::Relaxed)
}

/// The host's metric functions, when it has them (1.6).
struct MetricHost {
    ctx: usize,
    declare: unsafe extern "C" fn(
        *mut core::ffi::c_void,
        *const RawMetric,
        *mut u32,
        *const MessageSink,
    ) -> i32,
    series: unsafe extern "C" fn(*mut core::ffi::c_void, u32, *const RawBytes, usize) -> *mut u64,
}

static METRIC_HOST: OnceLock<MetricHost> = OnceLock::new();

/// Keeps the host's metric functions, from `init` (the `HostApi` lives as long as the
/// process). Hosts before 1.6 have none: metrics then count in the plugin only.
pub(crate) fn note_host(host: &HostApi) {
    note_access_line(host);
    if host.abi_minor < 6 {
        return;
    }
    if let (Some(declare), Some(series)) = (host.metric_declare, host.metric_series) {
        let _ = METRIC_HOST.set(MetricHost {
            ctx: host.ctx as usize,
            declare,
            series,
        });
    }
}

/// The host's access-line function, when it has one (1.8).
static ACCESS_LINE: OnceLock<unsafe extern "C" fn(*const RawExchange)> = OnceLock::new();
/// Its function taking the request's named fields too, when it has one (1.9).
static ACCESS_LINE_NAMED: OnceLock<
    unsafe extern "C" fn(*const RawExchange, *const RawRequestNames),
> = OnceLock::new();

/// Keeps the host's access-line functions, from `init`. Hosts before 1.8 have none, and
/// before 1.9 not the one with named fields (their `HostApi` ends before it).
fn note_access_line(host: &HostApi) {
    if host.abi_minor < 8 {
        return;
    }
    if let Some(access_line) = host.access_line {
        let _ = ACCESS_LINE.set(access_line);
    }
    if host.abi_minor < 9 {
        return;
    }
    if let Some(access_line_named) = host.access_line_named {
        let _ = ACCESS_LINE_NAMED.set(access_line_named);
    }
}

/// Hands one exchange to the host's access log, with `names` where the host takes them
/// (1.9); false when the host has no access log for plugins (before 1.8, or in unit
/// tests).
pub(crate) fn access_line(exchange: &RawExchange, names: &RawRequestNames) -> bool {
    if let Some(access_line_named) = ACCESS_LINE_NAMED.get() {
        // SAFETY: the host's function (1.9, present); `exchange`, `names` and what they
        // point at are lent for the call, and the host copies what it keeps.
        unsafe { access_line_named(exchange, names) };
        return true;
    }
    let Some(access_line) = ACCESS_LINE.get() else {
        return false;
    };
    // SAFETY: the host's function (1.8, present); `exchange` and what it points at are
    // lent for the call, and the host copies what it keeps.
    unsafe { access_line(exchange) };
    true
}

/// Whether the host renders this plugin's metrics.
pub(crate) fn has_metrics() -> bool {
    METRIC_HOST.get().is_some()
}

/// Declares a family with the host: `Ok(None)` when the host has no metrics (or none
/// yet: unit tests).
pub(crate) fn declare(metric: &RawMetric) -> Result<Option<u32>, String> {
    let Some(host) = METRIC_HOST.get() else {
        return Ok(None);
    };
    let mut message = String::new();
    let sink = MessageSink {
        ctx: (&mut message as *mut String).cast(),
        set: keep_message,
    };
    let mut id = 0u32;
    // SAFETY: the host's function with its own ctx; `metric` and the strings it points at
    // are lent for the call (the host copies them), `id` and `sink` outlive it.
    let status = unsafe { (host.declare)(host.ctx as *mut _, metric, &mut id, &sink) };
    match status {
        STATUS_OK => Ok(Some(id)),
        _ => Err(message),
    }
}

/// The sink [`declare`] lends: copies the host's reason into the `String` at `ctx`.
unsafe extern "C" fn keep_message(ctx: *mut core::ffi::c_void, message: RawBytes) {
    crate::hosting::guarded((), || {
        // SAFETY: `ctx` is the `String` `declare` lent for this call; the message is lent
        // for the call.
        let (kept, text) = unsafe { (&mut *ctx.cast::<String>(), message.as_slice()) };
        *kept = String::from_utf8_lossy(text).into_owned();
    })
}

/// The host's cells for one series of family `id`, `cells` long; `None` when it refused
/// (past its most series).
pub(crate) fn series(id: u32, values: &[&str], cells: usize) -> Option<&'static [AtomicU64]> {
    let host = METRIC_HOST.get()?;
    let raw: Vec<RawBytes> = values.iter().map(|v| RawBytes::new(v.as_bytes())).collect();
    // SAFETY: the host's function with its own ctx; the values are lent for the call.
    let pointer = unsafe { (host.series)(host.ctx as *mut _, id, raw.as_ptr(), raw.len()) };
    if pointer.is_null() {
        return None;
    }
    // SAFETY: the ABI promises `cells` 8-byte aligned `u64`s that live as long as the
    // process and are only ever updated atomically; `AtomicU64` has `u64`'s layout.
    Some(unsafe { std::slice::from_raw_parts(pointer.cast::<AtomicU64>(), cells) })
}
