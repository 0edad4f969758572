//! switchyard: an HTTP/1.1 daemon that switches connections to other protocols
//! (`101 Switching Protocols`) served by plugins loaded from a folder at start.
//!
//! The path of a connection, one folder per stage, each importing only those before it:
//! an [`event_loop`] thread accepts it and drives an [`http1::conn::HttpConn`] over its
//! [`connection`] through request heads ([`http`]) and routing ([`route`]); an upgrade
//! request read whole goes to the [`switch`], which starts a readiness plugin's session on
//! the same loop or hands the connection to a worker thread ([`pool`]) for a blocking
//! plugin. Below them all, [`daemon`]: settings, shared state and limits, metrics, and
//! the main thread's signals and stop ([`daemon::supervisor`]); [`plugin`], the loaded
//! libraries and the only FFI; and the [`access`] log, which the daemon writes for each
//! exchange and plugins for exchanges inside their connections (an HTTP/2 stream).

// `unsafe` lives in two places: the plugin FFI (plugin::ffi; the connection callbacks are
// protocol_api::hosting) and the system calls (sys), each block with its `// SAFETY:` line.
#![deny(unsafe_code)]

mod access;
mod connection;
mod daemon;
mod event_loop;
mod http1;
mod plugin;
mod pool;
mod switch;
mod tls;

#[allow(unsafe_code)]
mod sys;

use daemon::{config, notify, supervisor};

/// The pure parts live in this package's library (also driven by the fuzzers).
use switchyard::{http, proxy_protocol, route};

use std::process::ExitCode;

/// Exit status for a start refused by its settings or plugin folder.
const EXIT_CONFIG: u8 = 2;

/// What the command line asks for.
enum Mode {
    Serve,
    Check,
}

