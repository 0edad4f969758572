//! switchyard: an HTTP/1.1 daemon that switches connections to other protocols
//! (`101 Switching Protocols`) served by plugins loaded from a folder at start.
//!
//! The path of a connection: [`server`] accepts it and drives a [`conn::Conn`] through
//! request heads ([`http`]) and routing ([`route`]) on a mio event loop; an upgrade request
//! goes over a channel to a [`workers`] thread, where [`switch`] asks the [`plugin`]s and
//! runs the chosen one's blocking `serve`.

mod access;
mod config;
mod conn;
mod http;
mod metrics;
mod plugin;
mod route;
mod server;
mod shared;
mod switch;
mod workers;

use std::process::ExitCode;

/// Exit status for a start refused by its settings or plugin folder.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();

    let config = match config::Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let registry = match plugin::load_dir(&config.plugin_dir) {
        Ok(registry) => registry,
        Err(e) => {
            log::error!(
                "cannot read the plugin folder {} (SWITCHYARD_PLUGIN_DIR): {e}",
                config.plugin_dir.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    raise_file_limit(config.max_connections);
    // Plugins are never unloaded: their code may run until the process exits.
    let registry: &'static plugin::Registry = Box::leak(Box::new(registry));
    let listen = config.listen;
    let server = match server::Server::bind(config, registry) {
        Ok(server) => server,
        Err(e) => {
            log::error!("cannot listen on {listen} (SWITCHYARD_LISTEN): {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(addr) => log::info!("listening on {addr}"),
        Err(e) => log::warn!("listening, address unknown: {e}"),
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every connection is a descriptor (a tunnel two): raise the soft limit to the hard one,
/// as servers do, and say so when even that is short of SWITCHYARD_MAX_CONNECTIONS.
fn raise_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + 64 => log::warn!(
            "only {limit} open files allowed (ulimit -n) for SWITCHYARD_MAX_CONNECTIONS={max_connections}: \
             connections past the limit wait until descriptors free up"
        ),
        Ok(limit) => log::debug!("open files allowed: {limit}"),
        Err(e) => log::warn!("cannot read or raise the open-file limit: {e}"),
    }
}
