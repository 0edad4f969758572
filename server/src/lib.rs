//! The pure parts of the switchyard daemon, bytes in and decisions out, with no sockets:
//! HTTP/1.1 heads, bodies and responses ([`http`]), what to do with a request
//! ([`route`]), the PROXY protocol header a load balancer sends first
//! ([`proxy_protocol`]), and which static file a path names ([`files`]). A library so that fuzzers (`fuzz/`) and benchmarks can drive exactly the
//! code the daemon runs; the daemon itself is this package's binary.

#![forbid(unsafe_code)]

pub mod files;
pub mod forwarded;
pub mod http;
pub mod proxy_protocol;
pub mod route;
