//! HTTP/2 over cleartext for switchyard, token `h2c`: by `Upgrade` (RFC 9113 §3.2, RFC 7540
//! §3.2) and by prior knowledge (RFC 9113 §3.3), every stream proxied to the backend its
//! path is routed to (`SWITCHYARD_H2C_ROUTES`), gRPC included.
//!
//! The HTTP/2 is hyper's (and h2's under it) on a tokio runtime inside the plugin. Each
//! client connection is a task of that runtime, beside its streams and the pooled backend
//! connections, so a request crosses no thread; `serve` waits on the daemon's worker thread
//! and watches for what only that thread may ask the daemon (whether it is stopping). What
//! hyper lacks for an upgrade (stream 1 made of the HTTP/1.1 request) is in [`upgrade`];
//! how end of input is told from the daemon stopping, in [`client_io`].
//!
//! The access line's byte counts cover the upgrade request only: the runtime reads and
//! writes the socket itself, past the daemon's counters.
//!
//! - A path with no route gets `404` on its stream; a backend that refuses `502`, one that
//!   does not connect in time `504`; other streams live on.
//! - The daemon stopping: GOAWAY, streams in flight finish within the grace period.
//! - No stream open for `SWITCHYARD_H2C_IDLE_MS`: GOAWAY, then the connection closes.

#![forbid(unsafe_code)]

pub mod client_io;
pub mod config;
pub mod proxy;
pub mod settings;
pub mod upgrade;

use client_io::{ClientIo, EofGate};
use config::Config;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use protocol_api::{export_plugin, Arrival, Connection, Decision, Protocol, Request};
use proxy::{Activity, Proxy};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;
use upgrade::{AckFilter, Stream1, PREFACE};

/// How often a connection's watcher looks at the idle clock, at most.
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub struct H2c {
    proxy: Arc<Proxy>,
    runtime: tokio::runtime::Runtime,
}

/// What negotiate hands to serve: the bytes the HTTP/2 server reads before the socket's.
pub struct Accepted {
    preamble: Vec<u8>,
    arrival: Arrival,
}

