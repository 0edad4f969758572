//! `Upgrade: tcp` for switchyard: the Docker-attach style raw byte tunnel. A request for a
//! configured path switches to a TCP connection to that path's backend, dialled before the
//! `101` so that a dead backend gets `502` (refused) or `504` (time-out) instead.
//!
//! Bytes the client sent right after the request go to the backend first; then both
//! directions are spliced (`pump`). Half-closes pass through: when one side ends its
//! sending, the other side's write half is shut and the rest still flows. A reset on one
//! side becomes a reset on the other. Only configured backends are ever dialled.

// `unsafe` only in the splice pump (pump.rs).
#![deny(unsafe_code)]

pub mod config;
#[allow(unsafe_code)]
mod pump;

use config::Config;
use protocol_api::path::{PathError, RequestPath};
use protocol_api::{export_plugin, Connection, Decision, Protocol, Request};
use pump::{borrow_socket, pump, reset_on_close, wait_for_hangup, Activity, Ended};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Tunnel {
    config: Config,
}

/// What negotiate hands to serve: the connected backend and where it came from.
pub struct Dialled {
    backend: TcpStream,
    address: String,
}

fn dial(backend: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(ErrorKind::NotFound, "no address");
    for address in backend.to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Protocol for Tunnel {
    const NAME: &'static str = "tunnel";
    const TOKENS: &'static [&'static str] = &["tcp"];
    type Session = Dialled;

    fn new() -> Result<Self, String> {
        let config = Config::from_env()?;
        if config.routes.is_empty() {
            log::warn!(
                "tunnel: SWITCHYARD_TUNNEL_ROUTES is empty; every Upgrade: tcp will be declined"
            );
        }
        Ok(Tunnel { config })
    }

    fn negotiate(&self, request: &Request<'_>) -> Decision<Dialled> {
        // Any method may ask (Docker attach uses POST); only routed paths are dialled, matched
        // as normalised (see protocol_api::path).
        let backend = match RequestPath::parse(request.target())
            .and_then(|path| self.config.backend(&path))
        {
            Ok(Some(backend)) => backend,
            Ok(None) => return Decision::Decline,
            Err(e) => {
                log::info!(
                    "tunnel {} for {}: {e}; answered 400",
                    request.target(),
                    request.peer()
                );
                return Decision::reject(PathError::STATUS, format!("{e}\n"));
            }
        };
        match dial(backend, self.config.connect_timeout) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Decision::accept(Dialled {
                    backend: stream,
                    address: backend.to_string(),
                })
            }
            Err(e) => {
                let (status, what) = match e.kind() {
                    ErrorKind::TimedOut | ErrorKind::WouldBlock => (504, "did not answer in time"),
                    ErrorKind::ConnectionRefused => (502, "refused the connection"),
                    _ => (502, "could not be reached"),
                };
                log::warn!(
                    "tunnel {} -> {backend} for {}: backend {what}: {e}",
                    request.path(),
                    request.peer()
                );
                Decision::reject(status, format!("backend for {} {what}\n", request.path()))
            }
        }
    }

    fn serve(
        &self,
        dialled: Dialled,
        request: &Request<'_>,
        conn: &mut Connection<'_>,
    ) -> io::Result<()> {
        let started = Instant::now();
        let Dialled { backend, address } = dialled;
        let mut up = 0u64;
        // What the client sent with the request goes first.
        let mut early = vec![0u8; conn.buffered()];
        conn.read_exact(&mut early)?;
        (&backend).write_all(&early)?;
        up += early.len() as u64;
        drop(early);
        let client = borrow_socket(conn.as_fd());

        let idle = self.config.idle;
        if let Some(idle) = idle {
            // Wake up now and then to look at the shared activity clock.
            let tick = Some((idle / 2).max(Duration::from_millis(1)));
            client.set_read_timeout(tick)?;
            backend.set_read_timeout(tick)?;
        }
        let activity = Activity::new();
        let down_done = AtomicBool::new(false);
        let ((up_end, up_bytes), (down_end, down_bytes)) = std::thread::scope(|scope| {
            let down = std::thread::Builder::new()
                .name("switchyard-tunnel".into())
                .stack_size(64 * 1024)
                .spawn_scoped(scope, || {
                    let ended = pump(&backend, &client, &activity, idle);
                    after(&ended.0, &backend, &client);
                    down_done.store(true, Ordering::Release);
                    ended
                })
                .expect("spawn the tunnel's second direction");
            let ended = pump(&client, &backend, &activity, idle);
            if matches!(ended.0, Ended::Eof) && conn.is_stopping() {
                // A read of 0 while stopping is the daemon's doing, not the client's FIN: the
                // backend's direction runs on through the grace period, until the daemon
                // hangs the client up; then the backend is let go too (its direction may be
                // blocked reading a quiet backend, and only this wakes it).
                wait_for_hangup(&client, &down_done);
                let _ = backend.shutdown(Shutdown::Both);
            } else {
                after(&ended.0, &client, &backend);
            }
            (
                ended,
                down.join()
                    .unwrap_or((Ended::Failed(io::Error::other("direction panicked")), 0)),
            )
        });
        up += up_bytes;
        let how = match (&up_end, &down_end) {
            _ if conn.is_stopping() => "daemon stopping".to_string(),
            (Ended::SourceReset, _) | (_, Ended::DestinationGone) => "client reset".to_string(),
            (_, Ended::SourceReset) | (Ended::DestinationGone, _) => "backend reset".to_string(),
            (Ended::Idle, _) | (_, Ended::Idle) => "idle".to_string(),
            (Ended::Eof, Ended::Eof) => "both sides closed".to_string(),
            (Ended::Failed(e), _) | (_, Ended::Failed(e)) => format!("error: {e}"),
        };
        log::info!(
            "tunnel {} -> {address} for {}: {up} bytes up, {down_bytes} bytes down, {:.3}s, ended: {how}",
            request.path(),
            request.peer(),
            started.elapsed().as_secs_f64(),
        );
        Ok(())
    }
}

/// Passes how one direction ended on to the other side.
fn after(ended: &Ended, source: &TcpStream, destination: &TcpStream) {
    match ended {
        // Half-close: the source is done sending, so is the destination's writer.
        Ended::Eof => {
            let _ = destination.shutdown(Shutdown::Write);
        }
        // A reset travels on as a reset; shutting the read sides wakes the other direction.
        Ended::SourceReset => {
            reset_on_close(destination);
            let _ = destination.shutdown(Shutdown::Read);
            let _ = source.shutdown(Shutdown::Read);
        }
        Ended::DestinationGone => {
            reset_on_close(source);
            let _ = source.shutdown(Shutdown::Read);
            let _ = destination.shutdown(Shutdown::Read);
        }
        Ended::Idle | Ended::Failed(_) => {
            let _ = source.shutdown(Shutdown::Both);
            let _ = destination.shutdown(Shutdown::Both);
        }
    }
}

export_plugin!(Tunnel);
