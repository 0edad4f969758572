//! What the plugin knows of the daemon that loaded it: the minor ABI version it speaks,
//! learnt once in `init`. The safe layer reads it before using a host field or callback of
//! a later minor.

use std::sync::atomic::{AtomicU32, Ordering};

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
