//! The h2c plugin's settings, from the daemon's environment, read once when it loads, and
//! its routing: which backend serves a request path (longest prefix wins).

use protocol_api::extra_fields::{self, ExtraFields};
use protocol_api::path::{PathError, RequestPath};
use std::time::Duration;

/// How a backend is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendProtocol {
    /// HTTP/2 with prior knowledge (gRPC servers): streams multiplexed on pooled connections.
    Http2,
    /// HTTP/1.1 with keep-alive: a pooled connection per request in flight.
    Http1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// A path prefix, `/` for everything.
    pub prefix: String,
    /// `host:port`.
    pub address: String,
    pub protocol: BackendProtocol,
    /// Request bodies go from their first byte, not read first up to
    /// `SWITCHYARD_H2C_HTTP1_REQUEST_BUFFER` (`http1-stream://`: a backend that answers a
    /// request as it reads it, as nginx's `proxy_request_buffering off` is for).
    pub streams_requests: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `SWITCHYARD_H2C_ROUTES`: `/prefix=host:port` (HTTP/2), `/prefix=http1://host:port`
    /// or `/prefix=http1-stream://host:port`.
    pub routes: Vec<Route>,
    /// `SWITCHYARD_H2C_MAX_STREAMS` (default 100): concurrent streams per client connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams: u32,
    /// `SWITCHYARD_H2C_MAX_HEADER_LIST_BYTES` (default 16384): SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_bytes: u32,
    /// `SWITCHYARD_H2C_IDLE_MS` (default 300000): a connection with no stream open this long
    /// is sent GOAWAY and closed.
    pub idle: Duration,
    /// `SWITCHYARD_H2C_CONNECT_TIMEOUT_MS` (default 5000): longer gets `504` on the stream.
    pub connect_timeout: Duration,
    /// `SWITCHYARD_H2C_HTTP1_PER_CONNECTION` (default 16): streams of one client connection
    /// in flight to HTTP/1.1 backends at once (each holds a backend connection); up to
    /// [`crate::proxy::HTTP1_WAITING_MAX`] others wait, more get `503`.
    pub http1_per_connection: usize,
    /// `SWITCHYARD_H2C_HTTP1_MAX` (default 2500): streams of every client connection at
    /// HTTP/1.1 backends at once (each holds a backend connection); past it, `503`.
    pub http1_max: usize,
    /// `SWITCHYARD_H2C_HTTP1_PER_CLIENT` (default a quarter of `http1_max`): the same for
    /// one client address.
    pub http1_per_client: usize,
    /// `SWITCHYARD_H2C_HTTP1_REQUEST_BUFFER` (default 65536): bytes of a request body to an
    /// HTTP/1.1 backend read before the stream takes a backend connection
    /// ([`crate::body_buffer`]); 0: none.
    pub http1_request_buffer: usize,
    /// `SWITCHYARD_H2C_BODY_TIMEOUT_MS` (default 30000): a request body to an HTTP/1.1
    /// backend that sends nothing this long (`408` if not yet answered), an answer the
    /// client takes nothing of this long (from any backend), or a request body an HTTP/2
    /// backend takes nothing of this long (the relay; `504` if not yet answered), ends its
    /// stream.
    pub body_timeout: Duration,
    /// `SWITCHYARD_H2C_ENGINE` (default `auto`): how connections are served.
    pub engine: Engine,
    /// `SWITCHYARD_H2C_BACKENDS_MAX` (default the daemon's `SWITCHYARD_MAX_CONNECTIONS`):
    /// HTTP/2 backend connections open at once, each client connection's own (the relay's
    /// one per route it uses, hyper's one per backend: [`crate::counted`]); past it, a
    /// stream that needs another gets `503`.
    pub backends_max: usize,
    /// `SWITCHYARD_H2C_BACKENDS_PER_CLIENT` (default a quarter of `backends_max`): the
    /// same for one client address ([`crate::slots`]).
    pub backends_per_client: usize,
    /// `SWITCHYARD_H2C_HELD_PER_CLIENT` (default 64 MiB): bytes the relay holds for one
    /// client address, over all its connections: answers it has not taken, its uploads a
    /// backend has not, output not yet written; past it, its connections holding their part
    /// read their backends no further, and unmoved streams are ended
    /// ([`crate::relay::held`]); on hyper's engine, a backend connection per MiB of it.
    pub held_per_client: usize,
    /// `SWITCHYARD_RESPONSE_HEADERS`, the daemon's setting: the fields either engine adds
    /// to the HTTP/2 answers it passes on, as the daemon adds them to its HTTP/1.1 ones
    /// (names in lowercase).
    pub response_fields: ExtraFields,
}

