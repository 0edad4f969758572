//! HTTP/1.1 on a client connection, from its first byte to an upgrade request read whole:
//! the connection's phases, limits and answers ([`conn`]), the daemon's own pages
//! ([`metrics_page`], `status_page`), HTTP/2 with prior knowledge taken as an upgrade
//! ([`prior_knowledge`]), and the request the switch negotiates ([`Upgrade`]). The pure
//! parsing is the library's ([`crate::http`]); what happens after the request is read is
//! the switch's ([`crate::switch`]).

pub mod conn;
mod console;
mod files;
pub mod metrics_page;
pub mod prior_knowledge;
pub mod read_ahead;
mod status_page;
mod upgrade;

pub use upgrade::{access_request, Upgrade};
