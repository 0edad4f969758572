//! The contract between the switchyard daemon and its protocol plugins.
//!
//! A plugin is a shared library (`crate-type = ["cdylib"]`) that the daemon loads at start
//! from its plugin folder. The daemon does all of HTTP/1.1: parsing, limits, time-outs, the
//! `101`, the request body, bytes the client sent early, overload and shutdown. The plugin
//! decides whether to switch ([`Protocol::negotiate`]) and then speaks its protocol on a
//! plain blocking connection ([`Protocol::serve`]), on a worker thread of its own.
//!
//! That blocking [`Protocol`] is the first, simplest way to write a plugin. A protocol with
//! many connections that each move little may instead implement [`EventProtocol`]: it is
//! called on the daemon's event loops when its connection can move, with no thread per
//! connection (see [`event`]).
//!
//! # A whole plugin
//!
//! This is `plugins/echo`: after the `101` it sends back every byte until the client stops
//! sending.
//!
//! ```
//! use protocol_api::{export_plugin, Connection, Decision, Protocol, Request};
//! use std::io::{self, Read, Write};
//! use std::net::Shutdown;
//!
//! pub struct Echo;
//!
//! impl Protocol for Echo {
//!     const NAME: &'static str = "echo";
//!     const TOKENS: &'static [&'static str] = &["echo"];
//!     type Session = ();
//!
//!     fn new() -> Result<Self, String> {
//!         Ok(Echo)
//!     }
//!
//!     fn negotiate(&self, _request: &Request<'_>) -> Decision<()> {
//!         Decision::accept(())
//!     }
//!
//!     fn serve(&self, _: (), _request: &Request<'_>, conn: &mut Connection<'_>) -> io::Result<()> {
//!         let mut buf = [0u8; 16 * 1024];
//!         loop {
//!             let n = conn.read(&mut buf)?;
//!             if n == 0 {
//!                 return conn.shutdown(Shutdown::Write);
//!             }
//!             conn.write_all(&buf[..n])?;
//!         }
//!     }
//! }
//!
//! export_plugin!(Echo);
//! ```
//!
//! with, in its `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! protocol-api = { path = "../../protocol-api" }
//! ```
//!
//! # What crosses the boundary
//!
//! Nothing Rust-shaped: [`abi`] declares the `#[repr(C)]` structs and `extern "C"` functions
//! that do, and [`export_plugin!`] writes the entry symbol and the shims that turn them into
//! the safe types above. The shims catch every panic: a plugin that panics costs the one
//! connection it was serving, never the daemon. This needs `panic = "unwind"` (the default);
//! a plugin built with `panic = "abort"` takes the whole daemon down when it panics.
//!
//! # The life of a plugin
//!
//! 1. **Load.** At start the daemon opens every `*.so` in its plugin folder, in name order,
//!    and checks each: the entry symbol, the descriptor's magic, size and version, its
//!    functions, its tokens (not taken by an earlier file). A file that fails is skipped with
//!    one error line naming it and the reason.
//! 2. **`new()`**, once: read your settings here (the daemon's environment; by convention
//!    `SWITCHYARD_<PLUGIN>_*`). An `Err` stops the daemon's start with exit status 2 and
//!    your message (say which variable and value are wrong); a panic skips the plugin.
//! 3. **Per request** asking for one of your tokens, in the client's order of preference:
//!    `negotiate` accepts (with a session), rejects (your status and body), or declines
//!    (the daemon tries the client's next protocol).
//! 4. **After the `101`**: blocking, [`Protocol::serve`] runs until the connection is done;
//!    readiness-driven, [`EventProtocol::start`] makes the connection's state and
//!    [`EventProtocol::on_ready`] is called whenever it can move.
//! 5. Libraries are never unloaded: your code may run until the process exits.
//!
//! # Threads
//!
//! A [`Protocol`]'s `negotiate` and `serve` run on the daemon's worker threads, a thread per
//! connection and many at once: shared state needs `Sync`, per-connection state lives in the
//! session or inside `serve`, and blocking is fine. [`Connection`] is not `Send`: use it from
//! the thread running `serve` (or threads it joins first). An [`EventProtocol`]'s calls run
//! on the daemon's event-loop threads, where blocking stalls every other connection of that
//! loop: no blocking I/O, no sleeping, no waiting on locks. Its per-connection state stays on
//! the loop thread that made it.
//!
//! # Logging
//!
//! `log` records a plugin makes (`log::info!`) reach the daemon's logger, filtered by its
//! `RUST_LOG`. A cdylib carries its own copy of the `log` crate, and the bridge is installed
//! into the copy this crate uses: log through [`log`] as re-exported here
//! (`protocol_api::log::info!`), or depend on the same `log = "0.4"`.
//!
//! # Panics
//!
//! Every call into the plugin runs under `catch_unwind`: a panic closes the one connection
//! it happened on (or fails the one request), is logged with the plugin's name and counted;
//! a plugin that panics too often within a minute is taken out of service
//! (`SWITCHYARD_PLUGIN_PANIC_LIMIT`). This needs `panic = "unwind"`, the default: **a plugin
//! built with `panic = "abort"` takes the whole daemon down when it panics.**
//!
//! # Plugins in other languages
//!
//! [`abi`] is the whole contract; `include/switchyard_plugin.h`, shipped with this crate,
//! declares the same items for C (checked against these definitions by this crate's tests).
//! A C plugin exports `switchyard_plugin_v1` returning a descriptor with its functions; the
//! daemon checks it exactly as it checks a Rust one.
//!
//! # Compatibility
//!
//! The ABI has a major and a minor version; this crate's documentation of [`abi`] lists
//! what each minor added.
//! - **Major** (in the entry symbol's name, `switchyard_plugin_v1`): changes the meaning or
//!   layout of anything that exists, removes anything, or gives a code a new meaning. A new
//!   major is a new entry symbol; a daemon loads only the majors it knows and names the one
//!   it found ("built for plugin ABI v2") for the others.
//! - **Minor**: only appends: fields at the end of a `#[repr(C)]` struct, constants,
//!   functions a plugin may leave NULL. A plugin built against minor *m* loads into every
//!   daemon of the same major and a minor of at least *m*, and is refused, with a line
//!   saying "upgrade the daemon", by an older one (it may rely on what that one lacks). A
//!   plugin reads a host field of minor *k* only when the host's `abi_minor` is at least
//!   *k*; the safe layer does this for you ([`Connection::set_write_timeout`] fails with
//!   `Unsupported` on an older host).
//! - **This crate**: its version follows semver for its Rust API; a release that bumps the
//!   ABI minor is at least a minor release, one that bumps the ABI major a major release.
//!   [`abi::ABI_MAJOR`] and [`abi::ABI_MINOR`] say what a build speaks; the daemon logs the
//!   build string of every plugin it loads.

