//! The contract between the switchyard daemon and its protocol plugins.
//!
//! A plugin is a shared library (`crate-type = ["cdylib"]`) that the daemon loads at start
//! from its plugin folder. The daemon does all of HTTP/1.1: parsing, limits, time-outs, the
//! `101`, the request body, bytes the client sent early, overload and shutdown. The plugin
//! decides whether to switch ([`Protocol::negotiate`]) and then speaks its protocol on a
//! plain blocking connection ([`Protocol::serve`]), on a worker thread of its own.
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
//! `log` records a plugin makes (`log::info!`) reach the daemon's logger, filtered by its
//! `RUST_LOG`.

pub mod abi;
mod connection;
mod protocol;
mod request;

#[doc(hidden)]
pub mod export;

pub use connection::Connection;
pub use protocol::{Decision, Protocol, Rejection};
pub use request::Request;

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
            $crate::export::entry::<$ty>(
                &DESCRIPTOR,
                concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")),
            )
        }
    };
}
