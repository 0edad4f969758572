//! The tunnel's settings, from the daemon's environment, read once when it loads.

use protocol_api::path::{PathError, RequestPath};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `SWITCHYARD_TUNNEL_ROUTES`: request path → backend `host:port`. Only these are dialled.
    pub routes: Vec<(String, String)>,
    /// `SWITCHYARD_TUNNEL_CONNECT_TIMEOUT_MS` (default 5000): longer gets `504`.
    pub connect_timeout: Duration,
    /// `SWITCHYARD_TUNNEL_IDLE_MS`: end a tunnel with no bytes either way this long.
    pub idle: Option<Duration>,
    /// `SWITCHYARD_TUNNEL_MAX_PIPES` (default [`MAX_PIPES`]): most splice pipes held at
    /// once, two descriptors each, and a client's share of them
    /// ([`crate::pump::client_share`]); 0 never splices.
    pub max_pipes: usize,
    /// `SWITCHYARD_TUNNEL_MAX_DIALS` (default [`MAX_DIALS`]): most dials under way to one
    /// backend, and a quarter of that in all for one client; past either, `503`.
    pub max_dials: usize,
    /// `SWITCHYARD_TUNNEL_RCVBUF` and `SWITCHYARD_TUNNEL_SNDBUF`: the kernel buffers of
    /// backend connections (none: the kernel sizes them as the connection goes).
    pub backend_buffers: Buffers,
}

/// Kernel buffer sizes (`SO_RCVBUF`, `SO_SNDBUF`) for a socket; `None`: the kernel's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buffers {
    pub receive: Option<usize>,
    pub send: Option<usize>,
}

/// HAProxy's `maxpipes` default: a quarter of its connection limit (here the daemon's
/// default `SWITCHYARD_MAX_CONNECTIONS`, 10,000).
pub const MAX_PIPES: usize = 2_500;

/// Dials under way to one route's backend at once. Each holds a worker until the backend
/// answers or the connect time-out ends it: a backend that answers in a millisecond
/// takes 64,000 dials a second under this, and one that does not answer (dead, or its
/// listen queue full) holds 64 of the 1,024 workers, not all of them.
pub const MAX_DIALS: usize = 64;

impl Config {
    pub fn from_env() -> Result<Config, String> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let millis = |name: &str| -> Result<Option<Duration>, String> {
            lookup(name)
                .map(|v| match v.trim().parse::<u64>() {
                    Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                    _ => Err(format!(
                        "invalid {name}={v:?}: expected milliseconds, at least 1"
                    )),
                })
                .transpose()
        };
        let buffer = |name: &str| -> Result<Option<usize>, String> {
            lookup(name)
                .map(|v| match v.trim().parse::<usize>() {
                    Ok(n) if (4096..=1 << 30).contains(&n) => Ok(n),
                    _ => Err(format!(
                        "invalid {name}={v:?}: expected bytes, 4096 to 1073741824"
                    )),
                })
                .transpose()
        };
        let mut routes = Vec::new();
        if let Some(value) = lookup("SWITCHYARD_TUNNEL_ROUTES") {
            for entry in protocol_api::fields::setting_list(&value) {
                let invalid =
                    |why: &str| format!("invalid SWITCHYARD_TUNNEL_ROUTES entry {entry:?}: {why}");
                let (path, backend) = entry
                    .split_once('=')
                    .ok_or_else(|| invalid("expected /path=host:port"))?;
                let (path, backend) = (path.trim(), backend.trim());
                if !path.starts_with('/') {
                    return Err(invalid("the path must start with /"));
                }
                let port = backend
                    .rsplit_once(':')
                    .map(|(_, port)| port.parse::<u16>());
                if !matches!(port, Some(Ok(p)) if p > 0) {
                    return Err(invalid("the backend must be host:port"));
                }
                if routes.iter().any(|(p, _)| p == path) {
                    return Err(invalid("the path is routed twice"));
                }
                routes.push((path.to_string(), backend.to_string()));
            }
        }
        Ok(Config {
            routes,
            connect_timeout: millis("SWITCHYARD_TUNNEL_CONNECT_TIMEOUT_MS")?
                .unwrap_or(Duration::from_secs(5)),
            idle: millis("SWITCHYARD_TUNNEL_IDLE_MS")?,
            max_pipes: match lookup("SWITCHYARD_TUNNEL_MAX_PIPES") {
                None => MAX_PIPES,
                Some(v) => v.trim().parse().map_err(|_| {
                    format!(
                        "invalid SWITCHYARD_TUNNEL_MAX_PIPES={v:?}: expected a count, 0 or more"
                    )
                })?,
            },
            max_dials: match lookup("SWITCHYARD_TUNNEL_MAX_DIALS") {
                None => MAX_DIALS,
                Some(v) => match v.trim().parse() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return Err(format!(
                        "invalid SWITCHYARD_TUNNEL_MAX_DIALS={v:?}: expected a count, at least 1"
                    ))
                    }
                },
            },
            backend_buffers: Buffers {
                receive: buffer("SWITCHYARD_TUNNEL_RCVBUF")?,
                send: buffer("SWITCHYARD_TUNNEL_SNDBUF")?,
            },
        })
    }

    /// The backend for a request path (normalised), if it is routed; an error (`400`) when
    /// the path as sent lies under a route its dot-segments climbed out of.
    pub fn backend(&self, path: &RequestPath<'_>) -> Result<Option<&str>, PathError> {
        Ok(self.route(path)?.map(|(_, b)| b))
    }

    /// The route (its configured path) and backend for a request path, as [`Config::backend`].
    pub fn route(&self, path: &RequestPath<'_>) -> Result<Option<(&str, &str)>, PathError> {
        Ok(path
            .exact(&self.routes, |(p, _)| p)?
            .map(|(p, b)| (p.as_str(), b.as_str())))
    }
}

