//! The pure parts of the switchyard daemon, bytes in and decisions out, with no sockets:
//! HTTP/1.1 heads, bodies and responses ([`http`]) and what to do with a request
//! ([`route`]). A library so that fuzzers (`fuzz/`) and benchmarks can drive exactly the
//! code the daemon runs; the daemon itself is this package's binary.

pub mod http;
pub mod route;
