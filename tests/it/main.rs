//! Integration tests: the real daemon binary, real plugin libraries, real sockets on
//! 127.0.0.1. A test of an RFC rule carries its section in its name
//! (`rfc9113_3_3_...`), so a failure names the rule it broke.

mod support;

mod c_plugin;
mod capacity;
mod files;
mod forwarded;
mod h2c;
mod h2c_held;
mod h2c_proxy;
mod hostile;
mod http;
mod kubernetes;
mod lifecycle;
mod limits;
mod loading;
mod plugins;
mod promises;
mod proxy_protocol;
mod readiness;
mod reload;
mod reuse_port;
mod sdk;
mod status;
mod systemd;
mod tls;
mod tunnel;
mod upgrade;
mod wakers;
mod websocket;
mod websocket_routes;
