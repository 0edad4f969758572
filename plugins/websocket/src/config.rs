//! The plugin's settings, from the daemon's environment, read once when it loads.

use crate::origin::Origins;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `SWITCHYARD_WEBSOCKET_MAX_MESSAGE`: largest message in bytes; larger: close 1009.
    pub max_message: usize,
    /// `SWITCHYARD_WEBSOCKET_ORIGINS`: which pages may open a WebSocket; `None` (unset):
    /// any for `echo` routes, the daemon's own origin for routes to services.
    pub origins: Option<Origins>,
    /// `SWITCHYARD_WEBSOCKET_HOSTS`: names a page over `http` may be the same origin on,
    /// besides IP addresses and `localhost` (DNS rebinding, see [`crate::origin`]); `None`
    /// (`*`): any.
    pub http_hosts: Option<Vec<String>>,
    /// `SWITCHYARD_WEBSOCKET_PROTOCOLS`: subprotocols offered, in our order of preference.
    pub protocols: Vec<String>,
    /// `SWITCHYARD_WEBSOCKET_IDLE_MS` (default 30 s, `off`: none): ping a peer silent this
    /// long; close 1001 if it stays so.
    pub idle: Option<Duration>,
    /// `SWITCHYARD_WEBSOCKET_DEFLATE` (default on): accept permessage-deflate offers.
    pub deflate: bool,
    /// `SWITCHYARD_WEBSOCKET_ROUTES`: services by path; empty: every path is echo.
    pub routes: Vec<crate::routes::Route>,
    /// `SWITCHYARD_WEBSOCKET_CONNECT_TIMEOUT_MS` (default 5000): dialling a `tcp://` service;
    /// longer gets `504`.
    pub connect_timeout: Duration,
    /// `SWITCHYARD_WEBSOCKET_MAX_DIALS` (default 64): dials under way at once to one
    /// `tcp://` or `unix:` service (each holds a worker), and a quarter of that in all for one client;
    /// past either, `503`.
    pub max_dials: usize,
    /// `SWITCHYARD_WEBSOCKET_MAX_PROCESSES` (default 256): programs of `exec:` routes
    /// running at once; past it, `503`.
    pub max_processes: usize,
    /// `SWITCHYARD_WEBSOCKET_MAX_PROCESSES_PER_CLIENT` (default a quarter of
    /// `max_processes`): of them, most for one client address; past it, `503`.
    pub max_processes_per_client: usize,
    /// `SWITCHYARD_WEBSOCKET_INFLATE_PER_CLIENT` (default [`INFLATE_PER_CLIENT`]): bytes a
    /// second one client address's compressed messages may inflate to (0: no limit).
    pub inflate_per_client: u32,
    /// `SWITCHYARD_WEBSOCKET_STARTS_PER_CLIENT` (default 10): programs one client address
    /// may start a second, in bursts of up to twice as many; past it, `503`.
    pub starts_per_client: u32,
    /// `SWITCHYARD_WEBSOCKET_TOKEN_MISSES_PER_CLIENT` (default 5): unknown tokens one
    /// client address may ask a `tokens:` route for a second, in bursts of twice as many;
    /// past it, `429` (0: no limit).
    pub token_misses_per_client: u32,
    /// `SWITCHYARD_WEBSOCKET_PASSENV` (default `PATH,LD_LIBRARY_PATH`, as websocketd's
    /// `--passenv`): the daemon's environment variables an `exec:` program gets besides
    /// CGI's.
    pub passenv: Vec<String>,
}

/// Bytes a second one client address's compressed messages may inflate to by default:
/// 64 MiB, about 1% of a core for a deflate bomb's zeros (inflated at some 6 GB/s) and a
/// sixth of one for data that inflates slowly, where one client sending bombs otherwise
/// kept a core busy for 8 MB/s sent.
pub const INFLATE_PER_CLIENT: u32 = 64 << 20;

/// How long a peer may be silent before it is pinged, unless told otherwise: 30 s, so that
/// a quiet client that is there (a browser answers pings by itself, even in a background
/// tab) keeps its connection past the daemon's idle limit (`SWITCHYARD_IDLE_MS`, 5 minutes)
/// and past the idle time-outs of proxies in front (nginx's `proxy_read_timeout` and an AWS
/// load balancer's, 60 s), and one that is gone is closed a minute after its last word.
/// Python's `websockets` pings every 20 s; uWebSockets by default too.
pub const DEFAULT_PING_AFTER: Duration = Duration::from_secs(30);

/// [`DEFAULT_PING_AFTER`], or half the daemon's idle limit (`SWITCHYARD_IDLE_MS`, the
/// daemon's setting, which it has checked) where that is shorter, so that a ping's answer
/// always comes in time.
fn default_ping_after(daemon_idle_ms: Option<&str>) -> Duration {
    daemon_idle_ms
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms / 2).max(Duration::from_millis(1)))
        .map_or(DEFAULT_PING_AFTER, |half| half.min(DEFAULT_PING_AFTER))
}