#![warn(missing_docs)]

pub mod abi;
pub mod access;
mod connection;
pub mod dials;
pub mod event;
pub mod extra_fields;
pub mod fields;
mod host;
pub mod hosting;
pub mod kernel_share;
pub mod metrics;
pub mod moment;
pub mod output;
pub mod path;
mod protocol;
pub mod rate;
mod raw;
mod request;
pub mod setting;
pub mod testing;

#[doc(hidden)]
pub mod export;

/// The `log` crate this crate forwards to the daemon: log through it (or a `log = "0.4"`
/// of your own, which is the same crate) so that records reach the daemon's log.
pub use log;

pub use connection::Connection;
pub use event::{EventProtocol, Io, Ready, Waker, Wants};
pub use protocol::{Decision, Protocol, Rejection};
pub use request::{Arrival, Request, Tls};
pub use setting::Setting;

/// The sizes an event loop's connections share, the daemon's and a readiness plugin's
/// alike, so that a busy connection gets the same turn whichever side reads it.
pub mod sizes {
    /// A read buffer: one per event-loop thread (the daemon's for HTTP/1.1, a plugin's for
    /// its connections), never one per connection.
    pub const READ_BUFFER: usize = 64 * 1024;
    /// Most bytes read from one connection per call, so one fast sender cannot starve the
    /// other connections of its loop.
    pub const READ_BUDGET: usize = 256 * 1024;
}

/// How the daemon tells clients apart for its per-client limits, for plugins that keep
/// limits of their own per client, so that both sides count one client alike.
pub mod clients {
    use std::net::IpAddr;