fn main() -> ExitCode {
    let mode = match std::env::args().nth(1).as_deref() {
        None => Mode::Serve,
        Some("--check") => Mode::Check,
        Some("--version" | "-V") => {
            println!("{}", version());
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("switchyard: unknown option {other:?}; see switchyard --help");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    sys::return_large_blocks_to_the_system();
    // JSON from the first line when asked for (a setting refused at start is a line too);
    // the setting is checked with the others.
    access::use_json(std::env::var("SWITCHYARD_ACCESS_LOG").is_ok_and(|v| v.trim() == "json"));
    daemon::logger::init();
    protocol_api::moment::start();
    let status = run(mode);
    daemon::log_writer::drain(std::time::Duration::from_secs(2));
    status
}

fn run(mode: Mode) -> ExitCode {
    // systemd's variables are read and removed before any plugin loads: a plugin's `new()`
    // may start threads, and changing the environment while another thread may read it is
    // undefined behaviour in C (getenv, setenv).
    let notifier = notify::Notifier::from_env();
    let inherited = notify::listen_fds();
    let config = match config::Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    access::use_json(config.access_json);
    if config.devconsole {
        log::warn!(
            "SWITCHYARD_DEVCONSOLE is on: a browser opening any path as a page gets the \
             development console (for trying routes; leave it off in production)"
        );
    }
    let registry = match plugin::load_dir(&config.plugin_dir) {
        Ok(registry) => registry,
        Err(plugin::StartError::Folder(e)) => {
            log::error!(
                "cannot read the plugin folder {} (SWITCHYARD_PLUGIN_DIR): {e}",
                config.plugin_dir.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(plugin::StartError::Unsafe(why)) => {
            log::error!("{why} (SWITCHYARD_PLUGIN_DIR)");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(plugin::StartError::Settings { file, message }) => {
            log::error!(
                "plugin {}: {message}; not starting (fix the setting, or remove the plugin from the folder)",
                file.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Plugins are never unloaded and the shared state lives as long: every thread holds
    // them until the process exits.
    let registry: &'static plugin::Registry = Box::leak(Box::new(registry));
    for name in plugin::unread_settings(registry, &config::daemon_setting_names()) {
        log::warn!("{name} is set, but neither the daemon nor a loaded plugin reads it: misspelt, or its plugin is not in the folder?");
    }
    let tls = match load_tls(&config, registry) {
        Ok(tls) => tls,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Mode::Check = mode {
        print!("{}", check_report(&config, registry, tls.as_ref()));
        return ExitCode::SUCCESS;
    }
    raise_file_limit(config.max_connections);
    let activated = !inherited.is_empty();
    let listened = listen(&config, tls.is_some(), inherited);
    let buffers = config.client_buffers;
    let sized = listened.and_then(|l| size_client_buffers(&l, buffers, activated).map(|()| l));
    let listeners = match sized {
        Ok(listeners) => listeners,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let shared: &'static daemon::state::Shared =
        Box::leak(Box::new(daemon::state::Shared::new(config, registry, tls)));
    match serve(shared, listeners, notifier) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn version() -> String {
    format!(
        "switchyard {} (plugin ABI {}.{})",
        env!("CARGO_PKG_VERSION"),
        protocol_api::abi::ABI_MAJOR,
        protocol_api::abi::ABI_MINOR
    )
}

/// `--help`: the options, and every setting from the one table the README's is kept
/// identical to.
fn help() -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{}: an HTTP/1.1 daemon that switches connections to protocols served by plugins\n\n\
         Usage: switchyard [--check | --version | --help]\n\
         \x20 (none)     serve until SIGTERM or SIGINT; SIGHUP reloads the plugin folder\n\
         \x20 --check    check every setting and load the plugins, say what would serve which\n\
         \x20            token, and exit: 0, or 2 on any problem (the port is not bound)\n\
         \x20 --version  the version and the plugin ABI it loads\n\
         \x20 --help     this text\n\n\
         The daemon's settings, from the environment:\n",
        version()
    );
    for setting in config::SETTINGS {
        let plain = |text: &str| text.replace('`', "");
        let _ = writeln!(
            out,
            "  {} (default: {})\n      {}",
            setting.variable,
            plain(setting.default),
            plain(setting.meaning)
        );
    }
    let dir = config::plugin_dir_from_env();
    let _ = writeln!(
        out,
        "\nThe plugins' settings (SWITCHYARD_<PLUGIN>_*), as each plugin in {} declares them\n\
         (plugins built before ABI 1.6 declare none: see their documentation):",
        dir.display()
    );
    for (plugin, settings) in plugin::declared_settings(&dir) {
        let _ = writeln!(out, "plugin {plugin}:");
        for setting in settings {
            let _ = writeln!(
                out,
                "  {} (default: {})\n      {}",
                setting.name, setting.default, setting.help
            );
        }
    }
    out
}

/// `--check`: what the daemon would serve with these settings and plugins.
fn check_report(
    config: &config::Config,
    registry: &plugin::Registry,
    tls: Option<&tls::Tls>,
) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "settings: ok; would listen on {}{} with {} event loop(s), up to {} connections and {} workers\n",
        config.listen,
        config
            .tls_listen
            .map_or_else(String::new, |a| format!(" and, with TLS, on {a}")),
        config.io_threads,
        config.max_connections,
        config.workers
    );
    let _ = writeln!(out, "plugins from {}:", config.plugin_dir.display());
    if registry.plugins.is_empty() {
        out.push_str("  none: every upgrade request would get 426\n");
    }
    for plugin in &registry.plugins {
        let mode = if plugin.is_readiness() {
            "event loops"
        } else {
            "workers"
        };
        let _ = writeln!(
            out,
            "  {} [{}] on {mode}: {} ({})",
            plugin.name,
            plugin.tokens.join(", "),
            plugin.file.display(),
            plugin.build
        );
        for setting in &plugin.settings {
            let _ = match std::env::var(&setting.name) {
                Ok(value) => writeln!(out, "    {}={value}", setting.name),
                Err(_) => writeln!(
                    out,
                    "    {} unset (default: {})",
                    setting.name, setting.default
                ),
            };
        }
    }
    for name in plugin::unread_settings(registry, &config::daemon_setting_names()) {
        let _ = writeln!(
            out,
            "warning: {name} is set, but neither the daemon nor a loaded plugin reads it"
        );
    }
    let in_service = |_: usize| true;
    let _ = writeln!(
        out,
        "Upgrade tokens offered: {}",
        registry.tokens.advertised(&in_service)
    );
    match tls {
        None => out.push_str("TLS: off (SWITCHYARD_TLS_CERT not set)\n"),
        Some(tls) => {
            out.push_str("TLS 1.2 and 1.3, certificates:\n");
            for line in tls.describe() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

/// The listener's TLS side, when certificates are set: each pair read and checked, its
/// warnings logged (a certificate about to expire). ALPN offers `h2` when a plugin takes
/// HTTP/2 over TLS ([`http1::prior_knowledge::takes_tls`]).
fn load_tls(
    config: &config::Config,
    registry: &'static plugin::Registry,
) -> Result<Option<tls::Tls>, String> {
    if config.tls.is_empty() {
        return match config.tls_clients {
            Some(_) => Err(
                "SWITCHYARD_TLS_CLIENT_CA is set but SWITCHYARD_TLS_CERT is not: \
                            client certificates need a TLS listener"
                    .into(),
            ),
            None => Ok(None),
        };
    }
    // Static files are served over HTTP/1.1: a browser that offers both protocols is
    // given HTTP/1.1 when there are pages to load, so that they reach the daemon.
    let alpn = match http1::prior_knowledge::takes_tls(registry) {
        false => tls::Alpn::Http1,
        true if config.static_routes.is_empty() => tls::Alpn::H2First,
        true => tls::Alpn::Http1First,
    };
    let (tls, warnings) = tls::Tls::load(config.tls.clone(), config.tls_clients.clone(), alpn)?;
    for warning in warnings {
        log::warn!("{warning}");
    }
    Ok(Some(tls))
}

/// The listening sockets: `SWITCHYARD_LISTEN` (TLS when certificates are set and
/// `SWITCHYARD_TLS_LISTEN` is not), and `SWITCHYARD_TLS_LISTEN` (TLS) beside it. Under
/// socket activation, the sockets the service manager passed, in the same order.
fn listen(
    config: &config::Config,
    tls: bool,
    mut inherited: Vec<std::os::fd::OwnedFd>,
) -> Result<Vec<event_loop::Listener>, String> {
    let mut wanted = vec![(
        config.listen,
        "SWITCHYARD_LISTEN",
        tls && config.tls_listen.is_none(),
    )];
    if let Some(address) = config.tls_listen {
        wanted.push((address, "SWITCHYARD_TLS_LISTEN", true));
    }
    if !inherited.is_empty() {
        if inherited.len() > wanted.len() {
            log::warn!(
                "{} sockets passed by the service manager; serving the first {}",
                inherited.len(),
                wanted.len()
            );
        }
        if inherited.len() < wanted.len() {
            return Err(format!(
                "{} socket(s) passed by the service manager, but SWITCHYARD_TLS_LISTEN asks for \
                 {}: the cleartext one first, then the TLS one",
                inherited.len(),
                wanted.len()
            ));
        }
        match wanted.len() {
            1 => log::info!("serving the socket the service manager passed (socket activation)"),
            n => {
                log::info!("serving the {n} sockets the service manager passed (socket activation)")
            }
        }
        return Ok(wanted
            .iter()
            .map(|&(_, _, tls)| event_loop::Listener {
                socket: std::net::TcpListener::from(inherited.remove(0)),
                tls,
            })
            .collect());
    }
    wanted
        .into_iter()
        .map(
            |(address, variable, tls)| match bind(address, config.reuse_port) {
                Ok(socket) => Ok(event_loop::Listener { socket, tls }),
                Err(e) => Err(format!("cannot listen on {address} ({variable}): {e}")),
            },
        )
        .collect()
}

/// Binds `SWITCHYARD_LISTEN`; with `SWITCHYARD_REUSE_PORT` as one of several sockets on the
/// same port (SO_REUSEPORT: the kernel spreads new connections over the instances).
fn bind(listen: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    if reuse_port && sys::tcp_migrate_req() == Some(false) {
        log::warn!(
            "SWITCHYARD_REUSE_PORT is on but net.ipv4.tcp_migrate_req is 0: connections still \
             in this instance's accept queue when it stops are reset instead of passed to \
             the other instances on the port; set it to 1 (Linux 5.14 or later)"
        );
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&listen.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Sets `SWITCHYARD_CLIENT_RCVBUF` and `SWITCHYARD_CLIENT_SNDBUF` on the listening sockets:
/// the connections they accept inherit them, before their handshake, so the window scale
/// they offer fits the buffer. The kernel's figure is logged (it doubles what is asked,
/// and caps it at `net.core.rmem_max` / `wmem_max`, which is warned of). Not on sockets a
/// service manager passed (`activated`): they are its, and a size set on one would outlive
/// this process, and the setting's removal (a review); its unit says their sizes.
fn size_client_buffers(
    listeners: &[event_loop::Listener],
    buffers: config::SocketBuffers,
    activated: bool,
) -> Result<(), String> {
    if activated && buffers != config::SocketBuffers::default() {
        log::warn!(
            "SWITCHYARD_CLIENT_RCVBUF and SWITCHYARD_CLIENT_SNDBUF are not applied to sockets \
             the service manager passed (a size set there would outlive this process): set \
             ReceiveBuffer= and SendBuffer= in the .socket unit instead"
        );
        return Ok(());
    }
    fn failed(variable: &'static str) -> impl Fn(std::io::Error) -> String {
        move |e| format!("cannot set {variable}: {e}")
    }
    for listener in listeners {
        let socket = socket2::SockRef::from(&listener.socket);
        if let Some(bytes) = buffers.receive {
            socket
                .set_recv_buffer_size(bytes)
                .map_err(failed("SWITCHYARD_CLIENT_RCVBUF"))?;
        }
        if let Some(bytes) = buffers.send {
            socket
                .set_send_buffer_size(bytes)
                .map_err(failed("SWITCHYARD_CLIENT_SNDBUF"))?;
        }
    }
    let Some(first) = listeners.first() else {
        return Ok(());
    };
    let socket = socket2::SockRef::from(&first.socket);
    let report = |variable: &str, wanted: Option<usize>, kernels: std::io::Result<usize>, cap| {
        let (Some(wanted), Ok(kernels)) = (wanted, kernels) else {
            return;
        };
        if kernels < wanted.saturating_mul(2) {
            log::warn!(
                "{variable}={wanted}: the kernel allows {kernels} bytes (it doubles what is \
                 asked, up to {cap}); raise {cap} for more"
            );
        } else {
            log::info!("{variable}={wanted}: {kernels} bytes for each client connection, as the kernel counts");
        }
    };
    let receive = socket.recv_buffer_size();
    report(
        "SWITCHYARD_CLIENT_RCVBUF",
        buffers.receive,
        receive,
        "net.core.rmem_max",
    );
    let send = socket.send_buffer_size();
    report(
        "SWITCHYARD_CLIENT_SNDBUF",
        buffers.send,
        send,
        "net.core.wmem_max",
    );
    Ok(())
}

/// The accept queue's length for a socket we bind ourselves (the kernel caps it at
/// net.core.somaxconn). std's `TcpListener::bind` asks for 128, which a review found in
/// force without `SWITCHYARD_REUSE_PORT`: a burst of connections past it waits for SYN
/// retransmissions.
const LISTEN_BACKLOG: i32 = 1024;

/// Starts the event loops on `listeners` and supervises them until the stop is over.
fn serve(
    shared: &'static daemon::state::Shared,
    listeners: Vec<event_loop::Listener>,
    notifier: notify::Notifier,
) -> Result<(), String> {
    let signals = signal_hook_mio::v1_0::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
        .map_err(|e| format!("cannot watch for signals: {e}"))?;
    daemon::status::start_sampling(shared)
        .map_err(|e| format!("cannot start the status page's sampler: {e}"))?;
    let threads = shared.config.io_threads;
    let mut loops = Vec::with_capacity(threads);
    let mut wakers = Vec::with_capacity(threads);
    for index in 0..threads {
        let copies = listeners
            .iter()
            .map(|l| {
                let socket = l.socket.try_clone()?;
                Ok(event_loop::Listener { socket, tls: l.tls })
            })
            .collect::<std::io::Result<Vec<_>>>();
        let (prepared, handle) = copies
            .and_then(event_loop::Prepared::new)
            .map_err(|e| format!("cannot set up event loop {index}: {e}"))?;
        loops.push(prepared);
        wakers.push(handle.waker());
    }
    shared.set_loop_wakers(wakers);
    let workers: &'static pool::Pool<switch::transit::ToWorker> = Box::leak(Box::new(
        pool::Pool::new(shared.config.worker_stack_bytes, move |job| {
            switch::on_worker::run(job, shared)
        }),
    ));
    let address = |l: &event_loop::Listener| {
        l.socket
            .local_addr()
            .map_or_else(|e| format!("(address unknown: {e})"), |a| a.to_string())
    };
    let said: Vec<String> = listeners
        .iter()
        .map(|l| match (&shared.tls, l.tls) {
            (Some(tls), true) => format!("{} with TLS: {}", address(l), tls.describe().join("; ")),
            _ => address(l),
        })
        .collect();
    log::info!(
        "{threads} event loop(s); listening on {}",
        said.join(" and on ")
    );
    drop(listeners); // each loop holds its own copies of the sockets
    let mut threads = Vec::with_capacity(loops.len());
    for event_loop in loops {
        let thread = std::thread::Builder::new()
            .name("switchyard-io".into())
            .spawn(move || event_loop.run(shared, workers))
            .map_err(|e| format!("cannot start an event loop thread: {e}"))?;
        threads.push(thread);
    }
    notifier.send("READY=1");
    supervisor::run(shared, signals, threads, &notifier).map_err(|supervisor::Failed(why)| why)
}

/// Every connection is a descriptor, and many are two (a tunnel, a WebSocket route to a
/// service or a program, a static file, an h2c stream at an HTTP/1.1 backend; a tunnel
/// that splices holds a pipe besides): raise the soft limit to the hard one, as servers
/// do, and say so when even that is short of SWITCHYARD_MAX_CONNECTIONS, or of twice it.
fn raise_file_limit(max_connections: usize) {
    let needed = max_connections as u64 + 64;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => log::warn!(
            "only {limit} open files allowed (ulimit -n) for SWITCHYARD_MAX_CONNECTIONS={max_connections}: \
             connections past the limit wait until descriptors free up"
        ),
        Ok(limit) if limit < needed + max_connections as u64 => log::info!(
            "{limit} open files allowed (ulimit -n) for SWITCHYARD_MAX_CONNECTIONS={max_connections}: \
             enough for that many clients, not for as many tunnels or routes to services \
             (two descriptors each); past the limit, connections wait until descriptors free up"
        ),
        Ok(limit) => log::debug!("open files allowed: {limit}"),
        Err(e) => log::warn!("cannot read or raise the open-file limit: {e}"),
    }
}
