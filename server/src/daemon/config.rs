//! Settings: read from the environment in one place, validated once, at start.
//!
//! Every invalid value stops the start with a message naming the variable and the value;
//! `main` exits with status 2.

use crate::proxy_protocol::{Mode, ProxyProtocol};
use crate::tls::certs::PairPaths;
use crate::tls::ClientAuth;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use switchyard::files::FileRoute;
use switchyard::forwarded::Forwarders;

/// Everything the daemon can be told, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// `SWITCHYARD_LISTEN`: where to accept connections.
    pub listen: SocketAddr,
    /// `SWITCHYARD_PLUGIN_DIR`: the folder of plugin libraries.
    pub plugin_dir: PathBuf,
    /// `SWITCHYARD_WORKERS`: most upgraded connections served at once.
    pub workers: usize,
    /// `SWITCHYARD_MAX_CONNECTIONS`: most open client connections, HTTP and upgraded.
    pub max_connections: usize,
    /// `SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT`: most of them from one client address.
    pub max_connections_per_client: usize,
    /// `SWITCHYARD_WORKERS_PER_CLIENT`: most worker slots one client address holds.
    pub workers_per_client: usize,
    /// `SWITCHYARD_MAX_HEADER_BYTES`: largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// `SWITCHYARD_MAX_TARGET_BYTES`: longest request target.
    pub max_target_bytes: usize,
    /// `SWITCHYARD_MAX_BODY_BYTES`: largest request body kept for an upgrade request.
    pub max_body_bytes: usize,
    /// `SWITCHYARD_HEADER_TIMEOUT_MS`: time to receive a whole request head (and, again, its body).
    pub header_timeout: Duration,
    /// `SWITCHYARD_SHUTDOWN_GRACE_MS`: time given to live connections after SIGTERM.
    pub shutdown_grace: Duration,
    /// `SWITCHYARD_STOP_DELAY_MS`: after SIGTERM, how long `/readyz` says `503` while
    /// everything else goes on, before the stop begins.
    pub stop_delay: Duration,
    /// `SWITCHYARD_WORKER_STACK_BYTES`: stack size of a worker thread.
    pub worker_stack_bytes: usize,
    /// `SWITCHYARD_IO_THREADS`: event-loop threads (HTTP/1.1 and readiness plugins).
    pub io_threads: usize,
    /// `SWITCHYARD_IDLE_MS`: an upgraded connection with no bytes either way this long is
    /// closed.
    pub idle: Duration,
    /// `SWITCHYARD_WRITE_TIMEOUT_MS`: a connection whose peer takes no bytes this long
    /// while output waits (ours or the kernel's) is closed.
    pub write_timeout: Duration,
    /// `SWITCHYARD_PLUGIN_PANIC_LIMIT`: a plugin that panics more often than this within a
    /// minute leaves service until a restart; 0 never takes one out.
    pub plugin_panic_limit: u64,
    /// `SWITCHYARD_PROXY_PROTOCOL` and `SWITCHYARD_PROXY_FROM`.
    pub proxy_protocol: ProxyProtocol,
    /// `SWITCHYARD_FORWARDED_FROM`: HTTP proxies whose `X-Forwarded-For` names the client.
    pub forwarded_from: Forwarders,
    /// `SWITCHYARD_REUSE_PORT`: bind with SO_REUSEPORT, beside other instances.
    pub reuse_port: bool,
    /// `SWITCHYARD_CLIENT_RCVBUF` and `SWITCHYARD_CLIENT_SNDBUF`: the kernel buffers of
    /// client connections (none: the kernel sizes them as the connection goes).
    pub client_buffers: SocketBuffers,
    /// `SWITCHYARD_TLS_CERT` and `SWITCHYARD_TLS_KEY`, paired in order: the listener
    /// speaks TLS when there is one (none: cleartext).
    pub tls: Vec<PairPaths>,
    /// `SWITCHYARD_STATIC_ROUTES`: folders whose files are answered to `GET` and `HEAD`.
    pub static_routes: Vec<FileRoute>,
    /// `SWITCHYARD_DEVCONSOLE`: a browser's plain `GET` gets the development console.
    pub devconsole: bool,
    /// `SWITCHYARD_TLS_LISTEN`: a TLS listener beside `listen`, which then stays cleartext.
    pub tls_listen: Option<SocketAddr>,
    /// `SWITCHYARD_TLS_HANDSHAKES_PER_CLIENT`: TLS handshakes one client address may begin
    /// a second (bursts of twice as many); 0: no limit.
    pub tls_handshakes_per_client: u32,
    /// `SWITCHYARD_TLS_CLIENT_CA` and `SWITCHYARD_TLS_CLIENT_AUTH`: client certificates.
    pub tls_clients: Option<ClientAuth>,
    /// `SWITCHYARD_ACCESS_LOG`: the access line as text, or as one JSON object.
    pub access_json: bool,
    /// `SWITCHYARD_RESPONSE_HEADERS`: fields added to every response the daemon writes.
    pub response_headers: crate::http::response::ExtraFields,
    /// `SWITCHYARD_STATUS_FROM`: the addresses `/status` is answered to.
    pub status_from: Vec<ipnet::IpNet>,
    /// `SWITCHYARD_METRICS_FROM`: the addresses `/metrics` is answered to.
    pub metrics_from: Vec<ipnet::IpNet>,
}