impl Protocol for H2c {
    const NAME: &'static str = "h2c";
    const TOKENS: &'static [&'static str] = &["h2c"];
    type Session = Accepted;

    fn new() -> Result<Self, String> {
        let config = Config::from_env()?;
        if config.routes.is_empty() {
            log::warn!(
                "h2c: {} is empty; every h2c upgrade and prior-knowledge connection will be declined",
                config::ROUTES
            );
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("switchyard-h2c")
            .enable_all()
            .build()
            .map_err(|e| format!("h2c: cannot start its runtime: {e}"))?;
        Ok(H2c {
            proxy: Arc::new(Proxy::new(config)),
            runtime,
        })
    }

    fn negotiate(&self, request: &Request<'_>) -> Decision<Accepted> {
        if self.proxy.config.routes.is_empty() {
            return Decision::Decline;
        }
        if request.arrival() == Arrival::PriorKnowledge {
            return Decision::accept(Accepted {
                preamble: PREFACE.to_vec(),
                arrival: Arrival::PriorKnowledge,
            });
        }
        match upgrade_preamble(request) {
            Ok(preamble) => Decision::accept(Accepted {
                preamble,
                arrival: Arrival::Upgrade,
            }),
            Err(why) => {
                log::debug!("h2c: upgrade from {} declined: {why}", request.peer());
                Decision::Decline
            }
        }
    }

    fn serve(
        &self,
        accepted: Accepted,
        request: &Request<'_>,
        conn: &mut Connection<'_>,
    ) -> io::Result<()> {
        let peer: SocketAddr = request
            .peer()
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut early = vec![0u8; conn.buffered()];
        conn.read_exact(&mut early)?;
        // After an upgrade the client sends its preface (RFC 9113 §3.2); the server was
        // given one in the preamble already, so the client's is checked and dropped, and the
        // implicit SETTINGS ACK is taken out of the output.
        let upgraded = accepted.arrival == Arrival::Upgrade;
        let filter = upgraded.then(AckFilter::default);

        // The runtime reads and writes a duplicate of the socket; the daemon's stays open
        // until serve returns.
        let socket = std::net::TcpStream::from(conn.as_fd().try_clone_to_owned()?);
        socket.set_nonblocking(true)?;
        let _entered = self.runtime.enter();
        let stream = tokio::net::TcpStream::from_std(socket)?;
        let gate = Arc::new(EofGate::default());
        let io = ClientIo::new(
            accepted.preamble,
            early,
            upgraded,
            stream,
            filter,
            gate.clone(),
        );
        let activity = Activity::new(self.proxy.config.http1_per_connection);
        let config = &self.proxy.config;
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        const SEND_BUFFER_PER_STREAM: usize = 64 * 1024;
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_streams)
            .max_header_list_size(config.max_header_list_bytes)
            // What waits to be sent on each stream, for a client that grants windows and
            // then does not read: hyper's default is 400 KiB a stream (40 MiB a connection
            // at 100 streams); the README states the bound this gives.
            .max_send_buf_size(SEND_BUFFER_PER_STREAM)
            // A peer that stops answering pings (gone, or not reading) is let go.
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .keep_alive_timeout(Duration::from_secs(20));
        let proxy = self.proxy.clone();
        let streams = activity.clone();
        let service = hyper::service::service_fn(move |request| {
            proxy::handle(proxy.clone(), streams.clone(), peer, request)
        });
        let idle = config.idle;
        // The connection runs as a task of the runtime, next to its streams and the backend
        // connections, so a request crosses no thread; this (worker) thread only watches
        // for what it alone may ask the daemon: whether it is stopping.
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let go_away = Arc::new(tokio::sync::Notify::new());
        let told = go_away.clone();
        let task = self.runtime.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                ended = connection.as_mut() => return ended,
                _ = told.notified() => connection.as_mut().graceful_shutdown(),
            }
            connection.await
        });
        let ended = self.runtime.block_on(async {
            let mut task = task;
            let mut going_away = None;
            loop {
                // The daemon's stop shuts the read side, so it shows as a held end of
                // input; the idle clock is looked at now and then.
                tokio::select! {
                    ended = &mut task => return (ended, going_away),
                    _ = gate.held() => {}
                    _ = tokio::time::sleep(idle.min(IDLE_CHECK)) => {}
                }
                if going_away.is_none() {
                    if conn.is_stopping() {
                        gate.stopping();
                        going_away = Some("daemon stopping");
                        go_away.notify_one();
                    } else if activity.idle_for().is_some_and(|for_| for_ >= idle) {
                        going_away = Some("idle");
                        go_away.notify_one();
                    }
                }
                if going_away != Some("daemon stopping") && gate.is_held() {
                    gate.client_closed();
                }
            }
        });
        let ended = match ended {
            (Ok(ended), why) => (ended, why),
            (Err(e), _) => {
                // The task panicked (hyper or the plugin's own code): this connection only.
                return Err(io::Error::other(format!("h2c connection task failed: {e}")));
            }
        };
        match ended {
            (Ok(()), why) => {
                log::debug!(
                    "h2c {peer}: connection done ({})",
                    why.unwrap_or("client done")
                );
                Ok(())
            }
            (Err(e), _) => {
                log::debug!("h2c {peer}: connection ended: {e}");
                Err(io::Error::other(e))
            }
        }
    }
}

/// Checks an upgrade request (RFC 9113 §3.2) and makes the preamble that turns it into
/// stream 1.
fn upgrade_preamble(request: &Request<'_>) -> Result<Vec<u8>, String> {
    let mut values = request
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case("http2-settings"))
        .map(|(_, v)| v);
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err("not exactly one HTTP2-Settings header".into());
    };
    if !request
        .header_list("connection")
        .any(|o| o.eq_ignore_ascii_case("http2-settings"))
    {
        return Err("Connection does not name HTTP2-Settings".into());
    }
    let settings = settings::decode(value).map_err(|e| e.to_string())?;
    if request.body().len() > upgrade::MAX_BODY {
        return Err(format!(
            "a body over {} bytes cannot be stream 1's",
            upgrade::MAX_BODY
        ));
    }
    let stream1 = Stream1 {
        method: request.method(),
        target: request.target(),
        headers: request.headers().collect(),
        body: request.body(),
    };
    Ok(upgrade::preamble(&settings, &stream1))
}

export_plugin!(H2c);