    /// The key a client is counted under: the /64 of an IPv6 address (one host is routinely
    /// given a whole /64, so counting single addresses would let one machine count as
    /// millions of clients), or an IPv4 address (also as IPv4-mapped IPv6) under the
    /// prefix `ffff:ffff::/32`, which is multicast (`ff00::/8`): no TCP peer has it, so no
    /// IPv6 client's key is ever an IPv4 client's.
    pub fn key(ip: IpAddr) -> u64 {
        let v4 = |v4: std::net::Ipv4Addr| 0xffff_ffff_0000_0000 | u64::from(u32::from(v4));
        match ip {
            IpAddr::V4(address) => v4(address),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(address) => v4(address),
                None => (u128::from(v6) >> 64) as u64,
            },
        }
    }

    /// [`key`] of a peer as [`crate::Request::peer`] gives it (`address:port`); a peer
    /// that does not parse counts as one client.
    pub fn key_of(peer: &str) -> u64 {
        peer.parse::<std::net::SocketAddr>()
            .map_or(0, |address| key(address.ip()))
    }

    /// While a capacity is crowded, a client may hold this fraction of its limit
    /// ([`Share::most`]).
    pub const CROWDED_SHARE: usize = 16;

    /// What there is of one kind of capacity (connections, worker slots, programs), and
    /// how much of it one client may hold. A client's limit alone lets a few clients, each
    /// within it, take everything (four, at a quarter each); [`Share::most`] keeps the last
    /// of it for clients that hold few.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Share {
        /// Units there are in all.
        pub total: usize,
        /// Units one client may hold while the capacity is not crowded.
        pub per_client: usize,
    }

    impl Share {
        /// The most a client may hold while `free` units are free (not counting the one it
        /// asks for): its limit, or, while fewer are free than the reserve, a sixteenth of
        /// it ([`CROWDED_SHARE`], at least one). The reserve is what one client may hold,
        /// or what the others may once one holds its most, whichever is less: a quarter of
        /// everything where a client may hold a quarter, and nothing where one client may
        /// take it all (whoever allowed that meant it).
        pub fn most(self, free: usize) -> usize {
            let reserve = self
                .per_client
                .min(self.total.saturating_sub(self.per_client));
            match free < reserve {
                true => (self.per_client / CROWDED_SHARE).max(1),
                false => self.per_client,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Share;

        #[test]
        fn a_share_shrinks_to_a_sixteenth_while_fewer_are_free_than_the_reserve() {
            let share = |total, per_client| Share { total, per_client };
            let default = share(10_000, 2_500);
            assert_eq!(default.most(2_500), 2_500, "the reserve itself is free");
            assert_eq!(default.most(2_499), 156);
            assert_eq!(default.most(0), 156);
            // Where one client may hold half, the reserve is the other half.
            let half = share(100, 50);
            assert_eq!((half.most(50), half.most(49)), (50, 3));
            // Where one client may hold nearly everything, the reserve is what is left.
            let most = share(100, 90);
            assert_eq!((most.most(10), most.most(9)), (90, 5));
            // Where one client may hold it all, it may, crowded or not.
            assert_eq!(share(20_000, 20_000).most(0), 20_000);
            // A share never falls below one.
            assert_eq!(share(4, 2).most(0), 1);
        }
    }
}

/// Log lines a client can cause, one a second at most for each kind, for the daemon and
/// plugins alike: a line per connection would let one client write the log as fast as it
/// connects (an attacker's review measured 10,000 lines a second from one Python loop),
/// filling disks and journald's rate limit, and stalling the event loop that writes them
/// once stderr's pipe is full. The line that is written says how many like it were not.
pub mod throttle {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// One kind of line, as a `static` where it is logged.
    pub struct Throttle {
        /// The second (since [`crate::moment::epoch`], plus one) of the last line written.
        logged_at: AtomicU64,
        /// Lines not written since.
        unlogged: AtomicU64,
    }

    impl Throttle {
        /// A kind of line not yet logged.
        pub const fn new() -> Throttle {
            Throttle {
                logged_at: AtomicU64::new(0),
                unlogged: AtomicU64::new(0),
            }
        }

        /// `Some(note)` when a line may be written now: `note` tells how many were not
        /// since the last one (empty when none), to end the line with. `None`: this one
        /// is counted.
        pub fn admit(&self) -> Option<Unlogged> {
            self.admit_at(crate::moment::epoch().elapsed().as_secs() + 1)
        }

        fn admit_at(&self, second: u64) -> Option<Unlogged> {
            let last = self.logged_at.load(Ordering::Relaxed);
            let turn = second > last
                && self
                    .logged_at
                    .compare_exchange(last, second, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok();
            if turn {
                Some(Unlogged(self.unlogged.swap(0, Ordering::AcqRel)))
            } else {
                self.unlogged.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    impl Default for Throttle {
        fn default() -> Throttle {
            Throttle::new()
        }
    }

    /// How many lines of a kind went unwritten before this one; displays as
    /// ` (N more like it not logged since the last)`, or nothing.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Unlogged(pub u64);

    impl std::fmt::Display for Unlogged {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0 {
                0 => Ok(()),
                n => write!(f, " ({n} more like it not logged since the last)"),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn one_line_a_second_then_the_count_of_the_rest() {
            let throttle = Throttle::new();
            assert_eq!(throttle.admit_at(5), Some(Unlogged(0)));
            assert_eq!(throttle.admit_at(5), None);
            assert_eq!(throttle.admit_at(5), None);
            assert_eq!(throttle.admit_at(6), Some(Unlogged(2)));
            assert_eq!(throttle.admit_at(6), None);
            assert_eq!(throttle.admit_at(9), Some(Unlogged(1)));
            assert_eq!(Unlogged(0).to_string(), "");
            assert_eq!(
                Unlogged(2).to_string(),
                " (2 more like it not logged since the last)"
            );
        }

        #[test]
        fn the_clock_admits_the_first_line() {
            assert_eq!(Throttle::new().admit(), Some(Unlogged(0)));
        }
    }
}

/// Log levels as the ABI numbers them ([`abi::LOG_OFF`] … [`abi::LOG_TRACE`]), one map for
/// both sides of the boundary.
pub mod log_levels {
    use crate::abi::{LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_OFF, LOG_TRACE, LOG_WARN};

    /// The number of a record's level.
    pub fn to_abi(level: log::Level) -> u32 {
        match level {
            log::Level::Error => LOG_ERROR,
            log::Level::Warn => LOG_WARN,
            log::Level::Info => LOG_INFO,
            log::Level::Debug => LOG_DEBUG,
            log::Level::Trace => LOG_TRACE,
        }
    }

    /// The level of a record numbered `number`; `None` for 0 ("off": not a record's level,
    /// so nothing is logged). Numbers past trace are trace.
    pub fn from_abi(number: u32) -> Option<log::Level> {
        Some(match number {
            LOG_OFF => return None,
            LOG_ERROR => log::Level::Error,
            LOG_WARN => log::Level::Warn,
            LOG_INFO => log::Level::Info,
            LOG_DEBUG => log::Level::Debug,
            _ => log::Level::Trace,
        })
    }

    /// The most verbose level let through, as a filter (0: off).
    pub fn filter_from_abi(number: u32) -> log::LevelFilter {
        from_abi(number).map_or(log::LevelFilter::Off, |level| level.to_level_filter())
    }

    /// The number of a filter's most verbose level.
    pub fn filter_to_abi(filter: log::LevelFilter) -> u32 {
        filter.to_level().map_or(LOG_OFF, to_abi)
    }
}

/// Exports `$ty` (a [`Protocol`]) as this library's plugin: writes the versioned entry symbol
/// the daemon looks for. Use it once per library.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        /// The switchyard plugin entry point (ABI version 1).
        #[unsafe(no_mangle)]
        pub extern "C" fn switchyard_plugin_v1() -> *const $crate::abi::PluginDescriptor {
            static DESCRIPTOR: ::std::sync::OnceLock<$crate::export::Descriptor> =
                ::std::sync::OnceLock::new();
            $crate::export::entry::<$crate::export::Blocking<$ty>>(
                &DESCRIPTOR,
                concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")),
            )
        }
    };
}

/// Exports `$ty` (an [`EventProtocol`]) as this library's plugin, served readiness-driven on
/// the daemon's event loops. Use it once per library, instead of [`export_plugin!`].
#[macro_export]
macro_rules! export_event_plugin {
    ($ty:ty) => {
        /// The switchyard plugin entry point (ABI version 1).
        #[unsafe(no_mangle)]
        pub extern "C" fn switchyard_plugin_v1() -> *const $crate::abi::PluginDescriptor {
            static DESCRIPTOR: ::std::sync::OnceLock<$crate::export::Descriptor> =
                ::std::sync::OnceLock::new();
            $crate::export::entry::<$crate::export::Evented<$ty>>(
                &DESCRIPTOR,
                concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")),
            )
        }
    };
}