/// How client connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The frame relay on the daemon's event loops ([`crate::relay`]); HTTP/2 backends only.
    Relay,
    /// hyper on the plugin's tokio runtime; HTTP/1.1 backends too.
    Hyper,
}

pub const ROUTES: &str = "SWITCHYARD_H2C_ROUTES";

impl Config {
    pub fn from_env() -> Result<Config, String> {
        // The daemon's connection limit, read as it reads it (a value it refuses stops it
        // anyway): the default of `SWITCHYARD_H2C_BACKENDS_MAX`. (The daemon's settings are
        // its own to declare; `from_lookup` reads the plugin's.)
        let connections = (std::env::var("SWITCHYARD_MAX_CONNECTIONS").ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&n| n >= 1)
            .unwrap_or(10_000)
            .min(1 << 20);
        let mut config = Config::from_lookup_for(|name| std::env::var(name).ok(), connections)?;
        // The daemon's, likewise (it refused a value that does not parse).
        if let Ok(text) = std::env::var(extra_fields::VARIABLE) {
            config.response_fields = ExtraFields::parse(&text)
                .map_err(|why| format!("invalid {}: {why}", extra_fields::VARIABLE))?
                .lowercased();
        }
        Ok(config)
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        Config::from_lookup_for(lookup, 10_000)
    }

    /// The settings `lookup` gives, for a daemon of `connections` connections at most.
    fn from_lookup_for(
        lookup: impl Fn(&str) -> Option<String>,
        connections: u64,
    ) -> Result<Config, String> {
        let number = |name: &str, default: u64, min: u64, max: u64| -> Result<u64, String> {
            let Some(value) = lookup(name) else {
                return Ok(default);
            };
            match value.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "invalid {name}={value:?}: expected a whole number from {min} to {max}"
                )),
            }
        };
        let mut routes: Vec<Route> = Vec::new();
        if let Some(value) = lookup(ROUTES) {
            for entry in protocol_api::fields::setting_list(&value) {
                let route = parse_route(entry)
                    .map_err(|why| format!("invalid {ROUTES} entry {entry:?}: {why}"))?;
                if routes.iter().any(|r| r.prefix == route.prefix) {
                    return Err(format!(
                        "invalid {ROUTES} entry {entry:?}: the path is routed twice"
                    ));
                }
                routes.push(route);
            }
        }
        // Longest prefix first, so the first match is the most specific.
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let http1_max = number("SWITCHYARD_H2C_HTTP1_MAX", 2500, 1, 1 << 20)? as usize;
        // As many as the daemon's connections: it counts on two descriptors a connection.
        let backends_max = number("SWITCHYARD_H2C_BACKENDS_MAX", connections, 1, 1 << 20)? as usize;
        Ok(Config {
            max_streams: number("SWITCHYARD_H2C_MAX_STREAMS", 100, 1, u32::MAX.into())? as u32,
            max_header_list_bytes: number(
                "SWITCHYARD_H2C_MAX_HEADER_LIST_BYTES",
                16384,
                1024,
                u32::MAX.into(),
            )? as u32,
            idle: Duration::from_millis(number("SWITCHYARD_H2C_IDLE_MS", 300_000, 1, u64::MAX)?),
            connect_timeout: Duration::from_millis(number(
                "SWITCHYARD_H2C_CONNECT_TIMEOUT_MS",
                5000,
                1,
                u64::MAX,
            )?),
            http1_per_connection: number("SWITCHYARD_H2C_HTTP1_PER_CONNECTION", 16, 1, 65_536)?
                as usize,
            http1_max,
            http1_per_client: number(
                "SWITCHYARD_H2C_HTTP1_PER_CLIENT",
                (http1_max / 4).max(1) as u64,
                1,
                http1_max as u64,
            )? as usize,
            http1_request_buffer: number(
                "SWITCHYARD_H2C_HTTP1_REQUEST_BUFFER",
                64 * 1024,
                0,
                1 << 20,
            )? as usize,
            body_timeout: Duration::from_millis(number(
                "SWITCHYARD_H2C_BODY_TIMEOUT_MS",
                30_000,
                1,
                u64::MAX,
            )?),
            engine: engine(lookup("SWITCHYARD_H2C_ENGINE").as_deref(), &routes)?,
            backends_max,
            backends_per_client: number(
                "SWITCHYARD_H2C_BACKENDS_PER_CLIENT",
                (backends_max / 4).max(1) as u64,
                1,
                backends_max as u64,
            )? as usize,
            held_per_client: number(
                "SWITCHYARD_H2C_HELD_PER_CLIENT",
                64 << 20,
                64 * 1024,
                1 << 40,
            )? as usize,
            response_fields: ExtraFields::default(),
            routes,
        })
    }

    /// The route for a request path (normalised, see [`protocol_api::path`]): the longest
    /// matching prefix; an error (`400`) when the path as sent lies under a routed prefix
    /// its dot-segments climbed out of.
    pub fn route(&self, path: &RequestPath<'_>) -> Result<Option<&Route>, PathError> {
        path.longest_prefix(&self.routes, |r| &r.prefix)
    }
}

