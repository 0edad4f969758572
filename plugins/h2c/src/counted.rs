//! The hyper engine's HTTP/2 backend connections, counted as the relay's are
//! (`SWITCHYARD_H2C_BACKENDS_MAX`, `SWITCHYARD_H2C_BACKENDS_PER_CLIENT`): each client
//! connection has backend connections of its own, one per backend it uses, and nothing
//! counted them, so one address's connections, each using every route, could take a
//! descriptor a route each, past the two a connection the daemon's limit counts on.
//!
//! The count is taken where hyper makes a connection (its connector) and given back when
//! hyper drops it (closed by either side, or idle past its pool's time-out); past it, the
//! connection is not made and the stream gets `503` ([`NoBackendSlot`]).

use crate::slots::{Slot, Slots};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// hyper's connector for one client's backend connections.
#[derive(Clone)]
pub struct CountedConnector {
    inner: HttpConnector,
    slots: Arc<Slots>,
    client: IpAddr,
}

/// A backend connection, counted until hyper lets it go.
pub struct Counted {
    io: TokioIo<TcpStream>,
    _slot: Slot,
}

/// No backend connection may be made for this client now: the reason, for the `503`.
#[derive(Debug)]
pub struct NoBackendSlot(pub &'static str);

impl std::fmt::Display for NoBackendSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for NoBackendSlot {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl CountedConnector {
    pub fn new(inner: HttpConnector, slots: Arc<Slots>, client: IpAddr) -> CountedConnector {
        CountedConnector {
            inner,
            slots,
            client,
        }
    }
}

impl tower_service::Service<Uri> for CountedConnector {
    type Response = Counted;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let taken = self.slots.take(self.client);
        let reason = taken.as_ref().err().map(|&none| self.slots.reason(none));
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let slot = match (taken, reason) {
                (Ok(slot), _) => slot,
                (Err(_), reason) => return Err(NoBackendSlot(reason.unwrap_or("")).into()),
            };
            Ok(Counted {
                io: connecting.await?,
                _slot: slot,
            })
        })
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