/// One setting as an operator sees it: in `--help` and in the README's table, which a test
/// keeps identical to this one.
#[derive(Debug)]
pub struct Setting {
    pub variable: &'static str,
    /// As the README writes it (Markdown code spans in backticks).
    pub default: &'static str,
    pub meaning: &'static str,
}

/// The names of [`SETTINGS`] that are environment variables of the daemon's.
pub fn daemon_setting_names() -> Vec<&'static str> {
    SETTINGS.iter().map(|s| s.variable).collect()
}

/// Every setting of the daemon, in the README's order.
/// `/metrics` is answered to these by default: loopback, and the private ranges a
/// scraper in the same network or cluster speaks from (RFC 1918, RFC 6598's shared space
/// some clusters use for pods, RFC 4193), not the internet.
const PRIVATE_NETWORKS: [&str; 7] = [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

pub const SETTINGS: &[Setting] = &[
    Setting {
        variable: "SWITCHYARD_LISTEN",
        default: "`127.0.0.1:8080`",
        meaning: "address and port to listen on",
    },
    Setting {
        variable: "SWITCHYARD_PLUGIN_DIR",
        default: "the folder holding the `switchyard` executable",
        meaning: "folder of plugin libraries (`*.so`), loaded in name order; unreadable, or writable by anyone but the daemon's user and root (as sshd's `StrictModes`): exit 2 naming the fix; such a file is skipped",
    },
    Setting {
        variable: "SWITCHYARD_IO_THREADS",
        default: "the number of cores the daemon may run on",
        meaning: "event-loop threads: each accepts connections, speaks HTTP/1.1 and runs readiness-driven plugins on the connections it switched",
    },
    Setting {
        variable: "SWITCHYARD_WORKERS",
        default: "`1024`",
        meaning: "most connections served by blocking plugins at once (one worker thread each); past it, `503` with `Retry-After`. Readiness-driven plugins use no worker",
    },
    Setting {
        variable: "SWITCHYARD_MAX_CONNECTIONS",
        default: "`10000`",
        meaning: "most open client connections, HTTP and upgraded (both kinds); past it, new connections wait in the listen backlog",
    },
    Setting {
        variable: "SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT",
        default: "a quarter of `SWITCHYARD_MAX_CONNECTIONS` (`2500`)",
        meaning: "most open connections from one client address (an IPv6 client: its /64; behind the PROXY protocol, the address the header gives; until it comes, a connection counts apart, among its load balancer's awaiting their header, as many as this and no fewer while crowded, past which the balancer's oldest such connections are closed to make room); past it, `503` with `Retry-After` at once (HTTP/2 with prior knowledge, once its preface has begun: GOAWAY `REFUSED_STREAM`), and the connection is closed (16 such refusals at a time wait for their answer to be read, fewer while the server is crowded; past them, closed unanswered). While fewer connections are free than this (or than what is left of `SWITCHYARD_MAX_CONNECTIONS` past it, whichever is less), a client holding a sixteenth of it or more gets no more: the last connections go to clients that hold few",
    },
    Setting {
        variable: "SWITCHYARD_WORKERS_PER_CLIENT",
        default: "a quarter of `SWITCHYARD_WORKERS` (`256`)",
        meaning: "most worker slots one client address holds (connections of blocking plugins, and readiness plugins' requests negotiated on a worker); past it, `503` with `Retry-After` (HTTP/2 with prior knowledge: GOAWAY `REFUSED_STREAM`). While fewer slots are free than this, a client holding a sixteenth of it or more gets no more",
    },
    Setting {
        variable: "SWITCHYARD_IDLE_MS",
        default: "`300000`",
        meaning: "an upgraded connection with no bytes either way this long is closed (access line `reason=\"idle\"`); bytes a plugin moves itself count, as the kernel sees them",
    },
    Setting {
        variable: "SWITCHYARD_WRITE_TIMEOUT_MS",
        default: "`30000`",
        meaning: "a connection whose peer takes no bytes this long while output waits is closed (taken: acknowledged, as the kernel counts it), output the kernel holds included; what still waits is then dropped with a reset, never left queued in the kernel after the daemon lets the connection go; a plugin may set its own for its connections",
    },
    Setting {
        variable: "SWITCHYARD_PLUGIN_PANIC_LIMIT",
        default: "`10`",
        meaning: "a plugin that panics more than this many times within a minute leaves service until a restart: its tokens are no longer offered, a request for it alone gets `503`; `0` never takes one out",
    },
    Setting {
        variable: "SWITCHYARD_MAX_HEADER_BYTES",
        default: "`16384`",
        meaning: "largest request head; larger: `431`",
    },
    Setting {
        variable: "SWITCHYARD_MAX_TARGET_BYTES",
        default: "`8192`",
        meaning: "longest request target; longer: `414`",
    },
    Setting {
        variable: "SWITCHYARD_MAX_BODY_BYTES",
        default: "`65536`",
        meaning: "largest body of an upgrade request (held in memory, then handed to the plugin; h2c takes at most 65,535 bytes); larger: `413`",
    },
    Setting {
        variable: "SWITCHYARD_HEADER_TIMEOUT_MS",
        default: "`10000`",
        meaning: "time to receive a request head (and again its body), and to keep an idle connection; late: `408`",
    },
    Setting {
        variable: "SWITCHYARD_SHUTDOWN_GRACE_MS",
        default: "`10000`",
        meaning: "after SIGTERM/SIGINT, how long live connections get to finish",
    },
    Setting {
        variable: "SWITCHYARD_STOP_DELAY_MS",
        default: "`0`",
        meaning: "after SIGTERM/SIGINT, how long `/readyz` answers `503` before the stop begins, while new connections are still accepted and served as before: the time a load balancer (Kubernetes' endpoints) takes to stop sending here; then the listeners close and the grace period runs. A second signal begins the stop at once",
    },
    Setting {
        variable: "SWITCHYARD_WORKER_STACK_BYTES",
        default: "`262144`",
        meaning: "stack size of a worker thread (plugin code runs there); only the pages a plugin touches cost memory (about 12 KiB for a WebSocket)",
    },
    Setting {
        variable: "SWITCHYARD_PROXY_PROTOCOL",
        default: "`off`",
        meaning: "`v1`, `v2` or `any`: connections from `SWITCHYARD_PROXY_FROM` start with a PROXY protocol header (HAProxy's), and its client address is the peer everywhere (access line, plugins, `X-Forwarded-For`); a missing, malformed or incomplete one (within the head time-out), a v2 one longer than `SWITCHYARD_MAX_HEADER_BYTES` (as soon as its length is read), or one from any other peer, closes the connection with a log line",
    },
    Setting {
        variable: "SWITCHYARD_PROXY_FROM",
        default: "none",
        meaning: "the load balancers that send the PROXY protocol header, addresses or CIDR blocks, comma-separated; required when `SWITCHYARD_PROXY_PROTOCOL` is on. A peer listed here names any client it likes, so list the balancers' own addresses rather than a network others share",
    },
    Setting {
        variable: "SWITCHYARD_FORWARDED_FROM",
        default: "none",
        meaning: "HTTP proxies (nginx's `proxy_pass`, which cannot send the PROXY protocol) whose `X-Forwarded-For` names the client, addresses or CIDR blocks, comma-separated: for a request from one, the list's last address that is not such a proxy is the client (port 0) for the access line, plugins (`REMOTE_ADDR`) and the per-client limits; the proxy must set the header itself (nginx: `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`), or its clients name themselves. A connection counts against the proxy's own address before and between requests. List the proxies' own addresses: a listed peer names any client it likes",
    },
    Setting {
        variable: "SWITCHYARD_REUSE_PORT",
        default: "`off`",
        meaning: "`on`: bind with SO_REUSEPORT, so several instances share the port and the kernel spreads connections over them; one stopping refuses none (with `net.ipv4.tcp_migrate_req=1`, which the daemon warns about when it is 0: otherwise connections still queued on the stopping instance are reset)",
    },
    Setting {
        variable: "SWITCHYARD_CLIENT_RCVBUF",
        default: "unset: the kernel's autotuning",
        meaning: "bytes for each client connection's receive buffer (SO_RCVBUF, HAProxy's `tune.rcvbuf.client`), set on the listening socket so that the window offered in the handshake fits it; the kernel doubles it for its bookkeeping and caps it at `net.core.rmem_max`. Unset, a connection's buffer grows with its pace up to `net.ipv4.tcp_rmem`'s maximum, and what a client sent while its plugin (a tunnel to a backend that stopped reading) took nothing stays queued in it: kernel memory of the host's, outside the daemon's limits. Set, it bounds that, and a fast upload's pace to the buffer over the round trip. Not applied to sockets a service manager passes (the size would outlive the daemon on its socket): its `.socket` unit's `ReceiveBuffer=` says theirs",
    },
    Setting {
        variable: "SWITCHYARD_CLIENT_SNDBUF",
        default: "unset: the kernel's autotuning",
        meaning: "bytes for each client connection's send buffer (SO_SNDBUF, HAProxy's `tune.sndbuf.client`), likewise: unset, it grows up to `net.ipv4.tcp_wmem`'s maximum (4 MiB by default), of which about 64 KiB (1 MiB while the client's window is open) waits unsent for a client that stops reading; set, that much at most (doubled), and a download's pace to it over the round trip; under socket activation, `SendBuffer=`",
    },
    Setting {
        variable: "SWITCHYARD_STATIC_ROUTES",
        default: "none",
        meaning: "folders served to `GET` and `HEAD` by path prefix, comma-separated (`/=/usr/share/novnc`): the page of a WebSocket on its own origin. Content types by extension, `ETag` and `Last-Modified` with `304` and `412` (`If-Match`, `If-Unmodified-Since`), one byte range for a `GET` (`206`, `416`), other methods `405` with `Allow`, a folder's `index.html` (never a listing; a folder named without its slash, the route's own included, is sent to it with `301`), names with `%XX` escapes decoded (`a%20b.html`), `sendfile` (a part not in the page cache read first by a reader thread, not on an event loop; files under 16 KiB only once one such file was seen to wait for the disk); nothing outside the folder (dot-segments, encoded separators, symbolic links out: `400` or `404`; on kernels without `openat2`, before 5.6, no symbolic link is followed at all), no dot-files and nothing but regular files (`404`; a FIFO or a device is never opened). `/healthz`, `/metrics` and upgrades go on as before, and so does a `GET` no route covers (`426`)",
    },
    Setting {
        variable: "SWITCHYARD_DEVCONSOLE",
        default: "`off`",
        meaning: "`on`: a browser that opens a path as a page (`GET` with `Accept: text/html`, no `Upgrade`) that no static route covers, while a WebSocket plugin serves, gets a console that opens a WebSocket to the same address when Connect is clicked and shows each message each way, with a field to send text, as websocketd's `--devconsole` (for trying a route without a client; not served to a navigation from another site, `Sec-Fetch-Site`; it answers every such path, so leave it off in production: a warning at start says it is on)",
    },
    Setting {
        variable: "SWITCHYARD_TLS_CERT",
        default: "none (cleartext)",
        meaning: "PEM certificate chains, comma-separated (each: the server's certificate first, then its issuers): the listener speaks TLS 1.2 and 1.3 only, and a client is given the chain whose subjectAltName covers the name it asks for (SNI), else the first. Read again on SIGHUP; a set that does not load keeps the one in service",
    },
    Setting {
        variable: "SWITCHYARD_TLS_KEY",
        default: "none",
        meaning: "the PEM private keys of `SWITCHYARD_TLS_CERT`'s chains, in the same order (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519); a key that is not its certificate's, a chain out of order or an expired certificate stops the start with the file's name",
    },
    Setting {
        variable: "SWITCHYARD_TLS_LISTEN",
        default: "none",
        meaning: "a second address, for TLS: `SWITCHYARD_LISTEN` then stays cleartext (health checks, a port for the cluster inside) and this one speaks TLS with `SWITCHYARD_TLS_CERT`'s pairs; without it, `SWITCHYARD_LISTEN` speaks TLS when certificates are set. Under socket activation, the second socket passed",
    },
    Setting {
        variable: "SWITCHYARD_TLS_HANDSHAKES_PER_CLIENT",
        default: "`100`",
        meaning: "TLS handshakes one client address (an IPv6 client: its /64; behind the PROXY protocol, the address the header gives) may begin a second, in bursts of twice as many, once the daemon begins more than four times as many in all (each costs it a signature, about 0.4 ms of a core with RSA 2048); past it, the connection is closed before its handshake, with a log line and `switchyard_tls_handshake_failures_total{reason=\"rate\"}`. Behind a proxy that hides client addresses (no PROXY protocol, or Kubernetes' SNAT) every client shares one: raise it, or `0`: no limit",
    },
    Setting {
        variable: "SWITCHYARD_TLS_CLIENT_CA",
        default: "none",
        meaning: "PEM certificates of the authorities whose client certificates are accepted: a client that presents one signed by them is told to plugins (`Request::tls`) and to `exec:` programs (`SSL_CLIENT_S_DN`, `SSL_CLIENT_VERIFY=SUCCESS`); one that presents another is refused in the handshake. Read again on SIGHUP",
    },
    Setting {
        variable: "SWITCHYARD_TLS_CLIENT_AUTH",
        default: "`optional`",
        meaning: "`required`: a client with no certificate is refused in the handshake too (needs `SWITCHYARD_TLS_CLIENT_CA`)",
    },
    Setting {
        variable: "SWITCHYARD_ACCESS_LOG",
        default: "`text`",
        meaning: "`json`: each access line is one JSON object (`time`, `peer`, `method`, `target`, `version`, `status`, `proto`, `tls`, `in`, `out`, `seconds`, `host`, `origin`, `referer`, `user_agent`, `reason`; a field not sent is `null`), written alone on its line, for log shippers, and every other line one too (`time`, `level`, `target`, `message`); `text`: the line described below this table",
    },
    Setting {
        variable: "SWITCHYARD_RESPONSE_HEADERS",
        default: "none",
        meaning: "header fields added to the answers the daemon writes (its own, static files, the `101`), `Name: value`, one a line: `Strict-Transport-Security: max-age=63072000`, as nginx's `add_header` adds them: on answers of 1xx to 3xx, not on errors (a cache would keep a `503` with a page's `Cache-Control`); `Strict-Transport-Security` over TLS only (RFC 6797); a response with a field of that name keeps its own. Visible ASCII only, 8 KiB at most; framing, body and switching fields (`Content-Length`, `Content-Type`, `Location`, `Connection`, `Upgrade`, `Date`, `Sec-WebSocket-*`, ...) are refused at start. HTTP/2 answers the h2c plugin passes on from its backends carry them too, names in lowercase",
    },
    Setting {
        variable: "SWITCHYARD_STATUS_FROM",
        default: "`127.0.0.0/8,::1`",
        meaning: "the addresses (or CIDR blocks, comma-separated) that may open `/status`, a live page of the daemon (plugins, connections, rates, refusals, settings), and its data `/status.json`; others get `403`, as does a request whose `Host` is a name other than `localhost` (a DNS-rebinding page cannot read it) or that came through a proxy (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`, `Via`); `none`: nobody",
    },
    Setting {
        variable: "SWITCHYARD_METRICS_FROM",
        default: "private networks: `127.0.0.0/8,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7`",
        meaning: "the addresses (or CIDR blocks, comma-separated) that may read `/metrics` (a Prometheus scraper in the same network, a Kubernetes cluster's, is among them); others get `403`, as does a request that came through a proxy (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`, `Via`): the metrics name routes, plugins and certificate files; `any`: everyone, `none`: nobody",
    },
    Setting {
        variable: "RUST_LOG",
        default: "`info`",
        meaning: "log filter ([env_logger](https://docs.rs/env_logger)); `switchyard::access=off` silences the access log; a `/text` suffix keeps only lines containing `text` (a plain substring: env_logger's regular expressions are not built in). Warnings a client causes by connecting (over its limit, a refused PROXY header, HTTP/2 not served, no capacity) are written once a second at most, each kind, with how many were not. Lines go to stderr from a thread of their own, so a reader that does not keep up never stalls serving: past 16,384 waiting lines or 4 MiB of them they are dropped, and the count is logged (warnings and errors have 1,024 lines and 1 MiB more, so a flood of access lines does not drop them)",
    },
];

/// An address to listen on: an IP address and a port, as the listener binds it (no name
/// is looked up, so `localhost:8080` or a bare `8080` say what to write instead).
fn listen_address(value: &str) -> Result<SocketAddr, String> {
    value.trim().parse::<SocketAddr>().map_err(|_| {
        "expected an IP address and a port: 127.0.0.1:8080, 0.0.0.0:8080 (every IPv4 \
         address), [::]:8080 (every address)"
            .to_string()
    })
}

/// A setting that could not be used.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: {}",
            self.variable, self.value, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |variable: &'static str| lookup(variable).map(|value| (variable, value));
        let workers = parse_or(get("SWITCHYARD_WORKERS"), 1024, |v| count(v, 1, 1 << 20))?;
        let max_connections = parse_or(get("SWITCHYARD_MAX_CONNECTIONS"), 10_000, |v| {
            count(v, 1, 1 << 24)
        })?;
        Ok(Config {
            listen: parse_or(
                get("SWITCHYARD_LISTEN"),
                "127.0.0.1:8080".parse().unwrap(),
                listen_address,
            )?,
            plugin_dir: match get("SWITCHYARD_PLUGIN_DIR") {
                Some((_, dir)) if !dir.is_empty() => PathBuf::from(dir),
                Some((variable, value)) => {
                    return Err(ConfigError {
                        variable,
                        value,
                        reason: "empty path".into(),
                    })
                }
                None => default_plugin_dir(),
            },
            workers,
            max_connections,
            max_connections_per_client: parse_or(
                get("SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT"),
                (max_connections / 4).max(1),
                |v| count(v, 1, 1 << 24),
            )?,
            workers_per_client: parse_or(
                get("SWITCHYARD_WORKERS_PER_CLIENT"),
                (workers / 4).max(1),
                |v| count(v, 1, 1 << 20),
            )?,
            max_header_bytes: parse_or(get("SWITCHYARD_MAX_HEADER_BYTES"), 16 * 1024, |v| {
                count(v, 256, 1 << 24)
            })?,
            max_target_bytes: parse_or(get("SWITCHYARD_MAX_TARGET_BYTES"), 8192, |v| {
                count(v, 16, 1 << 24)
            })?,
            max_body_bytes: parse_or(get("SWITCHYARD_MAX_BODY_BYTES"), 64 * 1024, |v| {
                count(v, 0, 1 << 30)
            })?,
            header_timeout: parse_or(
                get("SWITCHYARD_HEADER_TIMEOUT_MS"),
                Duration::from_secs(10),
                millis,
            )?,
            shutdown_grace: parse_or(
                get("SWITCHYARD_SHUTDOWN_GRACE_MS"),
                Duration::from_secs(10),
                millis,
            )?,
            stop_delay: parse_or(get("SWITCHYARD_STOP_DELAY_MS"), Duration::ZERO, |v| {
                count(v, 0, 3600 * 1000).map(|ms| Duration::from_millis(ms as u64))
            })?,
            worker_stack_bytes: parse_or(get("SWITCHYARD_WORKER_STACK_BYTES"), 256 * 1024, |v| {
                count(v, 64 * 1024, 1 << 30)
            })?,
            io_threads: parse_or(get("SWITCHYARD_IO_THREADS"), default_io_threads(), |v| {
                count(v, 1, 1024)
            })?,
            idle: parse_or(get("SWITCHYARD_IDLE_MS"), Duration::from_secs(300), millis)?,
            write_timeout: parse_or(
                get("SWITCHYARD_WRITE_TIMEOUT_MS"),
                Duration::from_secs(30),
                millis,
            )?,
            plugin_panic_limit: parse_or(get("SWITCHYARD_PLUGIN_PANIC_LIMIT"), 10, |v| {
                count(v, 0, 1 << 30).map(|n| n as u64)
            })?,
            proxy_protocol: proxy_protocol(
                get("SWITCHYARD_PROXY_PROTOCOL"),
                get("SWITCHYARD_PROXY_FROM"),
            )?,
            forwarded_from: parse_or(
                get("SWITCHYARD_FORWARDED_FROM"),
                Forwarders::default(),
                Forwarders::parse,
            )?,
            reuse_port: parse_or(get("SWITCHYARD_REUSE_PORT"), false, on_off)?,
            client_buffers: SocketBuffers {
                receive: parse_or(get("SWITCHYARD_CLIENT_RCVBUF"), None, buffer_bytes)?,
                send: parse_or(get("SWITCHYARD_CLIENT_SNDBUF"), None, buffer_bytes)?,
            },
            tls: tls_pairs(get("SWITCHYARD_TLS_CERT"), get("SWITCHYARD_TLS_KEY"))?,
            static_routes: parse_or(get("SWITCHYARD_STATIC_ROUTES"), Vec::new(), static_routes)?,
            devconsole: parse_or(get("SWITCHYARD_DEVCONSOLE"), false, on_off)?,
            access_json: parse_or(get("SWITCHYARD_ACCESS_LOG"), false, |v| match v.trim() {
                "text" => Ok(false),
                "json" => Ok(true),
                _ => Err("expected text or json".to_string()),
            })?,
            response_headers: parse_or(
                get("SWITCHYARD_RESPONSE_HEADERS"),
                Default::default(),
                crate::http::response::ExtraFields::parse,
            )?,
            status_from: parse_or(
                get("SWITCHYARD_STATUS_FROM"),
                vec![
                    "127.0.0.0/8".parse().expect("a CIDR block"),
                    "::1/128".parse().expect("a CIDR block"),
                ],
                |v| match v.trim() {
                    "none" => Ok(Vec::new()),
                    v => crate::proxy_protocol::ProxyProtocol::parse_from(v),
                },
            )?,
            metrics_from: parse_or(
                get("SWITCHYARD_METRICS_FROM"),
                PRIVATE_NETWORKS
                    .iter()
                    .map(|net| net.parse().expect("a CIDR block"))
                    .collect(),
                |v| match v.trim() {
                    "none" => Ok(Vec::new()),
                    "any" => Ok(vec![
                        "0.0.0.0/0".parse().expect("a CIDR block"),
                        "::/0".parse().expect("a CIDR block"),
                    ]),
                    v => crate::proxy_protocol::ProxyProtocol::parse_from(v),
                },
            )?,
            tls_listen: match get("SWITCHYARD_TLS_LISTEN") {
                None => None,
                Some((variable, value)) => {
                    let address = listen_address(&value).map_err(|reason| ConfigError {
                        variable,
                        value: value.clone(),
                        reason,
                    })?;
                    let listen: Option<SocketAddr> =
                        get("SWITCHYARD_LISTEN").and_then(|(_, v)| v.trim().parse().ok());
                    if listen.unwrap_or_else(|| "127.0.0.1:8080".parse().unwrap()) == address
                        && address.port() != 0
                    {
                        return Err(ConfigError {
                            variable,
                            value,
                            reason: "the same address as SWITCHYARD_LISTEN: give the TLS listener a port of its own".into(),
                        });
                    }
                    if get("SWITCHYARD_TLS_CERT").is_none() {
                        return Err(ConfigError {
                            variable,
                            value,
                            reason: "needs SWITCHYARD_TLS_CERT and SWITCHYARD_TLS_KEY".into(),
                        });
                    }
                    Some(address)
                }
            },
            tls_handshakes_per_client: parse_or(
                get("SWITCHYARD_TLS_HANDSHAKES_PER_CLIENT"),
                100,
                |v| count(v, 0, 1 << 24),
            )? as u32,
            tls_clients: client_auth(
                get("SWITCHYARD_TLS_CLIENT_CA"),
                get("SWITCHYARD_TLS_CLIENT_AUTH"),
            )?,
        })
    }
}