/// `SWITCHYARD_H2C_ENGINE`: `relay` or `hyper`; `auto` (the default) is the relay when
/// every route is HTTP/2, hyper when one is HTTP/1.1 (the relay speaks HTTP/2 only).
fn engine(value: Option<&str>, routes: &[Route]) -> Result<Engine, String> {
    let http1 = routes.iter().find(|r| r.protocol == BackendProtocol::Http1);
    match value.map(str::trim) {
        None | Some("auto") => Ok(if http1.is_some() { Engine::Hyper } else { Engine::Relay }),
        Some("hyper") => Ok(Engine::Hyper),
        Some("relay") => match http1 {
            Some(route) => Err(format!(
                "invalid SWITCHYARD_H2C_ENGINE=relay: the relay speaks HTTP/2 to backends only, and {ROUTES} routes {} to HTTP/1.1",
                route.prefix
            )),
            None => Ok(Engine::Relay),
        },
        Some(other) => Err(format!(
            "invalid SWITCHYARD_H2C_ENGINE={other:?}: expected auto, relay or hyper"
        )),
    }
}
fn parse_route(entry: &str) -> Result<Route, &'static str> {
    let (prefix, backend) = entry
        .split_once('=')
        .ok_or("expected /prefix=host:port or /prefix=http1://host:port")?;
    let (prefix, backend) = (prefix.trim(), backend.trim());
    if !prefix.starts_with('/') {
        return Err("the path must start with /");
    }
    let (protocol, streams_requests, address) = match backend.split_once("://") {
        None => (BackendProtocol::Http2, false, backend),
        Some(("h2c", address)) => (BackendProtocol::Http2, false, address),
        Some(("http1", address)) => (BackendProtocol::Http1, false, address),
        Some(("http1-stream", address)) => (BackendProtocol::Http1, true, address),
        Some(_) => {
            return Err(
                "unknown scheme; use host:port (HTTP/2), h2c://, http1:// or http1-stream://",
            )
        }
    };
    let port = address
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if port > 0 && !host.is_empty() && !host.contains('/') => {}
        _ => return Err("the backend must be host:port"),
    }
    Ok(Route {
        prefix: prefix.to_string(),
        address: address.to_string(),
        protocol,
        streams_requests,
    })
}