/// What `exec:` programs get of the daemon's environment unless told otherwise.
pub const DEFAULT_PASSENV: &str = "PATH,LD_LIBRARY_PATH";

fn list(value: &str) -> Vec<String> {
    protocol_api::fields::setting_list(value)
        .map(str::to_owned)
        .collect()
}

impl Config {
    pub fn from_env() -> Result<Config, String> {
        let mut config = Config::from_lookup(|name| std::env::var(name).ok())?;
        if std::env::var_os("SWITCHYARD_WEBSOCKET_IDLE_MS").is_none() {
            let daemon_idle = std::env::var("SWITCHYARD_IDLE_MS").ok();
            config.idle = Some(default_ping_after(daemon_idle.as_deref()));
        }
        Ok(config)
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let number = |name: &str, min: u64| -> Result<Option<u64>, String> {
            match lookup(name) {
                None => Ok(None),
                Some(value) => match value.trim().parse::<u64>() {
                    Ok(n) if n >= min => Ok(Some(n)),
                    _ => Err(format!(
                        "invalid {name}={value:?}: expected a whole number of at least {min}"
                    )),
                },
            }
        };
        let max_processes =
            number("SWITCHYARD_WEBSOCKET_MAX_PROCESSES", 1)?.map_or(256, |n| n as usize);
        let http_hosts = lookup("SWITCHYARD_WEBSOCKET_HOSTS")
            .map_or(Some(Vec::new()), |v| crate::origin::parse_hosts(&v));
        Ok(Config {
            max_message: number("SWITCHYARD_WEBSOCKET_MAX_MESSAGE", 1)?
                .map_or(16 << 20, |n| n as usize),
            origins: lookup("SWITCHYARD_WEBSOCKET_ORIGINS")
                .map(|v| Origins::parse(&v).map(|o| o.with_http_hosts(http_hosts.clone())))
                .transpose()?,
            http_hosts,
            passenv: list(
                &lookup("SWITCHYARD_WEBSOCKET_PASSENV").unwrap_or(DEFAULT_PASSENV.into()),
            ),
            protocols: lookup("SWITCHYARD_WEBSOCKET_PROTOCOLS")
                .map(|v| list(&v))
                .unwrap_or_default(),
            idle: match lookup("SWITCHYARD_WEBSOCKET_IDLE_MS")
                .as_deref()
                .map(str::trim)
            {
                Some("off") => None,
                _ => Some(
                    number("SWITCHYARD_WEBSOCKET_IDLE_MS", 1)?
                        .map_or(DEFAULT_PING_AFTER, Duration::from_millis),
                ),
            },
            routes: crate::routes::parse(&lookup(crate::routes::ROUTES).unwrap_or_default())?,
            connect_timeout: Duration::from_millis(
                number("SWITCHYARD_WEBSOCKET_CONNECT_TIMEOUT_MS", 1)?.unwrap_or(5000),
            ),
            max_dials: number("SWITCHYARD_WEBSOCKET_MAX_DIALS", 1)?.map_or(64, |n| n as usize),
            max_processes,
            max_processes_per_client: number("SWITCHYARD_WEBSOCKET_MAX_PROCESSES_PER_CLIENT", 1)?
                .map_or((max_processes / 4).max(1), |n| n as usize),
            inflate_per_client: number("SWITCHYARD_WEBSOCKET_INFLATE_PER_CLIENT", 0)?
                .map_or(INFLATE_PER_CLIENT, |n| n.min(u32::MAX.into()) as u32),
            starts_per_client: number("SWITCHYARD_WEBSOCKET_STARTS_PER_CLIENT", 1)?
                .map_or(10, |n| n.min(u32::MAX.into()) as u32),
            token_misses_per_client: number("SWITCHYARD_WEBSOCKET_TOKEN_MISSES_PER_CLIENT", 0)?
                .map_or(5, |n| n.min(u32::MAX.into()) as u32),
            deflate: match lookup("SWITCHYARD_WEBSOCKET_DEFLATE")
                .as_deref()
                .map(str::trim)
            {
                None | Some("1" | "on" | "true") => true,
                Some("0" | "off" | "false") => false,
                Some(other) => {
                    return Err(format!(
                        "invalid SWITCHYARD_WEBSOCKET_DEFLATE={other:?}: expected on or off"
                    ))
                }
            },
        })
    }
}

