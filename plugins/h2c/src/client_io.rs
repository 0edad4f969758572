//! The client connection as the HTTP/2 server reads and writes it: bytes made up for the
//! server first (the preamble of an upgrade, or the preface the daemon already read), then
//! the socket; output through the [`AckFilter`] of an upgrade.
//!
//! The socket is a duplicate of the daemon's, read and written by the runtime; when this
//! is dropped (the connection is over, however it ended) it shuts the socket both ways, so
//! that the daemon's event loop sees the end and lets the connection go.

use crate::upgrade::{AckFilter, PREFACE};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The client connection as the HTTP/2 server sees it (see the module docs).
pub struct ClientIo {
    /// Made up for the server, read before anything of the client's.
    prefix: Vec<u8>,
    prefix_at: usize,
    /// The client's bytes the daemon read ahead, before the socket's.
    early: Vec<u8>,
    early_at: usize,
    /// Bytes of the client's own preface still to check and drop (after an upgrade, the
    /// server was given a preface in `prefix` already).
    preface_left: usize,
    stream: TcpStream,
    filter: Option<AckFilter>,
    /// Filtered output not yet written.
    pending: Vec<u8>,
    pending_at: usize,
}

/// Copies from `from[*at..]` into `buf`; true if anything was there.
fn serve_from(from: &mut Vec<u8>, at: &mut usize, buf: &mut ReadBuf<'_>) -> bool {
    if *at >= from.len() {
        return false;
    }
    let n = buf.remaining().min(from.len() - *at);
    buf.put_slice(&from[*at..*at + n]);
    *at += n;
    if *at == from.len() {
        *from = Vec::new();
        *at = 0;
    }
    true
}

impl ClientIo {
    /// `prefix` is read first, then `early`, then the socket. With `strip_preface` the
    /// client's first 24 bytes must be the HTTP/2 preface, and are dropped. `filter` drops
    /// the upgrade's implicit SETTINGS ACK.
    pub fn new(
        prefix: Vec<u8>,
        early: Vec<u8>,
        strip_preface: bool,
        stream: TcpStream,
        filter: Option<AckFilter>,
    ) -> ClientIo {
        ClientIo {
            prefix,
            prefix_at: 0,
            early,
            early_at: 0,
            preface_left: if strip_preface { PREFACE.len() } else { 0 },
            stream,
            filter,
            pending: Vec::new(),
            pending_at: 0,
        }
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_at < self.pending.len() {
            let n = ready!(
                Pin::new(&mut self.stream).poll_write(cx, &self.pending[self.pending_at..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_at += n;
        }
        self.pending = Vec::new();
        self.pending_at = 0;
        Poll::Ready(Ok(()))
    }

    /// The client's bytes: read ahead, then the socket.
    fn poll_client(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if serve_from(&mut self.early, &mut self.early_at, buf) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl Drop for ClientIo {
    fn drop(&mut self) {
        // Our socket is a duplicate: closing it alone would leave the connection open.
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Both);
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if serve_from(&mut this.prefix, &mut this.prefix_at, buf) {
            return Poll::Ready(Ok(()));
        }
        while this.preface_left > 0 {
            let mut space = [0u8; PREFACE.len()];
            let mut part = ReadBuf::new(&mut space[..this.preface_left]);
            ready!(this.poll_client(cx, &mut part))?;
            let got = part.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(())); // the client left before its preface
            }
            let at = PREFACE.len() - this.preface_left;
            if got != &PREFACE[at..at + got.len()] {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the client did not send the HTTP/2 preface after the 101",
                )));
            }
            this.preface_left -= got.len();
        }
        this.poll_client(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        match &mut this.filter {
            Some(filter) if !filter.is_done() => {
                filter.filter(buf, &mut this.pending);
                // Start writing at once; what does not go now goes on the next call or flush.
                if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            _ => Pin::new(&mut this.stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