/// Every setting the plugin reads, for the daemon's `--help` and `--check` (the README's
/// table says more).
pub const SETTINGS: &[protocol_api::Setting] = &[
    protocol_api::Setting::new("SWITCHYARD_H2C_ROUTES", "none: every h2c request is declined", "routes by path prefix, /prefix=host:port (an HTTP/2 backend, gRPC), /prefix=http1://host:port, or /prefix=http1-stream://host:port (request bodies from their first byte)"),
    protocol_api::Setting::new("SWITCHYARD_H2C_MAX_STREAMS", "100", "concurrent streams per client connection (SETTINGS_MAX_CONCURRENT_STREAMS)"),
    protocol_api::Setting::new("SWITCHYARD_H2C_MAX_HEADER_LIST_BYTES", "16384", "largest header list a client may send; larger: 431 on that stream"),
    protocol_api::Setting::new("SWITCHYARD_H2C_IDLE_MS", "300000", "a connection with no stream open this long gets GOAWAY and is closed"),
    protocol_api::Setting::new("SWITCHYARD_H2C_CONNECT_TIMEOUT_MS", "5000", "time to connect to a backend; late: 504 on that stream (refused: 502)"),
    protocol_api::Setting::new("SWITCHYARD_H2C_HTTP1_PER_CONNECTION", "16", "streams of one client connection in flight to http1:// backends at once; 8 more may wait, past that 503 with Retry-After"),
    protocol_api::Setting::new("SWITCHYARD_H2C_HTTP1_MAX", "2500", "streams of all client connections in flight to http1:// backends at once (one backend connection each); past it, 503 with Retry-After"),
    protocol_api::Setting::new("SWITCHYARD_H2C_HTTP1_PER_CLIENT", "a quarter of SWITCHYARD_H2C_HTTP1_MAX (625)", "the same for one client address (an IPv6 client: its /64); past it, 503 with Retry-After (while fewer are free than this, a client holding a sixteenth of it or more gets no more)"),
    protocol_api::Setting::new("SWITCHYARD_H2C_HTTP1_REQUEST_BUFFER", "65536", "bytes of a request body to an http1:// backend read (whole, if it is no larger) before the stream takes a backend connection; at most 1048576, 0: none"),
    protocol_api::Setting::new("SWITCHYARD_H2C_BODY_TIMEOUT_MS", "30000", "a request body to an http1:// backend that sends nothing this long (408 if not yet answered), or an answer the client takes nothing of this long, or a request body an HTTP/2 backend takes nothing of this long (the relay; 504 if not yet answered), ends its stream (an http1:// backend's connection is closed)"),
    protocol_api::Setting::new("SWITCHYARD_H2C_BACKENDS_MAX", "SWITCHYARD_MAX_CONNECTIONS (10000)", "HTTP/2 backend connections open at once, each client connection's own (the relay's one per route it uses, hyper's one per backend), so that the daemon's two descriptors a connection hold; past it, a stream that needs another gets 503"),
    protocol_api::Setting::new("SWITCHYARD_H2C_BACKENDS_PER_CLIENT", "a quarter of SWITCHYARD_H2C_BACKENDS_MAX", "the same for one client address (an IPv6 client: its /64); while fewer are free than this, a client holding a sixteenth of it or more gets no more"),
    protocol_api::Setting::new("SWITCHYARD_H2C_HELD_PER_CLIENT", "67108864 (64 MiB)", "bytes the relay holds for one client address, all its connections together (answers it has not taken, its uploads a backend has not, output not yet written); past it, its connections holding 16 KiB or more read their backends no further and give uploads no window back, new ones get no window past 64 KiB, and streams moving less than 16 KiB a second are ended; on hyper's engine, a backend connection per MiB of it"),
    protocol_api::Setting::new("SWITCHYARD_H2C_ENGINE", "auto", "relay (frames on the daemon's event loops, HTTP/2 backends), hyper (HTTP/1.1 backends too), or auto"),
];