/// Every setting the plugin reads, for the daemon's `--help` and `--check` (the README's
/// table says more).
pub const SETTINGS: &[protocol_api::Setting] = &[
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_ROUTES", "unset: every path is echo", "services by path prefix: /vnc=tcp://127.0.0.1:5900, /logs=unix:/run/logs.sock, /count=exec:/usr/local/bin/count, exec-binary:, exec-shared:, exec-shared-binary:, exec-dir:/srv/ws (a folder of programs, the path naming one), exec-dir-binary:, tokens:/etc/switchyard/tokens, /=echo; a path no route covers is declined"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_ORIGINS", "* on echo routes, same-origin on routes to services", "the pages (Origin) that may open a WebSocket, comma-separated: origins, same-origin, or *"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_HOSTS", "none: IP addresses and localhost only", "names (Host) a page over http may be the same origin on, comma-separated; * for any (DNS rebinding: a rebound name is its own origin)"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_PROTOCOLS", "none", "subprotocols offered, in our preference"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_IDLE_MS", "30000, or half SWITCHYARD_IDLE_MS if shorter", "ping a peer silent this long; close 1001 if it stays silent as long again (a quiet client that is there answers, and so outlives SWITCHYARD_IDLE_MS and the idle time-outs of proxies in front: nginx's and AWS load balancers' 60 s); off: never ping, and a quiet client is cut at SWITCHYARD_IDLE_MS with no close frame"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_DEFLATE", "on", "accept permessage-deflate (RFC 7692) offers; off to never compress"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_MAX_MESSAGE", "16777216", "largest message in bytes; larger: close 1009"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_INFLATE_PER_CLIENT", "67108864", "bytes a second one client address's compressed messages may inflate to, in bursts of twice as many (inflating costs CPU: a deflate bomb's few KiB inflate to MiBs); past it, its connections' compressed messages wait, unread, until it may go on; 0: no limit"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_CONNECT_TIMEOUT_MS", "5000", "time to dial a tcp:// service before the 101; late: 504 (refused: 502)"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_MAX_DIALS", "64", "most dials under way at once to one tcp:// or unix: service (a route's, or each a tokens: route names), and one client address at most a quarter of that in all, one while fewer than a quarter are free (each holds a worker until the service answers or the connect time-out passes, so a dead service cannot hold them all, nor one client keep the others from it or hold many); past either, 503 with Retry-After"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_MAX_PROCESSES", "256", "programs of exec: routes running at once; past it, 503 with Retry-After"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_MAX_PROCESSES_PER_CLIENT", "a quarter of SWITCHYARD_WEBSOCKET_MAX_PROCESSES", "of those programs, most for one client address (an IPv6 client: its /64); past it, 503 with Retry-After (while fewer are free than this, a client holding a sixteenth of it or more gets no more)"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_STARTS_PER_CLIENT", "10", "programs of exec: routes one client address may start a second, in bursts of twice as many; faster, 503 with Retry-After"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_TOKEN_MISSES_PER_CLIENT", "5", "unknown tokens one client address may ask a tokens: route for a second, in bursts of twice as many; past it, 429 with Retry-After for every token from that address, the right one too, until it has waited (so everyone behind a shared address waits with it); 0: no limit"),
    protocol_api::Setting::new("SWITCHYARD_WEBSOCKET_PASSENV", "PATH,LD_LIBRARY_PATH", "the daemon's environment variables an exec: program gets besides CGI's"),
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

    #[test]
    fn defaults_and_errors() {
        let config = Config::from_lookup(|_| None).unwrap();
        assert_eq!(
            config,
            Config {
                max_message: 16 << 20,
                origins: None,
                http_hosts: Some(vec![]),
                protocols: vec![],
                idle: Some(Duration::from_secs(30)),
                deflate: true,
                routes: vec![],
                connect_timeout: Duration::from_secs(5),
                max_dials: 64,
                max_processes: 256,
                max_processes_per_client: 64,
                inflate_per_client: 64 << 20,
                starts_per_client: 10,
                token_misses_per_client: 5,
                passenv: vec!["PATH".into(), "LD_LIBRARY_PATH".into()],
            }
        );
        let error =
            Config::from_lookup(|n| (n == "SWITCHYARD_WEBSOCKET_IDLE_MS").then(|| "soon".into()))
                .unwrap_err();
        assert!(
            error.contains("SWITCHYARD_WEBSOCKET_IDLE_MS=\"soon\""),
            "{error}"
        );
        let config = Config::from_lookup(|n| {
            (n == "SWITCHYARD_WEBSOCKET_PROTOCOLS").then(|| " chat, ,v2.json ".into())
        })
        .unwrap();
        assert_eq!(config.protocols, ["chat", "v2.json"]);
        let idle = |v: &'static str| {
            Config::from_lookup(|n| (n == "SWITCHYARD_WEBSOCKET_IDLE_MS").then(|| v.into()))
                .unwrap()
                .idle
        };
        assert_eq!(idle("off"), None);
        assert_eq!(default_ping_after(None), Duration::from_secs(30));
        assert_eq!(default_ping_after(Some("300000")), Duration::from_secs(30));
        assert_eq!(default_ping_after(Some("20000")), Duration::from_secs(10));
        assert_eq!(idle("1500"), Some(Duration::from_millis(1500)));
    }
}