/// The PROXY protocol settings: `SWITCHYARD_PROXY_FROM` is required when it is on (a header
/// from anyone would let anyone choose the address they are logged as), and meaningless
/// when it is off.
fn proxy_protocol(
    mode: Option<(&'static str, String)>,
    from: Option<(&'static str, String)>,
) -> Result<ProxyProtocol, ConfigError> {
    let mode = parse_or(mode, Mode::Off, Mode::parse)?;
    let from = parse_or(from, Vec::new(), ProxyProtocol::parse_from)?;
    if mode != Mode::Off && from.is_empty() {
        return Err(ConfigError {
            variable: "SWITCHYARD_PROXY_FROM",
            value: String::new(),
            reason: "required when SWITCHYARD_PROXY_PROTOCOL is on: the load balancers' \
                     addresses or CIDR blocks"
                .into(),
        });
    }
    Ok(ProxyProtocol { mode, from })
}

/// The static routes, each folder there and made canonical (its symbolic links resolved,
/// so that a file's own resolved path can be checked against it).
fn static_routes(value: &str) -> Result<Vec<FileRoute>, String> {
    let mut routes = switchyard::files::parse_routes(value)?;
    for route in &mut routes {
        let folder = route.root.display().to_string();
        let real = std::fs::canonicalize(&route.root).map_err(|e| format!("{folder}: {e}"))?;
        if !real.is_dir() {
            return Err(format!("{folder} is not a folder"));
        }
        route.root = real;
    }
    Ok(routes)
}

/// Client certificates: a CA to verify them against, and whether one is required.
fn client_auth(
    ca: Option<(&'static str, String)>,
    mode: Option<(&'static str, String)>,
) -> Result<Option<ClientAuth>, ConfigError> {
    let required = parse_or(mode.clone(), false, |v| match v {
        "optional" => Ok(false),
        "required" => Ok(true),
        _ => Err("expected optional or required".into()),
    })?;
    match ca {
        Some((_, path)) if !path.trim().is_empty() => Ok(Some(ClientAuth {
            ca: PathBuf::from(path.trim()),
            required,
        })),
        Some((variable, value)) => Err(ConfigError {
            variable,
            value,
            reason: "empty path".into(),
        }),
        None if required => Err(ConfigError {
            variable: "SWITCHYARD_TLS_CLIENT_AUTH",
            value: "required".into(),
            reason:
                "needs SWITCHYARD_TLS_CLIENT_CA: the authorities whose certificates are accepted"
                    .into(),
        }),
        None => Ok(None),
    }
}

/// The certificate chains and keys, paired in order: as many of one as of the other.
fn tls_pairs(
    certs: Option<(&'static str, String)>,
    keys: Option<(&'static str, String)>,
) -> Result<Vec<PairPaths>, ConfigError> {
    let list = |value: &str| -> Vec<PathBuf> {
        value
            .split(',')
            .map(str::trim)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
            .collect()
    };
    let cert_paths = certs.as_ref().map(|(_, v)| list(v)).unwrap_or_default();
    let key_paths = keys.as_ref().map(|(_, v)| list(v)).unwrap_or_default();
    if cert_paths.len() != key_paths.len() {
        let (variable, value) = match (&certs, &keys) {
            (_, Some((variable, value))) if !key_paths.is_empty() => (*variable, value.clone()),
            (Some((variable, value)), _) => (*variable, value.clone()),
            _ => ("SWITCHYARD_TLS_KEY", String::new()),
        };
        return Err(ConfigError {
            variable,
            value,
            reason: format!(
                "{} certificate chain(s) in SWITCHYARD_TLS_CERT but {} key(s) in SWITCHYARD_TLS_KEY: \
                 give one key for each chain, in the same order",
                cert_paths.len(),
                key_paths.len()
            ),
        });
    }
    Ok(cert_paths
        .into_iter()
        .zip(key_paths)
        .map(|(cert, key)| PairPaths { cert, key })
        .collect())
}

/// The plugin folder `SWITCHYARD_PLUGIN_DIR` names, or the default, for `--help` (which
/// reads no other setting and refuses none).
pub fn plugin_dir_from_env() -> PathBuf {
    match std::env::var_os("SWITCHYARD_PLUGIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => default_plugin_dir(),
    }
}

/// The default plugin folder: the one holding the `switchyard` executable. `cargo build
/// --release` leaves the daemon and the workspace's plugins side by side in
/// `target/release/`, so the daemon finds them with no setting.
fn default_plugin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// One event loop per core the process may run on (`sched_getaffinity`, so `taskset` and
/// CPU quotas count).
fn default_io_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn parse_or<T>(
    setting: Option<(&'static str, String)>,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match setting {
        None => Ok(default),
        Some((variable, value)) => parse(value.trim()).map_err(|reason| ConfigError {
            variable,
            value,
            reason,
        }),
    }
}

fn on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("expected on or off".into()),
    }
}

fn count(value: &str, min: usize, max: usize) -> Result<usize, String> {
    let n: usize = value
        .parse()
        .map_err(|_| "not a whole number".to_string())?;
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between {min} and {max}"))
    }
}

/// Kernel buffer sizes for a kind of socket; `None`: the kernel's own sizing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketBuffers {
    pub receive: Option<usize>,
    pub send: Option<usize>,
}

/// A socket buffer's size: 4 KiB (the kernel's smallest TCP buffer, as it counts them
/// after doubling) to 1 GiB.
fn buffer_bytes(value: &str) -> Result<Option<usize>, String> {
    count(value, 4096, 1 << 30).map(Some)
}

fn millis(value: &str) -> Result<Duration, String> {
    count(value, 1, 24 * 3600 * 1000).map(|ms| Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    /// Every default the README's table states.
    #[test]
    fn defaults_are_documented_values() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.plugin_dir, default_plugin_dir());
        assert_eq!(c.workers, 1024);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_connections_per_client, 2500);
        assert_eq!(c.workers_per_client, 256);
        let small = config(&[
            ("SWITCHYARD_WORKERS", "2"),
            ("SWITCHYARD_MAX_CONNECTIONS", "40"),
        ]);
        let small = small.unwrap();
        assert_eq!(
            (small.workers_per_client, small.max_connections_per_client),
            (1, 10)
        );
        assert_eq!(c.max_header_bytes, 16384);
        assert_eq!(c.max_target_bytes, 8192);
        assert_eq!(c.max_body_bytes, 64 * 1024);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.worker_stack_bytes, 256 * 1024);
        assert_eq!(c.io_threads, default_io_threads());
        assert_eq!(c.idle, Duration::from_secs(300));
        assert_eq!(c.write_timeout, Duration::from_secs(30));
        assert_eq!(c.plugin_panic_limit, 10);
        assert_eq!(c.client_buffers, SocketBuffers::default());
    }

    /// The README's settings table and `--help` come from one table: every row of one is a
    /// row of the other, word for word.
    #[test]
    fn the_readme_lists_every_setting_as_this_table_does() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let rows: Vec<&str> = readme
            .lines()
            .filter(|l| l.starts_with("| `SWITCHYARD_") || l.starts_with("| `RUST_LOG`"))
            .filter(|l| {
                !l.contains("_WEBSOCKET_") && !l.contains("_TUNNEL_") && !l.contains("_H2C_")
            })
            .collect();
        let ours: Vec<String> = SETTINGS
            .iter()
            .map(|s| format!("| `{}` | {} | {} |", s.variable, s.default, s.meaning))
            .collect();
        assert_eq!(
            rows, ours,
            "README.md's settings table and config::SETTINGS differ"
        );
        // And every setting the daemon reads is in the table.
        let source = include_str!("config.rs");
        for read in source.split("get(\"").skip(1) {
            let variable = read.split('"').next().unwrap();
            assert!(
                SETTINGS.iter().any(|s| s.variable == variable),
                "{variable} is read but not documented"
            );
        }
    }

    #[test]
    fn invalid_values_name_the_variable_and_value() {
        let e = config(&[("SWITCHYARD_WORKERS", "lots")]).unwrap_err();
        assert_eq!(e.variable, "SWITCHYARD_WORKERS");
        assert_eq!(
            e.to_string(),
            "invalid SWITCHYARD_WORKERS=\"lots\": not a whole number"
        );
        for value in ["localhost", "8080", "localhost:8080"] {
            let e = config(&[("SWITCHYARD_LISTEN", value)]).unwrap_err();
            assert_eq!(e.variable, "SWITCHYARD_LISTEN");
            assert!(e.reason.contains("0.0.0.0:8080"), "{e}");
        }
        let e = config(&[("SWITCHYARD_HEADER_TIMEOUT_MS", "0")]).unwrap_err();
        assert!(e.reason.contains("between 1 and"), "{e}");
    }
}