#[cfg(test)]
mod settings_tests {
    /// What `--help` lists is what the plugin reads: a setting read and not declared (or
    /// declared and never read) fails here.
    #[test]
    fn every_setting_read_is_declared() {
        protocol_api::setting::assert_reads_exactly(super::SETTINGS, |lookup| {
            let _ = super::Config::from_lookup(lookup);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: &str) -> Result<Config, String> {
        Config::from_lookup(|n| (n == ROUTES).then(|| routes.to_string()))
    }

    /// The relay's backend connections follow the daemon's connection limit unless set,
    /// a quarter of them for one client.
    #[test]
    fn backend_connections_default_to_the_daemons_connection_limit() {
        let c = Config::from_lookup_for(|_| None, 200).unwrap();
        assert_eq!((c.backends_max, c.backends_per_client), (200, 50));
        let set = |n: &str| (n == "SWITCHYARD_H2C_BACKENDS_MAX").then(|| "40".to_string());
        let c = Config::from_lookup_for(set, 200).unwrap();
        assert_eq!((c.backends_max, c.backends_per_client), (40, 10));
        let c = Config::from_lookup(|_| None).unwrap();
        assert_eq!(c.backends_max, 10_000);
    }

    #[test]
    fn routes_longest_prefix_wins() {
        let c =
            config("/=127.0.0.1:50051, /api/=http1://127.0.0.1:9000,/api/v2/=h2c://b:1").unwrap();
        let at = |path| {
            c.route(&RequestPath::parse(path).unwrap())
                .unwrap()
                .map(|r| (r.address.as_str(), r.protocol))
        };
        assert_eq!(at("/x"), Some(("127.0.0.1:50051", BackendProtocol::Http2)));
        assert_eq!(
            at("/api/users"),
            Some(("127.0.0.1:9000", BackendProtocol::Http1))
        );
        assert_eq!(at("/api/v2/x"), Some(("b:1", BackendProtocol::Http2)));
        let streamed = config("/up/=http1-stream://u:1,/=http1://v:2").unwrap();
        let streams = |path| {
            let route = streamed.route(&RequestPath::parse(path).unwrap());
            let route = route.unwrap().unwrap();
            (route.protocol, route.streams_requests)
        };
        assert_eq!(streams("/up/x"), (BackendProtocol::Http1, true));
        assert_eq!(streams("/x"), (BackendProtocol::Http1, false));
        assert_eq!(
            at("/api"),
            Some(("127.0.0.1:50051", BackendProtocol::Http2))
        );
        assert_eq!(
            at("/api/x/../v1"),
            Some(("127.0.0.1:9000", BackendProtocol::Http1))
        );
        for climbs in ["/api/../admin", "/api/v2/../v1"] {
            let climbs = RequestPath::parse(climbs).unwrap();
            assert!(
                c.route(&climbs).is_err(),
                "{climbs:?} climbs out of its route"
            );
        }
        let c = config("/api/=127.0.0.1:1").unwrap();
        assert_eq!(c.route(&RequestPath::parse("/other").unwrap()), Ok(None));
    }

    #[test]
    fn bad_routes_are_named() {
        for (routes, why) in [
            ("/=x", "host:port"),
            ("/=127.0.0.1:0", "host:port"),
            ("api=127.0.0.1:1", "must start with /"),
            ("/=ftp://127.0.0.1:1", "unknown scheme"),
            ("/a=127.0.0.1:1,/a=127.0.0.1:2", "twice"),
            ("/a", "expected"),
        ] {
            let error = config(routes).unwrap_err();
            assert!(error.contains(why), "{routes}: {error}");
            assert!(error.contains(ROUTES), "{error}");
        }
    }

    #[test]
    fn the_readme_lists_every_setting_read_here() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        let source = include_str!("config.rs");
        let read: Vec<&str> = source
            .split('"')
            .filter(|s| s.starts_with("SWITCHYARD_H2C_") && s.len() > 15)
            .filter(|s| {
                s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
            })
            .collect();
        assert!(read.len() >= 5, "{read:?}");
        for variable in read {
            assert!(
                readme.contains(&format!("| `{variable}` |")),
                "{variable} is read but not in README.md's settings table"
            );
        }
    }

    #[test]
    fn limits_have_defaults_and_bounds() {
        let c = config("").unwrap();
        assert!(c.routes.is_empty());
        assert_eq!(c.max_streams, 100);
        assert_eq!(c.max_header_list_bytes, 16384);
        assert_eq!(c.idle, Duration::from_secs(300));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!((c.http1_max, c.http1_per_client), (2500, 625));
        assert_eq!(c.body_timeout, Duration::from_secs(30));
        assert_eq!(c.http1_request_buffer, 65536);
        assert_eq!(c.engine, Engine::Relay);
        let max = |value: &str| {
            Config::from_lookup(|n| (n == "SWITCHYARD_H2C_HTTP1_MAX").then(|| value.into()))
        };
        assert_eq!(
            max("8").unwrap().http1_per_client,
            2,
            "a quarter of the whole"
        );
        assert_eq!(max("3").unwrap().http1_per_client, 1, "and at least one");
        let share_over_whole = Config::from_lookup(|n| match n {
            "SWITCHYARD_H2C_HTTP1_MAX" => Some("4".into()),
            "SWITCHYARD_H2C_HTTP1_PER_CLIENT" => Some("5".into()),
            _ => None,
        });
        assert!(share_over_whole
            .unwrap_err()
            .contains("SWITCHYARD_H2C_HTTP1_PER_CLIENT"));
        assert_eq!(
            config("/=http1://127.0.0.1:1").unwrap().engine,
            Engine::Hyper
        );
        let relay_for_http1 = Config::from_lookup(|n| match n {
            ROUTES => Some("/=http1://127.0.0.1:1".into()),
            "SWITCHYARD_H2C_ENGINE" => Some("relay".into()),
            _ => None,
        });
        assert!(relay_for_http1.unwrap_err().contains("HTTP/1.1"));
        let bad = Config::from_lookup(|n| (n == "SWITCHYARD_H2C_MAX_STREAMS").then(|| "0".into()));
        assert!(bad.unwrap_err().contains("SWITCHYARD_H2C_MAX_STREAMS"));
    }
}