/// Every setting the tunnel reads, for the daemon's `--help` and `--check`.
pub const SETTINGS: &[protocol_api::Setting] = &[
    protocol_api::Setting::new(
        "SWITCHYARD_TUNNEL_ROUTES",
        "none",
        "Upgrade: tcp routes, /path=host:port,...; only these backends are ever dialled, other paths are declined",
    ),
    protocol_api::Setting::new(
        "SWITCHYARD_TUNNEL_CONNECT_TIMEOUT_MS",
        "5000",
        "time to connect to a backend; late: 504 (refused: 502), before any 101",
    ),
    protocol_api::Setting::new(
        "SWITCHYARD_TUNNEL_IDLE_MS",
        "unset: never",
        "end a tunnel with no bytes either way this long",
    ),
    protocol_api::Setting::new(
        "SWITCHYARD_TUNNEL_MAX_PIPES",
        "2500",
        "most pipes held at once to splice bulk transfers (two descriptors each, as HAProxy's maxpipes); one client address at most a quarter of them, a sixteenth of that while fewer than a quarter are free; past either, or with no descriptor to spare, a tunnel copies instead; 0 never splices",
    ),
    protocol_api::Setting::new(
        "SWITCHYARD_TUNNEL_MAX_DIALS",
        "64",
        "most dials under way at once to one backend, and one client address at most a quarter of that in all, one while fewer than a quarter are free (each holds a worker until the backend answers or the connect time-out passes, so a dead backend cannot hold them all, nor one client keep the others from it or hold many); past either, 503 with Retry-After",
    ),
    protocol_api::Setting::new(
        "SWITCHYARD_TUNNEL_RCVBUF",
        "unset: the kernel's autotuning",
        "bytes for each backend connection's receive buffer (SO_RCVBUF, HAProxy's tune.rcvbuf.server), set before it connects; the kernel doubles it and caps it at net.core.rmem_max. Unset, it grows with the connection's pace, and what a backend sent while its client reads nothing stays queued in it; set, that much at most, and a download's pace to it over the round trip",
    ),
    protocol_api::Setting::new(
        "SWITCHYARD_TUNNEL_SNDBUF",
        "unset: the kernel's autotuning",
        "bytes for each backend connection's send buffer (SO_SNDBUF, HAProxy's tune.sndbuf.server), likewise: unset, it grows up to net.ipv4.tcp_wmem's maximum (4 MiB by default), all of it held while a backend stops reading what a client uploads; set, that much at most (doubled)",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// What `--help` lists is what the tunnel reads: a setting read and not declared (or
    /// declared and never read) fails here.
    #[test]
    fn every_setting_read_is_declared() {
        protocol_api::setting::assert_reads_exactly(SETTINGS, |lookup| {
            let _ = Config::from_lookup(lookup);
        });
    }

    fn config(routes: &str) -> Result<Config, String> {
        Config::from_lookup(|n| (n == "SWITCHYARD_TUNNEL_ROUTES").then(|| routes.to_string()))
    }

    #[test]
    fn routes_parse_and_only_configured_paths_route() {
        let c = config("/db=127.0.0.1:5432, /cache=localhost:6379").unwrap();
        let backend = |target: &str| c.backend(&RequestPath::parse(target).unwrap());
        assert_eq!(backend("/db"), Ok(Some("127.0.0.1:5432")));
        assert_eq!(backend("/cache"), Ok(Some("localhost:6379")));
        assert_eq!(backend("/other"), Ok(None));
        assert_eq!(backend("/x/../db?q"), Ok(Some("127.0.0.1:5432")));
        assert!(backend("/db/../cache").is_err(), "climbs out of /db");
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.backend_buffers, Buffers::default());
        assert!(config("").unwrap().routes.is_empty());
    }

    #[test]
    fn bad_routes_name_the_entry() {
        for bad in [
            "db=127.0.0.1:1",
            "/db",
            "/db=127.0.0.1",
            "/db=host:0",
            "/a=h:1,/a=h:2",
        ] {
            let error = config(bad).unwrap_err();
            assert!(
                error.starts_with("invalid SWITCHYARD_TUNNEL_ROUTES entry"),
                "{bad}: {error}"
            );
        }
    }
}
